"""Automation that runs by itself: declarative conditions carry a source from ingestion through
the shared models to its triplets, a file change re-ingests its source, the refresh schedule runs
the shared models, and nothing starts over an instance that is already built."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from medtrinity_assets.definitions import defs

INGESTED = ["source_manifest", "preprocessed_images", "coarse_captions"]  # per shard
ENRICHED = ["roi_set", "retrieved_knowledge", "caption_batch", "caption_quality"]  # per shard
SUMMARY = ["triplets"]  # per source, over its shards
SHARED = {"expert_models": "v1", "knowledge_corpus": None, "knowledge_index": "k1"}


def _report(instance: dg.DagsterInstance, key: str, partition: str | None = None, version: str | None = None) -> None:
    tags = {"dagster/data_version": version} if version else None
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition, tags=tags))


def _requested(result) -> set[tuple[str, str | None]]:
    keys = {r.key for r in result.results if isinstance(r.key, dg.AssetKey)}
    return {(k.to_user_string(), p) for k in keys for p in result.get_requested_partitions(k)}


class Ticks:
    """Successive evaluations of the code location's automation conditions (one sensor's ticks)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance, self.cursor = instance, None

    def __call__(self) -> set[tuple[str, str | None]]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return _requested(result)


@pytest.fixture
def instance(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as inst:
        inst.add_dynamic_partitions("sources", ["a", "b"])
        inst.add_dynamic_partitions("shards", ["000"])
        yield inst


def _shard(source: str, shard: str = "000") -> str:
    return f"{shard}|{source}"


def _build_all(instance) -> None:
    for src in ("a", "b"):
        for key in INGESTED:
            _report(instance, key, _shard(src))
    for key, version in SHARED.items():
        _report(instance, key, version=version)
    for src in ("a", "b"):
        for key in ENRICHED:
            _report(instance, key, _shard(src))
        _report(instance, "triplets", src)


def test_a_built_instance_starts_nothing(instance):
    _build_all(instance)
    tick = Ticks(instance)
    assert tick() == set()  # the first evaluation over a built instance (the UI just opened)
    assert tick() == set()


def test_a_partly_built_instance_starts_nothing_until_something_changes(instance):
    """An instance built up to ingestion (``medtrinity build --until preprocessed_images``): opening
    the UI over it starts nothing (the stages left out stay out), and a change after that is
    followed as on a built instance."""
    for src in ("a", "b"):
        for key in INGESTED:
            _report(instance, key, _shard(src))
    tick = Ticks(instance)
    assert tick() == set()  # the first evaluation: everything after ingestion is missing, none of it requested
    assert tick() == set()
    for key in INGESTED:  # source a re-ingested (its files changed)
        _report(instance, key, _shard("a"))
    assert ("expert_models", None) in tick()


def test_a_new_source_waits_for_the_shared_models_then_follows(instance):
    _build_all(instance)
    tick = Ticks(instance)
    assert tick() == set()
    instance.add_dynamic_partitions("sources", ["c"])
    assert tick() == set()  # not ingested yet: nothing downstream can run
    for key in INGESTED:  # the registry sensor's ingest run for c
        _report(instance, key, _shard("c"))
    assert tick() == {("expert_models", None)}  # retrained first; c's ROIs wait for it
    _report(instance, "expert_models", version="v1")  # same content: a and b are not redone
    assert tick() == {(k, _shard("c")) for k in ENRICHED}  # c's shard follows, in one run
    for key in ENRICHED:
        _report(instance, key, _shard("c"))
    assert tick() == {("triplets", "c")}  # then its summary over the shards
    _report(instance, "triplets", "c")
    assert tick() == set()


def test_a_source_summary_waits_for_its_last_shard(instance):
    _build_all(instance)
    instance.add_dynamic_partitions("shards", ["001"])
    tick = Ticks(instance)
    assert tick() == set()  # b has no shard 001: that missing key never requests anything
    instance.add_dynamic_partitions("sources", ["c"])
    for shard in ("000", "001"):
        for key in INGESTED:
            _report(instance, key, _shard("c", shard))
    tick()
    _report(instance, "expert_models", version="v1")
    assert tick() == {(k, _shard("c", s)) for k in ENRICHED for s in ("000", "001")}
    for key in ENRICHED:
        _report(instance, key, _shard("c", "000"))
    assert ("triplets", "c") in tick()  # what shard 000 brought; the asset names shard 001 as missing


def test_sources_follow_a_shared_model_only_when_its_content_changed(instance):
    _build_all(instance)
    tick = Ticks(instance)
    tick()
    _report(instance, "knowledge_index", version="k1")  # rebuilt by the schedule, same index
    assert tick() == set()
    _report(instance, "knowledge_index", version="k2")  # new passages
    follow = {(k, _shard(s)) for s in ("a", "b") for k in ENRICHED if k != "roi_set"}
    assert tick() == follow


def test_the_shared_models_rebuild_once_after_a_batch_of_sources(instance):
    _build_all(instance)
    tick = Ticks(instance)
    tick()
    _report(instance, "source_manifest", _shard("a"))
    _report(instance, "preprocessed_images", _shard("a"))
    assert ("expert_models", None) in tick()


def test_a_changed_file_reingests_its_source(tmp_path, dagster_instance, demo_registry):
    from medtrinity_assets.ingest.registry import load_registry
    from medtrinity_assets.ingest.watch import source_fingerprint
    from medtrinity_assets_tests.test_definitions import _registry_copy

    reg = _registry_copy(tmp_path, demo_registry, ["microscopy_cells"], prefix="watch_")
    text = (reg / "microscopy_cells.yaml").read_text()
    root = tmp_path / "cells"
    import shutil

    shutil.copytree(demo_registry.parent / "demo" / "microscopy_cells", root)
    (reg / "microscopy_cells.yaml").write_text(
        "\n".join(f"root: {root}" if line.startswith("root:") else line for line in text.splitlines()) + "\n"
    )
    spec = load_registry(reg)[0][0]
    before = source_fingerprint(spec)
    assert source_fingerprint(spec) == before  # stable while nothing changes
    some = next(p for p in sorted(root.rglob("*")) if p.is_file())
    os.utime(some, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert source_fingerprint(spec) != before
    (root / "extra.png").write_bytes(some.read_bytes())
    after_add = source_fingerprint(spec)
    (root / ".DS_Store").write_bytes(b"x")  # hidden files are ignored
    assert source_fingerprint(spec) == after_add
    watch_off = spec.model_copy(update={"watch_files": False})
    assert source_fingerprint(watch_off) == watch_off.fingerprint() != spec.fingerprint()

    from medtrinity_assets.defs.resources import SourceRegistry
    from medtrinity_assets.defs.sensors import recorded_fingerprints

    sensor = defs.resolve_sensor_def("source_registry_sensor")
    resources = {"registry": SourceRegistry(registry_dir=str(reg))}
    first = sensor(dg.build_sensor_context(instance=dagster_instance, resources=resources))
    assert [(r.job_name, r.partition_key) for r in first.run_requests] == [("ingest_job", "000|watch_microscopy_cells")]
    # the ingestion records what it read; the next tick requests nothing
    fp = first.run_requests[0].tags["medtrinity/fingerprint"]
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization(
        "source_manifest", partition="000|watch_microscopy_cells", metadata={"source_fingerprint": fp}))
    assert recorded_fingerprints(dagster_instance)["watch_microscopy_cells"] == fp
    assert not sensor(dg.build_sensor_context(instance=dagster_instance, resources=resources)).run_requests
    (root / "new_image.png").write_bytes(some.read_bytes())  # a file arrives
    again = sensor(dg.build_sensor_context(instance=dagster_instance, resources=resources))
    assert [(r.job_name, r.partition_key) for r in again.run_requests] == [("ingest_job", "000|watch_microscopy_cells")]
    assert again.run_requests[0].tags["medtrinity/fingerprint"] != fp


def test_the_files_fingerprint_streams_in_the_order_of_sorted_paths(tmp_path):
    """Folder by folder (no list of the whole source) and still the digest of every file's path, size
    and mtime in sorted order: names sorting around a folder's, hidden entries and folder links left out."""
    import hashlib

    from medtrinity_assets.ingest.registry import SourceSpec
    from medtrinity_assets.ingest.watch import files_fingerprint

    root = tmp_path / "src"
    for rel in ["c.png", "c-1.png", "c0.png", "c/a.png", "c/b/d.png", "c!.png", "z/y.png", "a/.hidden", ".x/e.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "linked").symlink_to(root / "c", target_is_directory=True)
    expected = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(folder) / name
                st = path.stat()
                expected.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    text = "".join(f"{rel}\0{size}\0{mtime}\n" for rel, size, mtime in sorted(expected))
    spec = SourceSpec(name="fp", layout="image_folder", root=str(root), modality="CT", organ="head", license="test")
    assert len(expected) == 7 and files_fingerprint(spec) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_schedule_rebuilds_the_shared_models_on_a_configurable_cadence(monkeypatch):
    from medtrinity_assets.defs.schedules import build_schedules

    (schedule,) = defs.schedules
    assert schedule.name == "shared_models_refresh" and schedule.cron_schedule == "0 3 * * 0"
    job = defs.resolve_job_def(schedule.job_name)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= {"expert_models", "knowledge_index"}
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("MEDTRINITY_REFRESH_CRON", "30 1 * * *")
    assert build_schedules("shared_models_job")[0].cron_schedule == "30 1 * * *"
    monkeypatch.setenv("MEDTRINITY_REFRESH_CRON", "off")
    assert build_schedules("shared_models_job")[0].default_status == dg.DefaultScheduleStatus.STOPPED


def test_sensors_are_on_by_default():
    statuses = {s.name: s.default_status for s in defs.sensors}
    assert statuses == {"source_registry_sensor": dg.DefaultSensorStatus.RUNNING,
                        "medtrinity_automation": dg.DefaultSensorStatus.RUNNING}
    assert Path  # noqa: B018 (imported for fixtures' paths)


def test_one_backfill_launch_covers_every_source_and_the_shared_models(tmp_path, demo_registry, monkeypatch):
    """`medtrinity backfill` queues one asset backfill: every source's ingestion and enrichment, the
    shared models once; while it runs the registry sensor leaves ingestion to it."""
    from dagster._core.execution.backfill import BulkActionStatus

    from medtrinity_assets.cli import main
    from medtrinity_assets.defs.resources import SourceRegistry
    from medtrinity_assets_tests.test_definitions import _registry_copy

    reg = _registry_copy(tmp_path, demo_registry, ["microscopy_cells", "xray_tibia"], prefix="bf_")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["backfill", "--sources", str(reg), "--out", str(tmp_path / "out"), "--until", "triplets"]) == 0
    with dg.DagsterInstance.get() as instance:
        (backfill,) = instance.get_backfills(status=BulkActionStatus.REQUESTED)
        target = backfill.asset_backfill_data.target_subset
        per_source = {k.to_user_string(): set(v.get_partition_keys()) for k, v in target.partitions_subsets_by_asset_key.items()}
        sources = {"bf_microscopy_cells", "bf_xray_tibia"}
        shards = {f"000|{s}" for s in sources}
        assert per_source == {**{k: shards for k in [*INGESTED, *ENRICHED]}, **{k: sources for k in SUMMARY}}
        assert {k.to_user_string() for k in target.non_partitioned_asset_keys} == set(SHARED)
        sensor = defs.resolve_sensor_def("source_registry_sensor")
        tick = sensor(dg.build_sensor_context(instance=instance, resources={"registry": SourceRegistry(registry_dir=str(reg))}))
        assert isinstance(tick, dg.SkipReason) and "backfill" in tick.skip_message


@pytest.mark.integration
def test_a_real_daemon_runs_the_backfill_of_every_source(tmp_path, demo_registry):
    """`medtrinity backfill`, then a `dagster-daemon` over the repository's workspace as `dagster dev`
    starts it: the backfill completes, one run per shard, every source's ingestion is materialized,
    and the sensors start no ingestion of their own (the registry sensor skips while it is in
    progress; the automation may follow with the expert models, and then with what reads them, once
    every source's ingestion is materialized, as designed: it may add a backfill of its own)."""
    import subprocess
    import sys

    from dagster._core.execution.backfill import BulkActionStatus

    from medtrinity_assets_tests.conftest import REPO_ROOT, running_daemon
    from medtrinity_assets_tests.test_definitions import _registry_copy

    names = ["microscopy_cells", "xray_tibia"]
    reg = _registry_copy(tmp_path, demo_registry, names, prefix="daemon_")
    home = tmp_path / "home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TMPDIR": str(tmp_path)}
    queue = [sys.executable, "-m", "medtrinity_assets.cli", "backfill", "--sources", str(reg),
             "--out", str(tmp_path / "out"), "--until", INGESTED[-1]]
    subprocess.run(queue, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (queued,) = instance.get_backfills()  # the automation may add one of its own later
    log = tmp_path / "daemon.log"
    with running_daemon(REPO_ROOT / "workspace.yaml", log, DAGSTER_HOME=str(home)):
        deadline = time.monotonic() + 300
        while True:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                backfill = instance.get_backfill(queued.backfill_id)
                records = instance.get_run_records()
                ours = [r for r in records if r.dagster_run.tags.get("dagster/backfill") == backfill.backfill_id]
                if backfill.status != BulkActionStatus.REQUESTED and all(r.dagster_run.is_finished for r in ours):
                    materialized = instance.get_materialized_partitions(dg.AssetKey(INGESTED[-1]))
                    ingestions = instance.fetch_materializations(dg.AssetKey(INGESTED[1]), limit=100).records
                    break
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, log.read_text()[-4000:]
    shards = {f"000|daemon_{n}" for n in names}
    runs = [r.dagster_run for r in ours]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert {r.tags.get("dagster/partition") for r in runs} == shards and len(runs) == len(shards)
    assert {r.asset_materialization.partition for r in ingestions} == shards
    ingested = max(r.timestamp for r in ingestions)
    for other in (r for r in records if r not in ours):  # the automation's follow-up, never a sensor's
        assert other.dagster_run.tags.get("dagster/auto_materialize") == "true", other.dagster_run.tags
        assert other.create_timestamp.timestamp() >= ingested, log.read_text()[-4000:]
        assert dg.AssetKey(INGESTED[0]) not in (other.dagster_run.asset_selection or set())
    assert materialized == shards
