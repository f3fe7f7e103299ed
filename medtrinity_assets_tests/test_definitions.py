"""The code location loads, its asset graph matches the snapshot, and the sensor registers sources."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_specs.json"


def _partitions_name(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return " x ".join(d.partitions_def.name for d in partitions_def.partitions_defs)
    return partitions_def.name if partitions_def is not None else None


def spec_snapshot(defs: dg.Definitions) -> dict:
    out = {}
    for a in defs.assets or []:
        if not isinstance(a, dg.AssetsDefinition):
            continue
        for spec in a.specs:
            out[spec.key.to_user_string()] = {
                "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
                "group": spec.group_name,
                "kinds": sorted(spec.kinds),
                "partitioned": _partitions_name(spec.partitions_def),
                # the pool depends on the host (see defs/accelerators.py); the GPU tag does not
                "gpu": bool(a.is_executable and a.op.tags.get("medtrinity/accelerator") == "gpu"),
            }
    for c in defs.asset_checks or []:
        for key in c.check_keys:
            out[f"check:{key.asset_key.to_user_string()}:{key.name}"] = {
                "blocking": c.get_spec_for_check_key(key).blocking
            }
    return dict(sorted(out.items()))


def test_asset_specs_match_snapshot():
    from medtrinity_assets.definitions import defs

    snap = spec_snapshot(defs)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no snapshot: run the tests once with UPDATE_SNAPSHOTS=1 and commit it"
    assert snap == json.loads(SNAPSHOT.read_text()), "asset graph changed: rerun with UPDATE_SNAPSHOTS=1"


def test_definitions_validate():
    from medtrinity_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    for job in ("ingest_job", "shared_models_job", "enrichment_job", "summary_job", "knowledge_job"):
        assert defs.resolve_job_def(job) is not None
    assert defs.resolve_sensor_def("source_registry_sensor") is not None


def _registry_copy(tmp_path: Path, demo_registry: Path, names: list[str], prefix: str = "sensor_") -> Path:
    reg = tmp_path / "registry"
    reg.mkdir(exist_ok=True)
    for name in names:
        text = (demo_registry / f"{name}.yaml").read_text().replace("root: ../demo/", f"root: {demo_registry.parent}/demo/")
        (reg / f"{name}.yaml").write_text(text.replace(f"name: {name}", f"name: {prefix}{name}"))
    return reg


def test_registry_sensor_adds_partitions_and_requests_ingest_runs(tmp_path, dagster_instance, demo_registry):
    from medtrinity_assets.definitions import defs
    from medtrinity_assets.defs.resources import SourceRegistry

    reg = _registry_copy(tmp_path, demo_registry, ["xray_tibia", "fundus_retina"])
    (reg / "broken.yaml").write_text("name: Bad Name\n")
    sensor = defs.resolve_sensor_def("source_registry_sensor")
    resources = {"registry": SourceRegistry(registry_dir=str(reg))}

    result = sensor(dg.build_sensor_context(instance=dagster_instance, resources=resources))
    assert sorted((r.job_name, r.partition_key) for r in result.run_requests) == [
        ("ingest_job", "000|sensor_fundus_retina"),  # one shard each (shard|source)
        ("ingest_job", "000|sensor_xray_tibia"),
    ]
    adds = {a.partitions_def_name: sorted(a.partition_keys) for a in result.dynamic_partitions_requests}
    assert adds["sources"] == ["sensor_fundus_retina", "sensor_xray_tibia"]
    assert adds.get("shards", ["000"]) == ["000"]  # unless an earlier test added it

    for name, keys in adds.items():
        dagster_instance.add_dynamic_partitions(name, keys)
    again = sensor(dg.build_sensor_context(instance=dagster_instance, resources=resources))
    assert not again.dynamic_partitions_requests
    # not yet run: the same run keys again, which Dagster's sensor daemon launches only once
    assert {r.run_key for r in again.run_requests} == {r.run_key for r in result.run_requests}

    (reg / "xray_tibia.yaml").write_text((reg / "xray_tibia.yaml").read_text().replace("organ: tibia", "organ: leg"))
    changed = sensor(dg.build_sensor_context(instance=dagster_instance, resources=resources))
    new_keys = {r.run_key for r in changed.run_requests} - {r.run_key for r in result.run_requests}
    assert len(new_keys) == 1 and next(iter(new_keys)).startswith("ingest:sensor_xray_tibia:")


def test_registry_sensor_requests_only_new_fingerprints():
    """Built (recorded) and already attempted fingerprints request nothing; a new one requests ingestion."""
    from medtrinity_assets.defs.sensors import ingest_requests

    declared = {"a": "fp1", "b": "fp2", "c": "fp3"}
    reqs = ingest_requests(declared, recorded={"b": "fp2", "c": "old"}, tried={("c", "fp3")})
    assert [(r.job_name, r.partition_key, r.tags["medtrinity/fingerprint"]) for r in reqs] == [("ingest_job", "000|a", "fp1")]
    assert ingest_requests(declared, recorded=declared, tried=set()) == []
    three = ingest_requests(declared, recorded={"b": "fp2", "c": "fp3"}, tried=set(), shards=lambda name: 3)
    assert [r.partition_key for r in three] == ["000|a", "001|a", "002|a"], "one request per shard"
    assert len({r.run_key for r in three}) == 3


@pytest.mark.parametrize("until", ["preprocessed_images"])
def test_cli_plan_orders_phases(until):
    from medtrinity_assets.definitions import defs
    from medtrinity_assets.defs.plan import RunPlan

    phases = RunPlan.from_assets(list(defs.assets), until).phases
    assert phases[0].name == "ingest"
    assert phases[0].key_names() == ["preprocessed_images", "source_manifest"]
    full = RunPlan.from_assets(list(defs.assets)).phases
    assert [p.name for p in full] == ["ingest", "shared_models", "enrichment", "summary", "export", "vqa"]
    assert [p.partitions for p in full] == ["source_shards", None, "source_shards", "sources", None, "vqa_sets"]


def test_cli_resource_overrides(tmp_path):
    from medtrinity_assets.cli import load_overrides
    from medtrinity_assets.defs.resources import (
        OpenAICompatibleCaptionerResource,
        TransformersLocalCaptionerResource,
        default_resources,
        resources_with_overrides,
    )

    example = Path(__file__).parent.parent / "docs" / "examples" / "openai_captioner.yaml"
    cap = resources_with_overrides(default_resources(), load_overrides(str(example)))["captioner"]
    assert isinstance(cap, OpenAICompatibleCaptionerResource) and len(cap.base_urls) == 2
    local = load_overrides(str(example.with_name("local_vlm_captioner.yaml")))
    cap = resources_with_overrides(default_resources(), local)["captioner"]
    assert isinstance(cap, TransformersLocalCaptionerResource) and cap.batch_size == 8 and cap.model_path
    assert "base_urls" not in type(cap).model_fields  # a backend's resource carries only its own fields
    bad = tmp_path / "bad.yaml"
    bad.write_text("captionr: {backend: embedded}\n")
    with pytest.raises(ValueError, match="unknown resource 'captionr'"):
        resources_with_overrides(default_resources(), load_overrides(str(bad)))
    with pytest.raises(ValueError, match="resource 'captioner'"):
        resources_with_overrides(default_resources(), {"captioner": {"backend": "openai_compatible", "nope": 1}})


def test_captioner_resources_and_backends_share_their_names():
    from medtrinity_assets.captioning.backends import BACKENDS
    from medtrinity_assets.defs.resources import CAPTIONER_RESOURCES

    assert set(BACKENDS) == set(CAPTIONER_RESOURCES)


def test_instance_config_is_sqlite_with_gpu_pool_and_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The repository's dagster.yaml gives SQLite storage under the instance home, one step at a
    time per pool, and run retries; it loads without DAGSTER_HOME set (as `dagster dev` from the
    repository root does)."""
    from dagster._core.storage.runs import SqliteRunStorage

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    shutil.copy(Path(__file__).resolve().parent.parent / "dagster.yaml", tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert (tmp_path / "history" / "runs.db").exists()
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure  # crashes only; assets retry themselves
        assert instance.run_monitoring_enabled  # a run whose worker never starts is failed, then retried
    finally:
        instance.dispose()
