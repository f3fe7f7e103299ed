"""The dataset export's own logic: only passed descriptions, groups that keep a file (or patient)
in one split, stable splits, duplicates across sources dropped with provenance, and leakage
refused with the offending records named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.core.storage import content_path, sha256_bytes
from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, TRIPLETS
from medtrinity_assets.export.dataset import build_dataset
from medtrinity_assets.export.leakage import LeakageError
from medtrinity_assets.export.splits import assign_splits, hashed_split
from medtrinity_assets.export.triplets import build_triplets, file_group, triplet_id
from medtrinity_assets.ingest.dedup import phash


def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _image(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * xx * (1 + seed % 5)) * np.cos(4 * yy * (1 + seed % 3))
    return np.clip(base + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)


def _source(out: Path, name: str, images: list[np.ndarray], split: str = "train", groups=None) -> None:
    """A source's preprocessed images (files and rows) and one triplet per image."""
    img_rows, trip_rows = [], []
    for i, arr in enumerate(images):
        data = _png(arr)
        sha = sha256_bytes(data)
        path = content_path(out, "images", sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rid = f"{name}-{i}"
        img_rows.append({"record_id": rid, "source": name, "image_path": f"images/{sha[:2]}/{sha}.png", "sha256": sha,
                         "phash": f"{phash(arr):016x}", "width": 64, "height": 64})
        trip_rows.append({"triplet_id": f"t-{rid}", "source": name, "record_id": rid, "roi_id": f"{rid}:0",
                          "inputs_hash": "h", "image_file": f"images/{sha[:2]}/{sha}.png", "image_sha256": sha,
                          "origin": "whole_image", "description": "d", "split": split,
                          "group_id": (groups[i] if groups else f"image:{sha}"), "license": "x", "synthetic": False})
    PREPROCESSED_IMAGES.write(PREPROCESSED_IMAGES.frame(img_rows), out, name)
    TRIPLETS.write(TRIPLETS.frame(trip_rows), out, name)


def test_only_passed_descriptions_become_triplets_and_a_file_stays_in_one_split():
    captions = pl.DataFrame({
        "record_id": ["a", "a", "b", "b"], "roi_id": ["a:0", "a:1", "b:0", "b:1"], "source": "s",
        "inputs_hash": ["h1", "h2", "h3", "h4"], "text": ["one", "two", "three", "four"], "status": "ok",
        "backend": "embedded", "model": "m",
        "prompt_version": "p", **{f"facet_{k}": "f" for k in ("modality", "organ", "roi_location", "roi_texture",
                                                                "relationship")}})
    quality = pl.DataFrame({"record_id": ["a", "a", "b", "b"], "roi_id": ["a:0", "a:1", "b:0", "b:1"],
                            "inputs_hash": ["h1", "h2", "h3", "h4"], "passed": [True, False, True, True]})
    rois = pl.DataFrame({"record_id": ["a", "a", "b", "b"], "roi_id": ["a:0", "a:1", "b:0", "b:1"], "status": "ok",
                         "label": ["lesion", "lesion", "brain", "cyst"], "origin": ["mask", "mask", "whole_image", "box"],
                         "bbox_xyxy": [[1.0, 2, 3, 4]] * 4, "bbox_norm": [[0.1, 0.2, 0.3, 0.4]] * 4, "mask_rle": "{}"})
    images = pl.DataFrame({"record_id": ["a", "b"], "sha256": ["aa" * 32, "bb" * 32], "width": [8, 8], "height": [8, 8]})
    manifest = pl.DataFrame({"record_id": ["a", "b"], "source": "s", "relpath": ["vol.nii", "vol.nii"],
                             "status": "ok", "split": ["train", "train"]})
    coarse = pl.DataFrame({"record_id": ["a", "b"], "modality": "mri", "organ": "brain"})
    t = build_triplets(captions=captions, quality=quality, rois=rois, images=images, manifest=manifest, coarse=coarse,
                       license="CC0", synthetic=False)
    assert t["description"].to_list() == ["one", "three", "four"]  # "two" failed a blocking check
    assert set(t["group_id"]) == {file_group("s", "vol.nii")} and t["split"].n_unique() == 1  # slices of one file
    assert t["label"].to_list() == ["lesion", None, "cyst"]  # a whole image has no label
    assert t["mask_rle"].to_list() == ["{}", None, None]  # nor has it, or a box, a mask
    assert t["image_file"].to_list() == [f"images/aa/{'aa' * 32}.png"] + [f"images/bb/{'bb' * 32}.png"] * 2
    assert t["triplet_id"].to_list() == [triplet_id("a", "a:0", "h1"), triplet_id("b", "b:0", "h3"), triplet_id("b", "b:1", "h4")]
    assert t["license"].unique().to_list() == ["CC0"] and t["synthetic"].unique().to_list() == [False]
    assert t["facet_organ"].unique().to_list() == ["f"] and t["modality"].unique().to_list() == ["mri"]


def test_splits_are_stable_and_held_out_splits_of_a_group_hold():
    groups = [f"image:{i}" for i in range(2000)]
    first = [hashed_split(g) for g in groups]
    assert first == [hashed_split(g) for g in groups]  # rerun: identical
    assert 0.75 < (pl.Series(first) == "train").mean() < 0.85 and 0.07 < (pl.Series(first) == "test").mean() < 0.13
    df = pl.DataFrame({"group_id": ["patient:p", "patient:p", "image:x"], "image_sha256": ["a", "b", "c"],
                       "split": [None, None, None]}, schema={"group_id": pl.String, "image_sha256": pl.String,
                                                             "split": pl.String})
    out = assign_splits(df, pl.Series(["train", "test", "train"]))
    assert out["split"].to_list()[:2] == ["test", "test"]  # a patient with a held-out image is held out


def test_splits_decided_over_shards_equal_splits_over_the_whole_source():
    """A patient's rows in two shards: splits come from all shards' (group, declared) pairs at once."""
    from medtrinity_assets.export.splits import group_splits, settle, with_groups

    n = 300
    df = pl.DataFrame({"group_id": [f"patient:{i % 40}" if i % 3 else None for i in range(n)],
                       "image_sha256": [f"{i:04x}" for i in range(n)], "split": [None] * n},
                      schema={"group_id": pl.String, "image_sha256": pl.String, "split": pl.String})
    declared = pl.Series(["validation" if i % 17 == 0 else "test" if i % 29 == 0 else "train" for i in range(n)])
    whole = assign_splits(df, declared)
    shards = [with_groups(df[a:b], declared[a:b]) for a, b in ((0, 120), (120, 250), (250, n))]
    splits = group_splits(pl.concat([s.select("group_id", "_declared") for s in shards]))
    assert pl.concat([settle(s, splits, df.columns) for s in shards]).equals(whole)
    assert not pl.concat([assign_splits(df[a:b], declared[a:b]) for a, b in ((0, 120), (120, 250), (250, n))]).equals(whole)


def test_duplicates_across_sources_are_dropped_with_provenance(tmp_path):
    a = [_image(i) for i in range(4)]
    copy = np.asarray(Image.fromarray(a[1]).resize((60, 60)).resize((64, 64)))  # a near copy of a[1]
    _source(tmp_path, "alpha", a)
    _source(tmp_path, "beta", [a[0], copy, _image(50)])  # an exact and a near copy, and a new image
    build = build_dataset(tmp_path, ["alpha", "beta"])
    dropped = build.dropped.sort("record_id")
    assert dropped["record_id"].to_list() == ["beta-0", "beta-1"]
    assert dropped["kept_record_id"].to_list() == ["alpha-0", "alpha-1"]
    assert dropped["reason"][0].startswith("exact_duplicate") and dropped["reason"][1].startswith("near_duplicate")
    assert sorted(build.table["record_id"]) == ["alpha-0", "alpha-1", "alpha-2", "alpha-3", "beta-2"]
    assert (build.root / "dropped.parquet").exists()
    for f in build.table["image_file"]:
        assert (build.root / f).exists()


def test_an_evaluation_image_in_training_is_refused_with_the_record_named(tmp_path):
    images = [_image(i) for i in range(5)]
    _source(tmp_path, "alpha", images, groups=["patient:1"] * 5)
    evals = tmp_path / "vqa_test_images"
    evals.mkdir()
    Image.fromarray(images[3]).resize((128, 128)).convert("RGB").save(evals / "q17.jpg", quality=90)
    Image.fromarray(_image(99)).save(evals / "unrelated.png")
    build = build_dataset(tmp_path, ["alpha"])  # without the evaluation set: fine
    split = build.table["split"][0]
    if split == "test":  # the planted overlap must be in training or validation to leak
        pytest.skip("the patient hashed into test")
    with pytest.raises(LeakageError) as err:
        build_dataset(tmp_path, ["alpha"], eval_sets=[str(evals)])
    assert len(err.value.leaks) == 1 and "alpha/alpha-3" in err.value.leaks[0] and "q17.jpg" in err.value.leaks[0]


def test_one_image_in_two_splits_is_a_leak():
    """The same pixels (or a near copy) under two groups in two splits is named as a leak."""
    from medtrinity_assets.export.dedup import ImageRef
    from medtrinity_assets.export.leakage import split_leaks

    img = _image(7)
    thumb = {"s1": np.full((16, 16), 5, np.uint8), "s2": np.full((16, 16), 5, np.uint8)}
    refs = [(ImageRef("alpha", "alpha-0", "s1", phash(img)), "train"),
            (ImageRef("beta", "beta-0", "s2", phash(img)), "test")]
    [leak] = split_leaks(refs, lambda ref: thumb[ref.sha256])
    assert "beta/beta-0 (test) nearly duplicates alpha/alpha-0 (train" in leak
    same = [(ImageRef("alpha", "alpha-0", "s1", 1), "train"), (ImageRef("beta", "beta-0", "s1", 1), "validation")]
    assert split_leaks(same, lambda ref: thumb[ref.sha256])[0].startswith("beta/beta-0 (validation) has the pixels of")
