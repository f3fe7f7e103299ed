"""`medtrinity build` on a registry folder written here (not the demo's): every layout, bad files
quarantined with their reason, a missing root failing only its own source."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.cli import main


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _yaml(reg: Path, name: str, layout: str, root: Path, modality: str, organ: str, extra: str = "") -> None:
    (reg / f"{name}.yaml").write_text(
        f"name: {name}\nlayout: {layout}\nroot: {root}\nmodality: {modality}\norgan: {organ}\n"
        f"license: test\nsynthetic: false\n{extra}"
    )


@pytest.fixture(scope="module")
def foreign_registry(tmp_path_factory) -> Path:
    import nibabel as nib
    import skimage
    from pydicom.data import get_testdata_file

    base = tmp_path_factory.mktemp("foreign")
    reg = base / "registry"
    reg.mkdir()

    # DICOM: two good files (one RLE-compressed), a truncated one, garbage bytes.
    d = base / "dcm"
    d.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "a.dcm")
    shutil.copy(get_testdata_file("MR_small_RLE.dcm"), d / "b.dcm")
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (d / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.dcm").write_bytes(b"this is not a dicom file at all" * 10)
    _yaml(reg, "f_dicom", "dicom", d, "CT", "unknown")

    # NIfTI MSD: a real brain MRI with a thresholded label, a constant volume, a mislabelled shape.
    m = base / "msd"
    (m / "imagesTr").mkdir(parents=True)
    (m / "labelsTr").mkdir()
    anat = nib.load(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii")
    data = anat.get_fdata().astype(np.float32)
    nib.save(nib.Nifti1Image(data, anat.affine), m / "imagesTr" / "brain.nii.gz")
    lab = (data > np.percentile(data, 70)).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab, anat.affine), m / "labelsTr" / "brain.nii.gz")
    nib.save(nib.Nifti1Image(np.full((20, 20, 10), 5, np.float32), np.eye(4)), m / "imagesTr" / "flat.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((20, 20, 10), np.float32) + np.arange(10), np.eye(4)),
        m / "imagesTr" / "shape.nii.gz",
    )
    nib.save(nib.Nifti1Image(np.zeros((9, 9, 9), np.uint8), np.eye(4)), m / "labelsTr" / "shape.nii.gz")
    (m / "dataset.json").write_text(
        '{"name": "t", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "bright"}}'
    )
    _yaml(reg, "f_msd", "nifti_msd", m, "MRI", "brain", "labels: {1: bright}\n")

    # Image folder: real micrographs, one with a same-stem mask, one with a mask of the wrong shape.
    f = base / "folder"
    sk = Path(skimage.__file__).parent / "data"
    (f / "images").mkdir(parents=True)
    shutil.copy(sk / "ihc.png", f / "images" / "ihc.png")
    shutil.copy(sk / "cell.png", f / "images" / "cell.png")
    with Image.open(sk / "ihc.png") as im:
        w, h = im.size
    mask = np.zeros((h, w), np.uint8)
    mask[100:200, 150:300] = 1
    _png(f / "masks" / "ihc.png", mask)
    _png(f / "masks" / "cell.png", np.zeros((10, 10), np.uint8))
    (f / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    _yaml(reg, "f_folder", "image_folder", f, "Histopathology", "colon", "labels: {1: gland}\n")

    # Table: a good row with a box and QA, a path escaping the root, a missing file, a bad box.
    t = base / "table"
    (t / "images").mkdir(parents=True)
    shutil.copy(sk / "retina.jpg", t / "images" / "retina.jpg")
    (base / "outside.png").write_bytes((sk / "cell.png").read_bytes())
    (t / "index.csv").write_text(
        "image,label,bbox,question,answer\n"
        "images/retina.jpg,normal fundus,10,10,200,200,Is the optic disc visible?,yes\n".replace(
            "10,10,200,200", '"10,10,200,200"'
        )
        + "../outside.png,cells,,,\n"
        + "images/missing.jpg,none,,,\n"
        + 'images/retina.jpg,bad,"1,2,three",,\n'
    )
    _yaml(reg, "f_table", "table", t, "Fundus", "retina")

    # A source whose root does not exist: fails alone.
    _yaml(reg, "f_missing", "image_folder", base / "nowhere", "X-ray", "chest")
    return reg


@pytest.fixture(scope="module")
def built(foreign_registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(home))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(
                ["build", "--sources", str(foreign_registry), "--out", str(out), "--until", "preprocessed_images"]
            )
    finally:
        mp.undo()
    return code, out, home, stderr.getvalue()


def _manifest(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / "source_manifest" / f"{name}.parquet")


def test_missing_root_fails_only_its_source(built):
    code, out, _, err = built
    assert code == 1
    assert "FAILED f_missing (ingest): source 'f_missing': root" in err and "does not exist" in err
    assert "Traceback" not in err  # one line per failure; the trace is in the run's log
    assert "exit code 1: 1 run(s) failed" in err
    assert not (out / "source_manifest" / "f_missing.parquet").exists()
    for name in ("f_dicom", "f_msd", "f_folder", "f_table"):
        assert (out / "preprocessed_images" / f"{name}.parquet").exists(), name


def test_every_valid_file_ingested_and_bad_ones_quarantined(built):
    _, out, _, _ = built
    reasons = {}
    for name in ("f_dicom", "f_msd", "f_folder", "f_table"):
        man = _manifest(out, name)
        for relpath, status, reason in man.select("relpath", "status", "reason").iter_rows():
            reasons.setdefault((name, Path(relpath).name if relpath else relpath), set()).add(
                (status, (reason or "").split(":")[0])
            )
    ok = {k for k, v in reasons.items() if any(s == "ok" for s, _ in v)}
    assert {
        ("f_dicom", "a.dcm"),
        ("f_dicom", "b.dcm"),
        ("f_msd", "brain.nii.gz"),
        ("f_folder", "ihc.png"),
    } <= ok
    assert ("f_table", "retina.jpg") in ok

    def reason(name, file):
        (entry,) = [r for s, r in reasons[(name, file)] if s == "quarantined"]
        return entry

    assert reason("f_dicom", "truncated.dcm") == "truncated"
    assert reason("f_dicom", "garbage.dcm") == "not_dicom"
    assert reason("f_msd", "flat.nii.gz") == "constant_volume"
    assert reason("f_msd", "shape.nii.gz") == "mask_shape_mismatch"
    assert reason("f_folder", "cell.png") == "mask_shape_mismatch"
    assert reason("f_folder", "broken.png") == "undecodable"
    table = _manifest(out, "f_table")
    table_reasons = set(table.filter(pl.col("status") == "quarantined")["reason"].str.split(":").list.first())
    assert {"path_escapes_root", "bad_csv_row"} <= table_reasons


def test_images_exist_and_are_content_addressed(built):
    _, out, _, _ = built
    for name in ("f_dicom", "f_msd", "f_folder", "f_table"):
        images = pl.read_parquet(out / "preprocessed_images" / f"{name}.parquet")
        assert images.height > 0
        for rel, sha in images.select("image_path", "sha256").iter_rows():
            p = out / rel
            assert p.exists() and p.stem == sha


def test_runs_recorded_in_instance(built, monkeypatch):
    import dagster as dg

    _, _, home, _ = built
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        assert len(records) >= 4
        assert {r.dagster_run.job_name for r in records} == {"ingest_job"}  # --until preprocessed_images
        parts = set(instance.get_dynamic_partitions("sources"))
        assert {"f_dicom", "f_msd", "f_folder", "f_table", "f_missing"} <= parts


def test_sensor_preview_after_a_build_requests_nothing(built, foreign_registry):
    """`dagster sensor preview` on the instance a build wrote (the README's next step) finds
    every source built and current: no run request, even with an empty cursor. The source whose
    root is missing failed in the build with this declaration: it is not retried either."""
    import os
    import subprocess
    import sys

    _, out, home, _ = built
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    cmd = [sys.executable, "-m", "dagster", "sensor", "preview", "source_registry_sensor", "-w", str(repo / "workspace.yaml")]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "every declared source is built and current" in text, text[-2000:]
    assert "returning run requests" not in text, text[-2000:]
