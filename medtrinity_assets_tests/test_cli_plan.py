"""The run plan: ``--until`` on an asset of a multi-asset that cannot be subset brings its siblings.

``source_manifest`` and ``preprocessed_images`` are written by one op (``can_subset=False``):
``medtrinity build --until source_manifest`` used to select ``source_manifest`` alone and the run
failed.
"""

from __future__ import annotations

import contextlib
import io
import time

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.cli import main
from medtrinity_assets.definitions import build_definitions
from medtrinity_assets.defs.partitions import SOURCE_SHARDS
from medtrinity_assets.defs.plan import RunPlan


def plan_phases(assets, until):
    return RunPlan.from_assets(assets, until).phases


def _names(phases) -> list[tuple[str, list[str]]]:
    return [(p.name, p.key_names()) for p in phases]


@pytest.fixture(scope="module")
def assets() -> list:
    return list(build_definitions().assets or [])


def test_ingest_is_one_multi_asset_that_cannot_be_subset(assets):
    (ingest,) = [a for a in assets if dg.AssetKey("source_manifest") in a.keys]
    assert set(ingest.keys) == {dg.AssetKey("source_manifest"), dg.AssetKey("preprocessed_images")}
    assert not ingest.can_subset


@pytest.mark.parametrize("until", ["source_manifest", "preprocessed_images"])
def test_until_an_ingest_asset_plans_the_whole_multi_asset(assets, until):
    assert _names(plan_phases(assets, until)) == [("ingest", ["preprocessed_images", "source_manifest"])]


def test_until_downstream_and_full_plan_unchanged(assets):
    assert _names(plan_phases(assets, "roi_set")) == [
        ("ingest", ["preprocessed_images", "source_manifest"]),
        ("shared_models", ["expert_models"]),
        ("enrichment", ["roi_set"]),
    ]
    full = plan_phases(assets, None)
    planned = [k for p in full for k in p.keys]
    assert sorted(planned) == sorted(k for a in assets for k in a.keys)  # every asset exactly once
    ingest = {dg.AssetKey("source_manifest"), dg.AssetKey("preprocessed_images")}
    assert [p.name for p in full if ingest & set(p.keys)] == ["ingest"]
    assert ingest <= set(full[0].keys)
    assert [p.job_name for p in full] == ["ingest_job", "shared_models_job", "enrichment_job", "summary_job",
                                          "export_job", "vqa_job"]


def test_unknown_asset_is_reported(assets):
    with pytest.raises(ValueError, match="unknown asset 'nope'"):
        plan_phases(assets, "nope")


def _toy_graph(can_subset: bool) -> list:
    """``g`` global; multi-asset ``m`` = ``a`` (per shard, no deps) + ``b`` (needs ``g``)."""

    @dg.asset
    def g() -> None: ...

    @dg.multi_asset(
        specs=[
            dg.AssetSpec("a", partitions_def=SOURCE_SHARDS),
            dg.AssetSpec("b", partitions_def=SOURCE_SHARDS, deps=[g]),
        ],
        partitions_def=SOURCE_SHARDS,
        can_subset=can_subset,
    )
    def m(context):
        yield from ()

    @dg.asset(partitions_def=SOURCE_SHARDS, deps=["a"])
    def c() -> None: ...

    return [g, m, c]


def test_siblings_are_planned_in_one_phase_with_their_upstream():
    # --until a: b comes along, and b needs the global g: the whole multi-asset runs after g
    assert _names(plan_phases(_toy_graph(can_subset=False), "a")) == [
        ("shared_models", ["g"]),
        ("enrichment", ["a", "b"]),
    ]
    assert _names(plan_phases(_toy_graph(can_subset=False), "c")) == [
        ("shared_models", ["g"]),
        ("enrichment", ["a", "b", "c"]),
    ]


def test_subsettable_multi_asset_is_not_widened():
    assert _names(plan_phases(_toy_graph(can_subset=True), "a")) == [("ingest", ["a"])]


def test_build_until_source_manifest_end_to_end(tmp_path, monkeypatch):
    """The real CLI on one tiny image folder: both ingest tables written, nothing downstream."""
    root = tmp_path / "folder" / "images"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)).save(root / f"img{i}.png")
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "tiny.yaml").write_text(
        f"name: tiny\nlayout: image_folder\nroot: {root.parent}\nmodality: X-ray\norgan: chest\n"
        "license: test\nsynthetic: true\n"
    )
    out = tmp_path / "out"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    stderr = io.StringIO()
    started = time.time()
    with contextlib.redirect_stderr(stderr):
        code = main(["build", "--sources", str(reg), "--out", str(out), "--until", "source_manifest"])
    assert code == 0, stderr.getvalue()
    assert time.time() - started < 60
    manifest = pl.read_parquet(out / "source_manifest" / "tiny.parquet")
    images = pl.read_parquet(out / "preprocessed_images" / "tiny.parquet")
    assert manifest.height == 2 and set(manifest["status"]) == {"ok"}
    assert images.height == 2
    produced = {p.name for p in out.iterdir() if p.is_dir()}
    assert not produced & {"roi_set", "coarse_captions", "caption_batch"}
    with dg.DagsterInstance.get() as instance:
        mats = {
            key.to_user_string()
            for key in (dg.AssetKey("source_manifest"), dg.AssetKey("preprocessed_images"))
            if instance.get_latest_materialization_event(key) is not None
        }
    assert mats == {"source_manifest", "preprocessed_images"}
