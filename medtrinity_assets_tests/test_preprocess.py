"""Stage 1 ingest: every layout on real files, bad inputs, dedup, orientation, PHI, idempotency."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import polars as pl
import pydicom
import pytest
from PIL import Image

from medtrinity_assets.core import storage
from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, SOURCE_MANIFEST
from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets.ingest.readers import SourceRootMissing
from medtrinity_assets.ingest.registry import SliceConfig, WindowConfig
from medtrinity_assets.privacy import dicom_identifier_values
from medtrinity_assets_tests.sources_builders import (
    SKIMAGE_DATA,
    copy_dicoms,
    ct_series,
    folder_source,
    make_spec,
    msd_source,
    phantom_volume,
    pydicom_file,
    truncated_copy,
    write_seg,
)

MANIFEST_SCHEMA = SOURCE_MANIFEST.schema
IMAGES_SCHEMA = PREPROCESSED_IMAGES.schema

DEMO_DICOMS = [
    "CT_small.dcm",
    "MR_small.dcm",
    "emri_small.dcm",
    "US1_J2KR.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_RLE.dcm",
    "JPEG-LL.dcm",
]
HASH_COLUMNS = {"record_id", "duplicate_of", "image_path", "mask_path", "sha256", "phash"}


def _png(out: Path, rel: str) -> np.ndarray:
    with Image.open(out / rel, formats=["PNG"]) as im:
        return np.asarray(im)


def _by_rel(df: pl.DataFrame) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in df.to_dicts():
        out.setdefault(r["relpath"], []).append(r)
    return out


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dicom")
    root = copy_dicoms(tmp / "src", DEMO_DICOMS)
    spec = make_spec(tmp, "demo_dicom", "dicom", root, modality="CT", organ="abdomen")
    out = tmp / "out"
    calls = []
    res = ingest_source(spec, out, workers=1, progress=lambda d, t: calls.append((d, t)))
    return spec, out, res, calls


def test_dicom_tables_and_files(dicom_run):
    spec, out, res, calls = dicom_run
    assert list(res.manifest.columns) == list(MANIFEST_SCHEMA)
    assert list(res.images.columns) == list(IMAGES_SCHEMA)
    assert SOURCE_MANIFEST.read(out, spec.name).equals(res.manifest)
    assert PREPROCESSED_IMAGES.read(out, spec.name).equals(res.images)
    assert res.quarantine_counts == {}
    assert calls[-1] == (len(DEMO_DICOMS), len(DEMO_DICOMS))
    rows = _by_rel(res.manifest)
    assert set(rows) == set(DEMO_DICOMS)
    assert len(rows["emri_small.dcm"]) >= 2 and rows["emri_small.dcm"][0]["slice_axis"] == "frame"
    assert rows["emri_small.dcm"][0]["depth"] == 10
    # the compressed copies of MR_small decode to identical pixels: exact duplicates of the kept one
    kept = rows["MR_small.dcm"][0]
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"):
        r = rows[name][0]
        assert r["status"] == "duplicate" and r["duplicate_of"] == kept["record_id"]
    assert rows["JPEG-LL.dcm"][0]["modality"] == "nuclear medicine"
    assert rows["US1_J2KR.dcm"][0]["modality"] == "ultrasound"
    for img in res.images.to_dicts():
        path = out / img["image_path"]
        assert path == storage.content_path(out, "images", img["sha256"])
        assert storage.sha256_file(path) == img["sha256"]
        arr = _png(out, img["image_path"])
        assert arr.shape[:2] == (img["height"], img["width"]) and max(arr.shape[:2]) <= spec.max_side
        assert len(img["phash"]) == 16
    assert set(res.images["record_id"]) == set(res.manifest.filter(pl.col("status") == "ok")["record_id"])


def test_ct_is_windowed_in_hounsfield_units_with_orientation(dicom_run):
    spec, out, res, _ = dicom_run
    ct = res.manifest.filter(pl.col("relpath") == "CT_small.dcm").row(0, named=True)
    img = res.images.filter(pl.col("record_id") == ct["record_id"]).row(0, named=True)
    assert img["window"] == "ct:40/400"  # organ 'abdomen'
    assert (img["display_right"], img["display_down"]) == ("L", "P")
    assert img["original_spacing"] == pytest.approx([0.661468, 0.661468])
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (np.clip((hu - (40 - 200)) / 400.0, 0, 1) * 255 + 0.5).astype(np.uint8)
    got = _png(out, img["image_path"])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("colour", [True, False])
def test_palette_colour_ultrasound_is_ingested_as_its_displayed_image(tmp_path, colour):
    from pydicom.pixels import apply_color_lut

    from medtrinity_assets.ingest.slicing import resize_image

    root = copy_dicoms(tmp_path / "src", ["OBXXXX1A.dcm"])
    # pixels compared exactly with the palette's rendering: text scanning (test_burned_in_ingest) is off
    spec = make_spec(tmp_path, "us_palette", "dicom", root, modality="US", organ="fetus", colour=colour,
                     burned_in_text="none")
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    assert res.counts["ok"] == 1
    img_row = PREPROCESSED_IMAGES.read(out, "us_palette").row(0, named=True)
    png = _png(out, img_row["image_path"])
    ds = pydicom.dcmread(pydicom_file("OBXXXX1A.dcm"))
    rgb = resize_image((apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8), 384, 512)
    if colour:
        assert img_row["channels"] == 3 and np.array_equal(png, rgb)
    else:  # a grey modality keeps the luminance of the displayed colours, not the palette indices
        assert img_row["channels"] == 1 and png.ndim == 2
        lum = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        assert np.corrcoef(png.ravel(), lum.ravel())[0, 1] > 0.95


def test_no_dicom_identifier_reaches_the_tables(tmp_path):
    root = copy_dicoms(tmp_path / "src", ["CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "JPEG-LL.dcm"])
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientName = "Doe^Jane"
    ds.StudyDescription = "CT ABDOMEN Doe^Jane 2019-05-01 acc 123456789"
    ds.SeriesDescription = "PORTAL VENOUS"
    ds.save_as(root / "phi.dcm")
    spec = make_spec(tmp_path, "phi", "dicom", root, modality="CT", organ="abdomen")
    res = ingest_source(spec, tmp_path / "out", workers=1)
    idents: set[str] = set()
    for f in sorted(root.iterdir()):
        idents |= dicom_identifier_values(pydicom.dcmread(f, stop_before_pixels=True))
    assert "Doe^Jane" in idents and "CompressedSamples^CT1" in idents
    for df in (res.manifest, res.images):
        for col in df.columns:
            if col in HASH_COLUMNS or df[col].dtype != pl.Utf8:
                continue
            for cell in df[col].drop_nulls().to_list():
                hits = [v for v in idents if v.lower() in cell.lower()]
                assert not hits, f"{col}={cell!r} contains identifiers {hits}"
    desc = res.manifest.filter(pl.col("relpath") == "phi.dcm")["description"][0]
    assert desc.startswith("CT ABDOMEN") and "PORTAL VENOUS" in desc
    assert "2019" not in desc and "123456789" not in desc


def test_dicom_series_with_seg_aligned(tmp_path):
    root = tmp_path / "src"
    slices = ct_series(root / "series")
    by_z = sorted(slices, key=lambda d: float(d.ImagePositionPatient[2]))
    masks = []
    for k in (1, 2):
        m = np.zeros((128, 128), np.uint8)
        m[40 + 10 * k : 70 + 10 * k, 50:90] = 1
        masks.append(m)
    write_seg(root / "seg.dcm", [by_z[1], by_z[2]], masks)
    spec = make_spec(tmp_path, "series", "dicom", root, modality="CT", organ="liver", slicing={"stride": 1})
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    assert res.quarantine_counts == {}
    ok = res.manifest.filter(pl.col("status") == "ok").sort("slice_index")
    assert ok["slice_index"].to_list() == [0, 1, 2, 3]
    assert set(ok["slice_axis"]) == {"axial"} and set(ok["depth"]) == {4}
    # slices are ordered by position: the corner marker (k * 50 raw) grows with z
    images = res.images.join(ok.select("record_id", "slice_index", "labels"), on="record_id").sort(
        "slice_index"
    )
    corners = [int(_png(out, p)[:6, :6].mean()) for p in images["image_path"]]
    assert corners == sorted(corners) and corners[0] < corners[-1]
    with_mask = images.filter(pl.col("mask_path").is_not_null())
    assert with_mask["slice_index"].to_list() == [1, 2]
    assert with_mask["labels"].to_list() == [["tumour"], ["tumour"]]
    for row, m in zip(with_mask.to_dicts(), masks, strict=True):
        got = _png(out, row["mask_path"])
        assert got.dtype == np.uint8 and got.shape == (row["height"], row["width"])
        assert np.array_equal(got > 0, m > 0)
        assert row["mask_labels"] == [1]


def test_bad_dicom_inputs_are_quarantined_and_the_rest_continues(tmp_path):
    from pydicom.encaps import encapsulate

    root = copy_dicoms(tmp_path / "src", ["MR_small.dcm", "liver.dcm"])
    truncated_copy(pydicom_file("CT_small.dcm"), root / "truncated.dcm")
    (root / "garbage.dcm").write_bytes(os.urandom(2048))
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.save_as(root / "mpeg.dcm", enforce_file_format=True)
    spec = make_spec(tmp_path, "bad_dicom", "dicom", root, modality="MRI")
    res = ingest_source(spec, tmp_path / "out", workers=1)
    reasons = {r["relpath"]: r["reason"] for r in res.manifest.to_dicts() if r["status"] == "quarantined"}
    assert reasons["truncated.dcm"].startswith("truncated:")
    assert reasons["garbage.dcm"].startswith("not_dicom:")
    assert reasons["mpeg.dcm"].startswith("unsupported_transfer_syntax:")
    assert reasons["liver.dcm"].startswith("seg_without_source:")
    assert res.quarantine_counts == {
        "not_dicom": 1,
        "seg_without_source": 1,
        "truncated": 1,
        "unsupported_transfer_syntax": 1,
    }
    assert res.images.height == 1  # MR_small survived
    q = res.manifest.filter(pl.col("status") == "quarantined")
    assert q["slice_index"].null_count() == q.height
    tiny = make_spec(tmp_path, "tiny", "dicom", root, modality="MRI", max_pixels=100)
    res = ingest_source(tiny, tmp_path / "out2", workers=1)
    assert res.quarantine_counts.get("too_many_pixels") == 4  # MR_small, mpeg, truncated, liver (SEG)
    assert res.images.height == 0


def test_missing_root_raises(tmp_path):
    spec = make_spec(tmp_path, "gone", "dicom", tmp_path / "nowhere")
    with pytest.raises(SourceRootMissing) as exc:
        ingest_source(spec, tmp_path / "out", workers=1)
    assert isinstance(exc.value, FileNotFoundError) and "nowhere" in str(exc.value)


def test_msd_nifti_layout(tmp_path):
    root = msd_source(tmp_path / "msd")
    (root / "imagesTs").mkdir()
    shutil.copy(root / "imagesTr" / "anat_001.nii.gz", root / "imagesTs" / "anat_101.nii.gz")
    spec = make_spec(tmp_path, "msd", "nifti_msd", root, slicing={"axis": "axial", "stride": 5})
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    m = res.manifest
    lab = np.asarray(nib.load(root / "labelsTr" / "anat_001.nii.gz").dataobj)
    roi_slices = {int(k) for k in np.nonzero(lab.reshape(-1, lab.shape[2]).any(axis=0))[0]}
    train = m.filter(pl.col("relpath") == "imagesTr/anat_001.nii.gz")
    kept = set(train["slice_index"].to_list())
    assert roi_slices <= kept and len(kept) > len(roi_slices)  # ROI slices plus strided others
    assert set(train["slice_axis"]) == {"axial"} and set(train["split"]) == {"train"}
    assert set(m.filter(pl.col("relpath").str.starts_with("imagesTs"))["split"]) == {"test"}
    assert ["bright tissue"] in train["labels"].to_list()
    imgs = res.images.join(m.select("record_id", "slice_index", "relpath"), on="record_id")
    tr = imgs.filter(pl.col("relpath") == "imagesTr/anat_001.nii.gz")
    assert set(tr["display_right"]) == {"L"} and set(tr["display_down"]) == {"P"}
    masked = tr.filter(pl.col("mask_path").is_not_null())
    assert set(masked["slice_index"]) == roi_slices
    for row in masked.to_dicts():
        assert _png(out, row["mask_path"]).shape == (row["height"], row["width"])
        assert row["mask_label_names"] == ["bright tissue"]  # dataset.json's name travels on
    # ... and names the mask ROIs, although the registry declares no labels
    from medtrinity_assets.rois.build import build_roi_set

    rois = build_roi_set(res.images.filter(pl.col("record_id").is_in(masked["record_id"])), spec, out).rois
    mask_rois = rois.filter(pl.col("origin") == "mask")
    assert mask_rois.height and set(mask_rois["label"]) == {"bright tissue"}
    # a label reduced to specks at the edge of the volume is no structure: flagged, not described
    flagged = mask_rois.filter(pl.col("status") != "ok")
    assert flagged["reason"].str.starts_with("no_structure:").all()
    assert mask_rois.filter(pl.col("status") == "ok").height > flagged.height
    # the test copy is pixel-identical to the training volume: its slices are exact duplicates
    ts = m.filter(pl.col("relpath") == "imagesTs/anat_101.nii.gz")
    assert ts.height and set(ts["status"]) <= {"duplicate", "ok"}
    assert (ts["status"] == "duplicate").sum() >= 1
    # distinct slices of one volume are never merged as near duplicates
    assert train.filter(pl.col("status") == "duplicate").height == 0


def _four_channel_msd(root: Path) -> Path:
    """An MSD image with three channels (like BraTS sequences) and one label for all of them."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    data, lab, affine = phantom_volume()
    t2 = np.abs(data - np.median(data)) * np.linspace(0.5, 1.5, data.shape[1])[None, :, None]
    channels = np.stack([data, data.max() - data, t2], axis=-1)  # three different contrasts
    nib.save(nib.Nifti1Image(channels.astype(np.float32), affine), root / "imagesTr" / "case_001.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / "case_001.nii.gz")
    meta = {"modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"}, "labels": {"0": "background", "1": "tumour"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_4d_nifti_every_channel_is_its_own_image_with_the_shared_label(tmp_path):
    root = _four_channel_msd(tmp_path / "msd")
    spec = make_spec(tmp_path, "brats", "nifti_msd", root, slicing={"axis": "axial", "stride": 100})
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    ok = res.manifest.filter(pl.col("status") == "ok")
    assert res.quarantine_counts == {}
    by_seq = {seq: g for (seq,), g in ok.group_by("description")}
    assert set(by_seq) == {"FLAIR", "T1w", "T2w"}
    # the same slices (those with the label) from each channel, each with the label's mask
    slices = {seq: sorted(g["slice_index"].to_list()) for seq, g in by_seq.items()}
    assert slices["FLAIR"] == slices["T1w"] == slices["T2w"] == [0, *range(10, 20)]  # stride + label
    assert ok["record_id"].n_unique() == ok.height
    imgs = res.images.join(ok.select("record_id", "description", "slice_index"), on="record_id")
    labelled = imgs.filter(pl.col("slice_index") >= 10)
    assert labelled["mask_path"].is_not_null().all() and labelled.height == 30
    flair = imgs.filter((pl.col("description") == "FLAIR") & (pl.col("slice_index") == 15)).row(0, named=True)
    t1 = imgs.filter((pl.col("description") == "T1w") & (pl.col("slice_index") == 15)).row(0, named=True)
    assert flair["mask_path"] == t1["mask_path"]  # one label, aligned with every channel
    a, b = _png(out, flair["image_path"]).astype(float), _png(out, t1["image_path"]).astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] < -0.5  # channel 1 is the inverted contrast

    only = make_spec(tmp_path, "brats_t1", "nifti_msd", root, channels=[1, 7], slicing={"axis": "axial", "stride": 100})
    res = ingest_source(only, tmp_path / "out_t1", workers=1)
    ok = res.manifest.filter(pl.col("status") == "ok")
    assert set(ok["description"]) == {"T1w"} and ok.height == 11
    assert res.quarantine_counts == {"undecodable": 1}  # channel 7 does not exist, said once


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_nifti_orientation_and_mask_alignment(tmp_path, axis):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    data, lab, affine = phantom_volume()
    nib.save(nib.Nifti1Image(data, affine), root / "imagesTr" / "p.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / "p.nii.gz")
    spec = make_spec(
        tmp_path, "ph", "nifti_msd", root, labels={1: "box"}, slicing={"axis": axis, "stride": 3}
    )
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    assert res.quarantine_counts == {}
    right, down = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}[axis]
    imgs = res.images.join(res.manifest.select("record_id", "slice_axis"), on="record_id")
    assert set(imgs["slice_axis"]) == {axis}
    assert set(imgs["display_right"]) == {right} and set(imgs["display_down"]) == {down}
    masked = imgs.filter(pl.col("mask_path").is_not_null())
    assert masked.height > 0
    for row in masked.to_dicts():
        img, m = _png(out, row["image_path"]), _png(out, row["mask_path"])
        assert img.shape == m.shape
        assert img[m > 0].mean() > img[m == 0].mean() + 60  # the mask sits on the bright box
        sy, sx = row["original_spacing"]
        assert sy == pytest.approx(sx, rel=0.05)  # anisotropic voxels resampled to square pixels


def test_nifti_bad_inputs(tmp_path):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    aff = np.eye(4)
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), 7, np.int16), aff), root / "imagesTr" / "const.nii.gz")
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), aff), root / "imagesTr" / "nan.nii.gz")
    good, lab, _ = phantom_volume()
    nib.save(nib.Nifti1Image(good, aff), root / "imagesTr" / "mismatch.nii.gz")
    nib.save(nib.Nifti1Image(lab[:, :, :5], aff), root / "labelsTr" / "mismatch.nii.gz")
    nib.save(nib.Nifti1Image(good, aff), root / "imagesTr" / "ok.nii.gz")
    data = (root / "imagesTr" / "ok.nii.gz").read_bytes()
    (root / "imagesTr" / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    spec = make_spec(tmp_path, "badnii", "nifti_msd", root)
    res = ingest_source(spec, tmp_path / "out", workers=1)
    reasons = {r["relpath"]: r["reason"] for r in res.manifest.to_dicts() if r["status"] == "quarantined"}
    assert reasons["imagesTr/const.nii.gz"].startswith("constant_volume:")
    assert reasons["imagesTr/nan.nii.gz"].startswith("nan_volume:")
    assert reasons["imagesTr/mismatch.nii.gz"].startswith("mask_shape_mismatch:")
    assert reasons["imagesTr/cut.nii.gz"].split(":")[0] in ("truncated", "undecodable")
    assert "imagesTr/ok.nii.gz" not in reasons
    tiny = make_spec(tmp_path, "tinynii", "nifti_msd", root, include=["imagesTr/ok*"], max_pixels=1000)
    res = ingest_source(tiny, tmp_path / "out2", workers=1)
    assert res.quarantine_counts == {"too_many_pixels": 1} and res.manifest.height == 1


def test_image_folder(tmp_path):
    root = folder_source(tmp_path / "fold")
    (root / "masks").mkdir()
    cell = np.asarray(Image.open(SKIMAGE_DATA / "cell.png").convert("L"))
    mask = (cell > np.percentile(cell, 90)).astype(np.uint8) * 255
    Image.fromarray(mask).save(root / "masks" / "cell.png")
    Image.new("L", (10, 10)).save(root / "masks" / "ihc.png")  # wrong shape
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    outside = tmp_path / "outside.png"
    shutil.copy(SKIMAGE_DATA / "cell.png", outside)
    (root / "images" / "link.png").symlink_to(outside)
    # a near duplicate: the retina photograph with mild noise
    rng = np.random.default_rng(0)
    ret = np.asarray(Image.open(SKIMAGE_DATA / "retina.jpg"))
    noisy = np.clip(ret.astype(int) + rng.integers(-3, 4, ret.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(root / "images" / "retina_copy.png")
    spec = make_spec(
        tmp_path, "fold", "image_folder", root, modality="Fundus", organ="retina", labels={1: "cells"}
    )
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1)
    rows = {r["relpath"]: r for r in res.manifest.to_dicts()}
    assert rows["images/ihc.png"]["reason"].startswith("mask_shape_mismatch:")
    assert rows["images/broken.png"]["reason"].split(":")[0] in ("undecodable", "truncated")
    assert rows["images/link.png"]["reason"].startswith("path_escapes_root:")
    assert rows["images/retina_copy.png"]["status"] == "duplicate"
    assert rows["images/retina_copy.png"]["reason"].startswith("near_duplicate:")
    assert rows["images/retina_copy.png"]["duplicate_of"] == rows["images/retina.jpg"]["record_id"]
    images = {r["record_id"]: r for r in res.images.to_dicts()}
    ret_img = images[rows["images/retina.jpg"]["record_id"]]
    assert ret_img["channels"] == 3 and ret_img["window"] == "colour"  # fundus keeps colour
    assert ret_img["display_right"] is None
    assert max(ret_img["width"], ret_img["height"]) == 512
    cell_img = images[rows["images/cell.png"]["record_id"]]
    m = _png(out, cell_img["mask_path"])
    assert cell_img["mask_labels"] == [1] and set(np.unique(m)) == {0, 1}
    assert rows["images/cell.png"]["labels"] == ["cells"]
    only = make_spec(tmp_path, "fold2", "image_folder", root, modality="X-ray", include=["images/cell*"])
    res = ingest_source(only, tmp_path / "out2", workers=1)
    assert res.manifest["relpath"].to_list() == ["images/cell.png"]
    xr = res.images.row(0, named=True)
    assert (xr["display_right"], xr["display_down"]) == ("L", "I") and xr["channels"] == 1


def test_table_layout(tmp_path):
    root = folder_source(tmp_path / "tab", names=("cell.png", "ihc.png"))
    (tmp_path / "secret.png").write_bytes((SKIMAGE_DATA / "cell.png").read_bytes())
    lines = [
        "image,label,bbox,report,question,answer",
        'images/cell.png,cells,"10,20,110,220;0,0,1000,50",Phase contrast 2020-01-02.,What is shown?,cells',
        "images/ihc.png,glands,,IHC stain,,",
        "../secret.png,x,,,,",
        "images/missing.png,x,,,,",
        'images/cell.png,x,"5,5,1",,,',
    ]
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    spec = make_spec(tmp_path, "tab", "table", root, modality="Microscopy", organ="cells", max_side=256)
    res = ingest_source(spec, tmp_path / "out", workers=1)
    reasons = [r["reason"] for r in res.manifest.to_dicts() if r["status"] == "quarantined"]
    assert sorted(r.split(":")[0] for r in reasons) == ["bad_csv_row", "bad_csv_row", "path_escapes_root"]
    ok = res.manifest.filter(pl.col("status") == "ok")
    first = ok.filter(pl.col("relpath") == "images/cell.png").row(0, named=True)
    assert first["question"] == "What is shown?" and first["answer"] == "cells" and first["label"] == "cells"
    assert "2020" not in first["report"]
    img = res.images.filter(pl.col("record_id") == first["record_id"]).row(0, named=True)
    w0, h0 = Image.open(SKIMAGE_DATA / "cell.png").size
    sx, sy = img["width"] / w0, img["height"] / h0
    assert img["boxes"][0] == pytest.approx([10 * sx, 20 * sy, 110 * sx, 220 * sy], abs=0.01)
    assert img["box_clipped"] == [False, True] and img["boxes"][1][2] == img["width"]
    assert img["box_labels"] == ["cells", "cells"] and img["channels"] == 1  # cell.png is grey


def _grouping(manifest: pl.DataFrame) -> list[list[str]]:
    """Which records share a group id (whatever the ids are)."""
    groups = manifest.filter(pl.col("group_id").is_not_null()).group_by("group_id").agg(pl.col("record_id").sort())
    return sorted(groups["record_id"].to_list())


def test_idempotent_and_parallel_output_identical(tmp_path):
    root = copy_dicoms(
        tmp_path / "src", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "MR_small_RLE.dcm"]
    )
    folder = folder_source(tmp_path / "fold", names=("cell.png",))
    for name, layout, src in (("pdicom", "dicom", root), ("pfold", "image_folder", folder)):
        spec = make_spec(tmp_path, name, layout, src)
        a = ingest_source(spec, tmp_path / "a", workers=1)
        b = ingest_source(spec, tmp_path / "b", workers=2)
        again = ingest_source(spec, tmp_path / "a", workers=1)
        # group ids are keyed per output root (a patient's id means nothing outside it): same
        # grouping in both roots, identical ids on a rerun into the same root
        keyed = a.manifest.drop("group_id")
        assert keyed.equals(b.manifest.drop("group_id")) and a.images.equals(b.images)
        assert _grouping(a.manifest) == _grouping(b.manifest)
        assert a.manifest.equals(again.manifest) and a.images.equals(again.images)
    files_a = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b and files_a


def test_window_override_and_config_types(tmp_path):
    root = copy_dicoms(tmp_path / "src", ["CT_small.dcm"])
    spec = make_spec(
        tmp_path,
        "win",
        "dicom",
        root,
        modality="CT",
        organ="lung",
        window=WindowConfig(center=-600, width=1500).model_dump(),
        slicing=SliceConfig().model_dump(),
    )
    res = ingest_source(spec, tmp_path / "out", workers=1)
    assert res.images["window"].to_list() == ["ct:-600/1500"]
    assert json.loads(json.dumps(res.counts))["images"] == 1
    buf = io.BytesIO()
    res.images.write_parquet(buf)
    assert buf.tell() > 0


def test_slice_selection_skips_flat_slices_and_strides(tmp_path):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    vol = rng.normal(100, 30, (32, 32, 12)).astype(np.float32)
    vol[:, :, :3] = 0.0  # empty slices: never kept, even labelled
    lab = np.zeros(vol.shape, np.uint8)
    lab[10:20, 10:20, 1] = 1  # a label on an empty slice (the edge of a volume) is a speck
    lab[10:20, 10:20, 6] = 1
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "imagesTr" / "v.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / "v.nii.gz")
    spec = make_spec(
        tmp_path, "sel", "nifti_msd", root, labels={1: "roi"}, slicing={"axis": "axial", "stride": 3}
    )
    res = ingest_source(spec, tmp_path / "out", workers=1)
    kept = sorted(res.manifest.filter(pl.col("status") == "ok")["slice_index"].to_list())
    # informative unlabelled slices: 3,4,5,7,8,9,10,11 -> every 3rd: 3, 7, 10; plus labelled 6
    assert kept == [3, 6, 7, 10]
    assert res.skipped_counts == {"little_foreground": 3, "stride": 5}


def test_empty_source_writes_empty_tables(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    spec = make_spec(tmp_path, "empty", "image_folder", root)
    calls = []
    res = ingest_source(spec, tmp_path / "out", workers=2, progress=lambda d, t: calls.append((d, t)))
    assert res.manifest.height == 0 and res.images.height == 0 and calls == [(0, 0)]
    assert list(res.manifest.columns) == list(MANIFEST_SCHEMA)
    assert PREPROCESSED_IMAGES.path(tmp_path / "out", "empty").exists()


def test_monochrome1_is_inverted_for_display(tmp_path):
    root = copy_dicoms(tmp_path / "src", ["MR_small.dcm"])
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(root / "inv.dcm")
    spec = make_spec(tmp_path, "inv", "dicom", root)
    out = tmp_path / "out"
    res = ingest_source(spec, out, workers=1, near_duplicate_distance=None)
    paths = dict(
        res.images.join(res.manifest.select("record_id", "relpath"), on="record_id")
        .select("relpath", "image_path")
        .iter_rows()
    )
    a = _png(out, paths["MR_small.dcm"]).astype(int)
    b = _png(out, paths["inv.dcm"]).astype(int)
    assert np.abs((255 - a) - b).max() <= 1


def test_folders_and_files_named_after_the_patient_are_redacted(tmp_path):
    from medtrinity_assets.privacy import matcher_for

    def redact_identifying_path(relpath, values):
        return matcher_for(values).redact_path(relpath)

    assert redact_identifying_path("DOE_JANE/ct/1.dcm", {"Doe^Jane", "Doe", "Jane"}).startswith("~")
    assert redact_identifying_path("scans/ct/1.dcm", {"Doe^Jane"}) == "scans/ct/1.dcm"

    root = tmp_path / "src"
    (root / "DOE_JANE").mkdir(parents=True)
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientName = "Doe^Jane"
    ds.save_as(root / "DOE_JANE" / f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(root / "plain.dcm")
    spec = make_spec(tmp_path, "named", "dicom", root, modality="CT", organ="abdomen")
    res = ingest_source(spec, tmp_path / "out", workers=1)
    rels = res.manifest["relpath"].to_list()
    assert "plain.dcm" in rels  # nothing identifying in that name
    assert all("doe" not in r.lower() and ds.SOPInstanceUID not in r for r in rels), rels
    assert res.counts["relpaths_redacted"] == 1
    again = ingest_source(spec, tmp_path / "out", workers=1)
    assert again.manifest.equals(res.manifest)  # stable redaction: reruns are identical


def test_pngs_are_lossless_and_no_larger_than_pillow_writes_them():
    """Ingestion's PNG encoder (zlib's run-length strategy, chosen for speed) keeps every value of
    greyscale, colour and 16-bit label images, and writes a photograph and a radiograph in no more
    bytes (within 3%) than Pillow's default encoder."""
    import skimage
    from pydicom.data import get_testdata_file

    from medtrinity_assets.ingest.slicing import encode_png

    rng = np.random.default_rng(0)
    labels = np.zeros((64, 80), np.uint16)
    labels[10:30, 20:50], labels[40:60, 5:25] = 300, 7
    photo, xray = skimage.data.astronaut(), pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm")).pixel_array
    xray = (xray[::4, ::4] // 16).astype(np.uint8)
    for arr in (rng.integers(0, 256, (33, 41), dtype=np.uint8), photo, xray, labels):
        with Image.open(io.BytesIO(encode_png(arr)), formats=["PNG"]) as im:
            assert np.array_equal(np.asarray(im), arr)
    for arr in (photo, xray):
        default = io.BytesIO()
        Image.fromarray(arr).save(default, format="PNG", compress_level=6)
        assert len(encode_png(arr)) <= 1.03 * default.tell()
