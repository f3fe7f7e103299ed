"""The code location loads, its asset graph matches the snapshot, and the sensor registers sources."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_specs.json"


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
                "partitioned": spec.partitions_def.name if spec.partitions_def is not None else None,
                "pool": a.op.pool if a.is_executable else None,
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
    assert defs.resolve_job_def("source_pipeline_job") is not None
    assert defs.resolve_sensor_def("source_registry_sensor") is not None


def test_registry_sensor_adds_partitions_and_requests_runs(tmp_path, dagster_instance, demo_registry):
    from medtrinity_assets.definitions import defs
    from medtrinity_assets.resources import PipelineStorage

    reg = tmp_path / "registry"
    reg.mkdir()
    for name in ("xray_tibia", "fundus_retina"):
        text = (
            (demo_registry / f"{name}.yaml")
            .read_text()
            .replace("root: ../demo/", f"root: {demo_registry.parent}/demo/")
        )
        (reg / f"{name}.yaml").write_text(text.replace(f"name: {name}", f"name: sensor_{name}"))
    (reg / "broken.yaml").write_text("name: Bad Name\n")
    sensor = defs.resolve_sensor_def("source_registry_sensor")
    storage = PipelineStorage(out_dir=str(tmp_path / "out"), registry_dir=str(reg))

    ctx = dg.build_sensor_context(instance=dagster_instance, resources={"storage": storage})
    result = sensor(ctx)
    assert sorted(r.partition_key for r in result.run_requests) == [
        "sensor_fundus_retina",
        "sensor_xray_tibia",
    ]
    (add,) = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == ["sensor_fundus_retina", "sensor_xray_tibia"]

    dagster_instance.add_dynamic_partitions("sources", list(add.partition_keys))
    ctx2 = dg.build_sensor_context(
        instance=dagster_instance, cursor=result.cursor, resources={"storage": storage}
    )
    again = sensor(ctx2)
    assert not again.run_requests and not again.dynamic_partitions_requests

    shutil.copy(reg / "xray_tibia.yaml", reg / "xray_tibia.yaml.bak")
    (reg / "xray_tibia.yaml").write_text(
        (reg / "xray_tibia.yaml").read_text().replace("organ: tibia", "organ: leg")
    )
    ctx3 = dg.build_sensor_context(
        instance=dagster_instance, cursor=again.cursor, resources={"storage": storage}
    )
    changed = sensor(ctx3)
    assert [r.partition_key for r in changed.run_requests] == ["sensor_xray_tibia"]


@pytest.mark.parametrize("until", ["preprocessed_images"])
def test_cli_plan_orders_phases(until):
    from medtrinity_assets.cli import plan_phases
    from medtrinity_assets.definitions import defs

    phases = plan_phases(list(defs.assets), until)
    assert phases[0][0] == "per_source"
    assert [k.to_user_string() for k in phases[0][1]] == ["preprocessed_images", "source_manifest"]
    full = plan_phases(list(defs.assets), None)
    kinds = [k for k, _ in full]
    assert kinds[0] == "per_source"


def test_cli_resource_overrides(tmp_path):
    from medtrinity_assets.cli import load_resource_overrides
    from medtrinity_assets.resources import CaptionerResource

    example = Path(__file__).parent.parent / "docs" / "examples" / "openai_captioner.yaml"
    cfg = load_resource_overrides(str(example))
    cap = CaptionerResource(**cfg["captioner"])
    assert cap.backend == "openai_compatible" and len(cap.base_urls) == 2
    local = load_resource_overrides(str(example.with_name("local_vlm_captioner.yaml")))
    cap = CaptionerResource(**local["captioner"])
    assert cap.backend == "transformers_local" and cap.batch_size == 8 and cap.model_path
    bad = tmp_path / "bad.yaml"
    bad.write_text("captionr: {backend: embedded}\n")
    with pytest.raises(SystemExit, match="unknown resource"):
        load_resource_overrides(str(bad))


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
    finally:
        instance.dispose()
