"""The export's dataset card, HTML viewer and DuckDB catalog (with ``medtrinity sql``), on a tiny
output root written through the table contracts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.cli import main as cli_main
from medtrinity_assets.core.tables import CONTRACTS, FACETS, MEDTRINITY_DATASET
from medtrinity_assets.export.card import dataset_card, roi_area_fractions
from medtrinity_assets.export.catalog import (
    build_catalog,
    catalog_is_stale,
    catalog_report,
    default_catalog_path,
)
from medtrinity_assets.export.viewer import NO_REGION, OUTLINE, overlay_array, write_viewer
from medtrinity_assets.rois.rle import rle_encode, rle_json
from medtrinity_assets_tests.ui_driver import chromium_paths, headless_chrome

SOURCES = [
    {"name": "ct_src", "license": "MIT", "origin": "made by the test", "synthetic": False, "modality": "CT", "organ": "head"},
    {"name": "mr_src", "license": "CC0 <b>", "origin": "made | by test", "synthetic": True, "modality": "MRI", "organ": "brain"},
]


def _image(export: Path, seed: int, shape: tuple[int, ...]) -> tuple[str, str]:
    arr = np.random.default_rng(seed).integers(30, 200, shape, dtype=np.uint8)
    sha = f"{seed:02d}" + "ab" * 31
    rel = f"images/{sha[:2]}/{sha}.png"
    (export / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(export / rel)
    return rel, sha


def _disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _triplet(i: int, source: str, modality: str, rel: str, sha: str, size: tuple[int, int], origin: str, **kw) -> dict:
    w, h = size
    row = {
        "triplet_id": f"t{i}", "source": source, "record_id": f"r{i}", "roi_id": f"r{i}:0", "inputs_hash": f"h{i}",
        "image_file": rel, "image_sha256": sha, "image_width": w, "image_height": h, "label": "lesion",
        "origin": origin, "description": f"Description number {i} of a {modality} image.", "modality": modality,
        "organ": "head" if modality == "ct" else "brain", "split": ["train", "test", "validation"][i % 3],
        "group_id": f"image:{sha}", "license": "MIT", "synthetic": source == "mr_src", "backend": "embedded",
        "model": "grounded-templates", "prompt_version": "v1", **{f"facet_{k}": f"{k} text {i}" for k in FACETS},
    }
    if origin == "whole_image":
        row.update(bbox_xyxy=[0.0, 0.0, float(w), float(h)], bbox_norm=[0.0, 0.0, 1.0, 1.0], label="whole_image")
    return {**row, **kw}


def _export_rows(export: Path) -> list[dict]:
    rows = []
    for i in range(3):  # ct: 64x64 grey with a mask (upscaled to 256 in the viewer)
        rel, sha = _image(export, i, (64, 64))
        m = _disc(64, 64, 30, 20 + i * 5, 8)
        ys, xs = np.nonzero(m)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        rows.append(_triplet(i, "ct_src", "ct", rel, sha, (64, 64), "mask", bbox_xyxy=box,
                             bbox_norm=[b / 64 for b in box], mask_rle=rle_json(rle_encode(m))))
    rel, sha = _image(export, 3, (200, 300, 3))  # mri: a box, a whole image, and an escaped label
    rows.append(_triplet(3, "mr_src", "mri", rel, sha, (300, 200), "box", bbox_xyxy=[30.0, 40.0, 120.0, 100.0],
                         bbox_norm=[0.1, 0.2, 0.4, 0.5], label="<script>alert(1)</script>"))
    rel, sha = _image(export, 4, (200, 300))
    rows.append(_triplet(4, "mr_src", "mri", rel, sha, (300, 200), "whole_image"))
    rows.append(_triplet(5, "mr_src", "mri", rel, sha, (300, 200), "expert:unet", bbox_xyxy=[10.0, 10.0, 50.0, 60.0],
                         bbox_norm=[0.03, 0.05, 0.17, 0.3]))
    rows.append(_triplet(6, "ct_src", "x-ray", "images/zz/missing.png", "ff" * 32, (100, 100), "whole_image"))
    return rows


def _write_tables(out: Path, rows: list[dict]) -> None:
    """The upstream tables of the triplets, through their contracts; mr_src's manifest is an
    older file without the optional columns."""
    c = CONTRACTS
    for src in ("ct_src", "mr_src"):
        mine = [r for r in rows if r["source"] == src]
        manifest = c["source_manifest"].frame([{**r, "relpath": f"{r['record_id']}.dcm", "status": "ok"} for r in mine])
        if src == "mr_src":
            c["source_manifest"].path(out, src).parent.mkdir(parents=True, exist_ok=True)
            manifest.drop("sequence", "group_id").write_parquet(c["source_manifest"].path(out, src))
        else:
            c["source_manifest"].write(manifest, out, src)
        c["roi_set"].write(c["roi_set"].frame([{**r, "status": "ok", "area_fraction": 0.05} for r in mine]), out, src)
        c["retrieved_knowledge"].write(c["retrieved_knowledge"].frame(
            [{**r, "query": "q", "chunk_ids": ["k1", "k2"], "scores": [0.9, 0.5]} for r in mine]), out, src)
        c["caption_batch"].write(c["caption_batch"].frame(
            [{**r, "text": r["description"], "status": "ok",
              "fallback_reason": "position contradicted; laterality contradicted" if r["triplet_id"] == "t0" else None}
             for r in mine]), out, src)
        c["caption_quality"].write(c["caption_quality"].frame([{**r, "passed": True, "judge_mean": 7.5} for r in mine]), out, src)
    c["knowledge_docstore"].write(c["knowledge_docstore"].frame(
        [{"chunk_id": "k1", "title": "Head CT", "corpus": "default", "text": "one"},
         {"chunk_id": "k2", "title": "Brain MRI", "corpus": "default", "text": "two"}]), out)
    MEDTRINITY_DATASET.write(MEDTRINITY_DATASET.frame(rows), out)


@pytest.fixture()
def out(tmp_path) -> Path:
    root = tmp_path / "out"
    export = MEDTRINITY_DATASET.path(root).parent
    export.mkdir(parents=True)
    _write_tables(root, _export_rows(export))
    return root


def _dataset(out: Path) -> pl.DataFrame:
    return MEDTRINITY_DATASET.read(out)


# ---------------------------------------------------------------------------- catalog / sql
def test_catalog_has_a_view_per_table_and_reads_older_files(out, tmp_path, monkeypatch):
    db = build_catalog(out)
    assert db == default_catalog_path(out) and db.is_file()
    assert not [p for p in db.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    views, skipped = catalog_report(db)
    for name in ("source_manifest", "roi_set", "caption_batch", "caption_quality", "retrieved_knowledge",
                 "knowledge_docstore", "medtrinity_dataset", "lineage", "lineage_passages"):
        assert name in views
    assert {"knowledge_corpus", "triplets", "preprocessed_images"} <= set(skipped)
    monkeypatch.chdir(tmp_path.parent)  # absolute paths: any working directory
    with duckdb.connect(str(db), read_only=True) as con:
        n, no_group = con.execute("SELECT count(*), count(*) FILTER (group_id IS NULL) FROM source_manifest").fetchone()
        assert (n, no_group) == (7, 3)  # mr_src's older file has no group_id column: NULLs
        assert con.execute("SELECT count(*) FROM medtrinity_dataset").fetchone()[0] == 7


def test_lineage_traces_a_triplet_to_manifest_roi_passages_and_quality(out):
    db = build_catalog(out)
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT relpath, roi_origin, retrieval_query, passed, judge_mean FROM lineage "
                          "WHERE triplet_id = 't3'").fetchone()
        assert row == ("r3.dcm", "box", "q", True, 7.5)
        joined = con.execute("SELECT count(*) FROM medtrinity_dataset t JOIN source_manifest m USING (record_id)").fetchone()
        assert joined[0] == 7
        passages = con.execute("SELECT rank, chunk_id, score, title FROM lineage_passages WHERE triplet_id = 't0' "
                               "ORDER BY rank").fetchall()
        assert passages == [(1, "k1", 0.9, "Head CT"), (2, "k2", 0.5, "Brain MRI")]


def test_catalog_is_refreshed_when_a_table_appears(out):
    db = build_catalog(out)
    assert not catalog_is_stale(out)
    c = CONTRACTS["knowledge_corpus"]
    c.write(c.frame([{"chunk_id": "k9", "title": "t"}]), out)
    assert catalog_is_stale(out)
    os.utime(db, (1, 1))
    assert catalog_is_stale(out)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = cli_main(argv)
    return code, o.getvalue(), e.getvalue()


def test_medtrinity_sql_prints_a_table_and_builds_the_catalog(out):
    code, stdout, stderr = _cli(["sql", "--out", str(out), "SELECT source, count(*) AS n FROM roi_set GROUP BY ALL ORDER BY 1"])
    assert code == 0, stderr
    assert "ct_src" in stdout and "mr_src" in stdout and "│" in stdout
    assert default_catalog_path(out).is_file()


def test_medtrinity_sql_bad_query_exits_2_with_one_line(out):
    code, stdout, stderr = _cli(["sql", "--out", str(out), "SELECT * FROM no_such_table"])
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "no_such_table" in stderr and "Traceback" not in stderr
    code, _, stderr = _cli(["sql", "--out", str(out), "SELEC 1"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1


def test_medtrinity_sql_finds_the_instance_output_root(out, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "medtrinity.json").write_text(json.dumps({"out_dir": str(out), "registry_dir": str(tmp_path)}))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code, stdout, _ = _cli(["sql", "SELECT count(*) AS n FROM medtrinity_dataset"])
    assert code == 0 and " 7 " in stdout


def test_python_m_catalog_is_the_same_command(out):
    done = subprocess.run([sys.executable, "-m", "medtrinity_assets.export.catalog", "--out", str(out),
                           "SELECT triplet_id FROM lineage ORDER BY 1 LIMIT 1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "t0" in done.stdout


# ---------------------------------------------------------------------------- card
def test_dataset_card_counts_plots_sources_and_limitations(out):
    df = _dataset(out)
    export = MEDTRINITY_DATASET.path(out).parent
    backends = pl.concat([CONTRACTS["caption_batch"].read(out, s) for s in ("ct_src", "mr_src")])
    fidelity = {"variants": {"clean": {"recall": 0.9, "precision": 0.8}, "speckle": {"recall": 0.7, "precision": 0.6}}}
    md = dataset_card(df, export, sources=SOURCES, fidelity=fidelity, backends=backends)
    assert (export / "DATASET_CARD.md").read_text(encoding="utf-8") == md
    for heading in ("By modality", "By organ", "By source", "By ROI origin", "By split"):
        assert f"### {heading}" in md
    assert "| ct | 3 | 42.9% |" in md and "| whole_image | 2 | 28.6% |" in md
    for png in ("description_words.png", "roi_area_fraction.png"):
        with Image.open(export / "card" / png) as im:
            assert im.width >= 600 and im.height >= 300
        assert f"](card/{png})" in md
    assert "| mr_src | MRI | brain | CC0 <b> | made \\| by test | yes | 3 |" in md
    assert "Synthetic sources (generated, no real patient): mr_src" in md
    assert "2 of 7 triplet(s) (28.6%) have no localised region" in md
    assert "1 of 7 exported description(s)" in md and "position contradicted (1)" in md
    assert "| recall | 0.900 | 0.700 |" in md
    assert "In more than one split: 1 image(s)" in md  # t4 and t5 share an image across splits
    assert len(roi_area_fractions(df)) == 5


# ---------------------------------------------------------------------------- viewer
def test_viewer_page_is_static_escaped_and_relative(out):
    export = MEDTRINITY_DATASET.path(out).parent
    index = write_viewer(_dataset(out), export, per_modality=3, seed=1)
    assert index == export / "viewer" / "index.html"
    page = index.read_text(encoding="utf-8")
    assert page.count('<article class="card"') == 6  # ct 3, mri 3; the x-ray image is missing
    assert "1 sampled triplet(s) left out" in page
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert NO_REGION in page  # the whole-image row: not outlined, and said so
    for field in ("ct_src", "r3:0", "expert:unet", "validation", "embedded (grounded-templates)", "relationship text 3"):
        assert field in page
    assert "http://" not in page and "https://" not in page and str(export) not in page and "<link" not in page
    imgs = sorted((export / "viewer" / "img").glob("*.png"))
    assert len(imgs) == 6
    for p in imgs:
        with Image.open(p) as im:
            assert min(im.size) >= 256
        assert f'src="img/{p.name}"' in page


def test_overlay_outlines_masks_and_boxes_but_not_whole_images(out):
    df = _dataset(out)
    image = np.full((64, 64), 90, np.uint8)
    rows = {r["triplet_id"]: r for r in df.iter_rows(named=True)}
    for tid, outlined in (("t0", True), ("t3", True), ("t4", False)):
        shape = (64, 64) if tid == "t0" else (200, 300)
        arr = overlay_array(rows[tid], np.full(shape, 90, np.uint8) if tid != "t0" else image)
        assert min(arr.shape[:2]) >= 256
        assert bool((arr == OUTLINE).all(-1).any()) is outlined


def test_viewer_loads_in_headless_chromium_after_a_move(out, tmp_path):
    found = chromium_paths()
    pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    if found is None:
        pytest.skip("no chromium/chromedriver on PATH")
    from selenium.webdriver.support.ui import WebDriverWait

    export = MEDTRINITY_DATASET.path(out).parent
    write_viewer(_dataset(out), export, per_modality=3)
    moved = tmp_path / "moved_export"
    shutil.copytree(export, moved)
    shutil.rmtree(export / "viewer")  # the copy must not lean on the original folder
    browser_tmp = Path(tempfile.mkdtemp(prefix="mtc-"))  # short: Chromium's socket path has a limit
    driver = headless_chrome(*found, size=(1280, 1600), tmp=browser_tmp)
    try:
        driver.get((moved / "viewer" / "index.html").as_uri())
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
        widths = driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
        cards = driver.execute_script("return document.querySelectorAll('article.card').length")
        shown = driver.execute_script("return Array.from(document.images).map(i => i.getBoundingClientRect().width)")
    finally:
        driver.quit()
        shutil.rmtree(browser_tmp, ignore_errors=True)
    assert len(widths) == 6 and all(w > 0 for w in widths)
    assert cards == 6
    assert all(w >= 256 for w in shown)
