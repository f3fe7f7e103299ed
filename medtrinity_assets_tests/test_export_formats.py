"""The export's training formats (LLaVA JSON, WebDataset shards, a `datasets` folder) written
from a hand-built triplets table with real PNGs, and the verification that reads them all back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtrinity_assets.core.tables import MEDTRINITY_DATASET
from medtrinity_assets.export.formats import (
    REGION_QUESTIONS,
    WHOLE_IMAGE_QUESTIONS,
    format_box,
    hf_features,
    iter_json_array,
    llava_question,
    write_hf_folder,
    write_llava,
    write_webdataset,
)
from medtrinity_assets.export.verify import verify_export, write_report
from medtrinity_assets.rois.rle import rle_encode, rle_json

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPLIT_OF_IMAGE = ["train", "train", "train", "validation", "validation", "test"]  # 6 images, 2 rows each


def _png(i: int, size: int = 24) -> bytes:
    arr = np.random.default_rng(i).integers(0, 255, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _rows(root: Path) -> list[dict]:
    """Two rows per image: the whole image and one region with a mask; 12 rows, 3 splits."""
    rows = []
    for i, split in enumerate(SPLIT_OF_IMAGE):
        data, size = _png(i), 24
        sha = hashlib.sha256(data).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        mask = np.zeros((size, size), bool)
        mask[3 + i : 12 + i, 2:9] = True
        for region in (False, True):
            box = [2.0, 3.0 + i, 9.0, 12.0 + i] if region else [0.0, 0.0, float(size), float(size)]
            rows.append(
                {
                    "triplet_id": hashlib.blake2b(f"{i}-{region}".encode(), digest_size=10).hexdigest(),
                    "source": "demo",
                    "record_id": f"rec{i}",
                    "roi_id": f"{i}-1" if region else "whole",
                    "inputs_hash": f"h{i}{region}",
                    "image_file": rel,
                    "image_sha256": sha,
                    "image_width": size,
                    "image_height": size,
                    "bbox_xyxy": box,
                    "bbox_norm": [v / size for v in box],
                    "mask_rle": rle_json(rle_encode(mask)) if region else None,
                    "label": "lesion" if region else None,
                    "origin": "mask" if region else "whole_image",
                    "description": f"Image {i}, {'a lesion in the left upper third' if region else 'a CT slice of the liver'}.",
                    **{
                        f"facet_{k}": f"{k} {i}"
                        for k in ("modality", "organ", "roi_location", "roi_texture", "relationship")
                    },
                    "modality": "CT" if i % 2 else "MR",
                    "organ": "liver",
                    "split": split,
                    "group_id": f"patient:{i}",
                    "license": "MIT",
                    "synthetic": True,
                    "backend": "embedded",
                    "model": "grounded",
                    "prompt_version": "v1",
                    "duplicate_group": None,
                }
            )
    return rows


def _export(root: Path):
    df = MEDTRINITY_DATASET.frame(_rows(root))
    MEDTRINITY_DATASET.write(df, root.parent)  # <root.parent>/export/triplets.parquet
    write_llava(df, root)
    write_webdataset(df, root, shard_size=5)
    write_hf_folder(df, root)
    return df


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("out") / "export"
    root.mkdir()
    df = _export(root)
    return root, df


@pytest.fixture
def damaged(built, tmp_path):
    """A private copy of the good export, to damage."""
    root = tmp_path / "export"
    shutil.copytree(built[0], root)
    return root, built[1]


def test_llava_questions_carry_the_box_vary_and_are_deterministic(built, tmp_path):
    root, df = built
    by_id = {r["triplet_id"]: r for r in df.iter_rows(named=True)}
    records = []
    for split, n in (("train", 6), ("validation", 4), ("test", 2)):
        data = json.loads((root / "llava" / f"{split}.json").read_text(encoding="utf-8"))
        assert len(data) == n
        records += data
    for rec in records:
        row = by_id[rec["id"]]
        human, gpt = rec["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and gpt["value"] == row["description"]
        assert (root / rec["image"]).is_file() and rec["image"] == row["image_file"]
        if row["origin"] == "whole_image":
            assert human["value"][len("<image>\n") :] in WHOLE_IMAGE_QUESTIONS
        else:
            assert format_box(row["bbox_norm"]) in human["value"]
    assert format_box([0.123, 0.3, 0.4789, 0.55]) == "[0.12, 0.30, 0.48, 0.55]"
    assert len({r["conversations"][0]["value"] for r in records}) > 6
    assert len(WHOLE_IMAGE_QUESTIONS) >= 4 and len(REGION_QUESTIONS) >= 4
    region = {"triplet_id": "", "origin": "mask", "bbox_norm": [0.1, 0.2, 0.3, 0.4]}
    whole = {"triplet_id": "", "origin": "whole_image", "bbox_norm": [0, 0, 1, 1]}
    asked = {llava_question({**row, "triplet_id": f"t{i}"}) for i in range(300) for row in (region, whole)}
    assert len(asked) == len(WHOLE_IMAGE_QUESTIONS) + len(REGION_QUESTIONS)  # every phrasing is used
    # the same seed writes the same bytes; another seed phrases some rows differently
    again = write_llava(df, tmp_path, seed=0)
    assert again["train"].read_bytes() == (root / "llava" / "train.json").read_bytes()
    other = write_llava(df, tmp_path / "s1", seed=1)
    assert other["train"].read_bytes() != again["train"].read_bytes()
    assert [r["id"] for r in iter_json_array(other["train"])] == [
        r["id"] for r in iter_json_array(again["train"])
    ]


def test_webdataset_shards_read_back_with_every_sample(built):
    import webdataset as wds

    root, df = built
    listing = json.loads((root / "webdataset" / "shards.json").read_text(encoding="utf-8"))
    shards = listing["shards"]
    # 6 train rows -> 2 shards of at most 5; validation 4 -> 1; test 2 -> 1
    assert [s["file"] for s in shards] == [
        "webdataset/train-000000.tar",
        "webdataset/train-000001.tar",
        "webdataset/validation-000000.tar",
        "webdataset/test-000000.tar",
    ]
    assert [s["samples"] for s in shards] == [5, 1, 4, 2]
    for s in shards:
        data = (root / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        assert sum(s["modalities"].values()) == sum(s["origins"].values()) == s["samples"]
    by_id = {r["triplet_id"]: r for r in df.iter_rows(named=True)}
    samples = list(wds.WebDataset([str(root / s["file"]) for s in shards], shardshuffle=False))
    assert sorted(x["__key__"] for x in samples) == sorted(by_id)
    for x in samples:
        row = by_id[x["__key__"]]
        assert x["png"] == (root / row["image_file"]).read_bytes()
        meta = json.loads(x["json"])
        assert meta["triplet_id"] == x["__key__"] and meta["bbox_norm"] == row["bbox_norm"]
        assert meta["mask_rle"] == row["mask_rle"] and meta["split"] == row["split"]
        assert x["txt"].decode("utf-8") == row["description"]


def test_hf_folder_loads_offline_with_declared_features(built, tmp_path):
    import datasets

    root, df = built
    ds = datasets.load_dataset(str(root / "hf"), cache_dir=str(tmp_path / "cache"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 6, "validation": 4, "test": 2}
    features = ds["train"].features
    assert features == hf_features()
    assert isinstance(features["image"], datasets.Image)
    assert features["bbox_norm"].feature == datasets.Value("float32")
    row = ds["test"][0]
    assert row["image"].size == (24, 24) and row["image"].mode == "L"
    table_row = df.filter(df["triplet_id"] == row["triplet_id"]).row(0, named=True)
    assert row["description"] == table_row["description"] and row["origin"] == table_row["origin"]
    assert row["bbox_norm"] == pytest.approx(table_row["bbox_norm"], abs=1e-6)


def test_verify_passes_on_a_good_export(built, tmp_path):
    root, df = built
    report = verify_export(root)
    assert report.ok, report.problems
    assert report.counts == {"table": 12, "images": 6, "llava": 12, "webdataset": 12, "shards": 4, "hf": 12}
    assert report.per_split["hf"] == {"train": 6, "validation": 4, "test": 2}
    copy = tmp_path / "export"
    shutil.copytree(root, copy)
    written = json.loads(write_report(report, copy).read_text(encoding="utf-8"))
    assert written["ok"] is True and written["counts"]["webdataset"] == 12


def _delete_image(root, df):
    rel = df["image_file"][0]
    (root / rel).unlink()
    return [f"{rel} (triplet {df['triplet_id'][0]} and 1 more): image file is missing"]


def _corrupt_image(root, df):
    rel = df["image_file"][2]
    (root / rel).write_bytes(_png(99))
    return [f"{rel} (triplet {df['triplet_id'][2]} and 1 more): sha256"]


def _truncate_shard(root, df):
    path = root / "webdataset" / "train-000000.tar"
    path.write_bytes(path.read_bytes()[:4000])
    return [
        "webdataset/train-000000.tar: sha256 does not match",
        "webdataset/train-000000.tar: unreadable after",
    ]


def _drop_llava_row(root, df):
    path = root / "llava" / "validation.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(records[1:]), encoding="utf-8")
    return [
        f"llava/validation.json: 3 row(s), triplets.parquet has 4 validation row(s); missing: {records[0]['id']}"
    ]


@pytest.mark.parametrize("damage", [_delete_image, _corrupt_image, _truncate_shard, _drop_llava_row])
def test_verify_names_the_problem(damaged, damage):
    root, df = damaged
    expected = damage(root, df)
    report = verify_export(root)
    assert not report.ok
    for start in expected:
        assert any(p.startswith(start) for p in report.problems), (start, report.problems)


def test_writers_refuse_a_missing_image_or_an_unknown_split(tmp_path):
    root = tmp_path / "export"
    df = MEDTRINITY_DATASET.frame(_rows(root))
    (root / df["image_file"][0]).unlink()
    with pytest.raises(FileNotFoundError, match=f"triplet {df['triplet_id'][0]}: image .* is missing"):
        write_webdataset(df, root)
    with pytest.raises(ValueError, match="split outside train, validation, test: dev"):
        write_llava(df.with_columns(split=df["split"].replace("test", "dev")), root)
