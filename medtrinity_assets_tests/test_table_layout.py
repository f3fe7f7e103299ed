"""The ``table`` layout: rows grouped per image, tolerant headers and delimiters, no leaked paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.core import storage
from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets_tests.sources_builders import make_spec


def _png(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")


def _source(tmp_path: Path, csv_text: str, name: str = "index.csv") -> Path:
    root = tmp_path / "tab"
    _png(root / "images" / "a.png", 1)
    _png(root / "images" / "b.png", 2)
    (root / name).write_text(csv_text)
    return root


def _ingest(tmp_path: Path, root: Path, name: str = "tab", workers: int = 1):
    spec = make_spec(tmp_path, name, "table", root, modality="X-ray", organ="chest", max_side=512)
    return spec, ingest_source(spec, tmp_path / f"out{workers}", workers=workers)


def test_rows_of_one_image_become_one_record_with_all_boxes(tmp_path):
    lines = [
        "image,label,bbox,report,question,answer",
        'images/a.png,lesion,"1,2,10,12",Two findings.,Is there a lesion?,yes',
        'images/a.png,nodule,"20,20,30,30",Two findings.,Where is the nodule?,right',
        'images/a.png,lesion,"5,5,1",,,',  # malformed box: this row alone is quarantined
        'images/a.png,cyst,"500,500,600,600",,,',  # outside the 64x48 image: this row alone
        'images/a.png,lesion,"1,2,10,12",,,',  # the same box again: kept once
        "images/./a.png,effusion,,Small effusion.,,",  # same file, no box: label and report
        "images/b.png,normal,,,,",
    ]
    root = _source(tmp_path, "\n".join(lines) + "\n")
    spec, res = _ingest(tmp_path, root)
    man = res.manifest
    assert man["status"].to_list().count("duplicate") == 0
    ok = man.filter(pl.col("status") == "ok")
    assert sorted(ok["relpath"].to_list()) == ["images/a.png", "images/b.png"]
    a = ok.filter(pl.col("relpath") == "images/a.png").row(0, named=True)
    assert a["label"] == "lesion; nodule; effusion"
    assert a["labels"] == ["lesion", "nodule", "effusion"]  # box labels, then the rows' own
    b = ok.filter(pl.col("relpath") == "images/b.png").row(0, named=True)
    assert b["labels"] == ["normal"]  # a label without a box is still one of the record's labels
    assert a["report"] == "Two findings. Small effusion."
    assert (a["question"], a["answer"]) == ("Is there a lesion?", "yes")  # first pair, kept together
    # the record id is keyed by the image's first good row, as before for one-row images
    assert a["record_id"] == storage.record_id(spec.name, "images/a.png", None, "index.csv:2")
    img = res.images.filter(pl.col("record_id") == a["record_id"]).row(0, named=True)
    sx, sy = img["width"] / 64, img["height"] / 48
    assert img["boxes"] == [
        pytest.approx([1 * sx, 2 * sy, 10 * sx, 12 * sy], abs=0.01),
        pytest.approx([20 * sx, 20 * sy, 30 * sx, 30 * sy], abs=0.01),
    ]
    assert img["box_labels"] == ["lesion", "nodule"]
    bad = man.filter(pl.col("status") == "quarantined").sort("reason")
    assert bad["relpath"].to_list() == ["images/a.png", "images/a.png"]
    reasons = bad["reason"].to_list()
    assert reasons[0].startswith("bad_csv_row: bbox '5,5,1'")
    assert (
        reasons[1].startswith("bad_csv_row: bbox lies outside the 64x48 image")
        and "index.csv:5" in reasons[1]
    )
    assert man["record_id"].n_unique() == man.height


def test_grouped_rows_are_identical_with_workers(tmp_path):
    lines = ["image,label,bbox", 'images/a.png,x,"1,1,5,5"', 'images/a.png,y,"6,6,9,9"', "images/b.png,z,"]
    root = _source(tmp_path, "\n".join(lines) + "\n")
    _, one = _ingest(tmp_path, root, workers=1)
    _, two = _ingest(tmp_path, root, workers=2)
    _, again = _ingest(tmp_path, root, workers=1)
    assert one.manifest.equals(two.manifest) and one.images.equals(two.images)
    assert one.manifest.equals(again.manifest)
    assert one.images.filter(pl.col("box_labels").list.len() == 2).height == 1


@pytest.mark.parametrize(
    ("header", "delim"),
    [
        ("Image,Label, BBox ", ","),
        (" IMAGE ;label; BBox", ";"),
        ("image\tLabel\tbbox", "\t"),
    ],
)
def test_headers_are_case_and_space_insensitive_and_delimiter_is_sniffed(tmp_path, header, delim):
    box = '"1,2,10,12"' if delim == "," else "1,2,10,12"
    rows = [header, delim.join(["images/a.png", "lesion", box]), delim.join(["images/b.png", "normal", ""])]
    root = _source(tmp_path, "\n".join(rows) + "\n")
    _, res = _ingest(tmp_path, root)
    ok = res.manifest.filter(pl.col("status") == "ok")
    assert sorted(ok["relpath"].to_list()) == ["images/a.png", "images/b.png"]
    assert res.counts["quarantined"] == 0
    a = ok.filter(pl.col("relpath") == "images/a.png").row(0, named=True)
    img = res.images.filter(pl.col("record_id") == a["record_id"]).row(0, named=True)
    assert a["label"] == "lesion" and len(img["boxes"]) == 1 and img["box_labels"] == ["lesion"]


def test_semicolon_csv_with_several_quoted_boxes(tmp_path):
    rows = ["image;label;bbox", 'images/a.png;"x;y";"1,1,5,5;6,6,9,9"', "images/b.png;z;"]
    root = _source(tmp_path, "\n".join(rows) + "\n")
    _, res = _ingest(tmp_path, root)
    assert res.counts["quarantined"] == 0
    assert res.images.filter(pl.col("box_labels").list.len() == 2)["box_labels"].to_list() == [["x", "y"]]


def test_csv_without_image_column_fails_the_source(tmp_path):
    root = _source(tmp_path, "path,label\nimages/a.png,x\n", name="labels.csv")
    with pytest.raises(
        ValueError, match=r"labels\.csv has no 'image' column \(columns found: \['path', 'label'\]"
    ):
        _ingest(tmp_path, root)


def test_absolute_or_escaping_paths_are_not_echoed(tmp_path):
    private = tmp_path / "Doe_John" / "scan.png"
    _png(private, 3)
    lines = [
        "image,label",
        f"{private},x",
        "../Doe_John/scan.png,x",
        ",x",
        "images/a.png,ok",
    ]
    root = _source(tmp_path, "\n".join(lines) + "\n")
    _, res = _ingest(tmp_path, root)
    man = res.manifest
    bad = man.filter(pl.col("status") == "quarantined").sort("relpath")
    assert bad["relpath"].to_list() == ["index.csv:row2", "index.csv:row3", "index.csv:row4"]
    assert [r.split(":")[0] for r in bad["reason"].to_list()] == [
        "path_escapes_root",
        "path_escapes_root",
        "bad_csv_row",
    ]
    for row in man.to_dicts():
        assert not any("Doe_John" in str(v) for v in row.values())
    assert man["record_id"].n_unique() == man.height
    assert man.filter(pl.col("status") == "ok")["relpath"].to_list() == ["images/a.png"]
