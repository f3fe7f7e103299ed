"""Registry sensor: a new or changed source file becomes a partition and a run."""

import json

import dagster as dg

from medtrinity_assets.assets.common import SOURCES
from medtrinity_assets.resources import PipelineStorage


def build_registry_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="source_registry_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a dynamic partition for each new source YAML and requests its run; "
        "a changed declaration requests a rerun.",
    )
    def source_registry_sensor(context: dg.SensorEvaluationContext, storage: PipelineStorage):
        from medtrinity_assets.registry import RegistryError, load_registry

        try:
            specs, errors = load_registry(storage.registry_dir, strict=False)
        except RegistryError as exc:
            return dg.SkipReason(str(exc))
        for err in errors:
            context.log.warning(f"rejected registry file: {err}")
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        existing = set(context.instance.get_dynamic_partitions(SOURCES.name))
        new_parts = [s.name for s in specs if s.name not in existing]
        requests = []
        current = {}
        for spec in specs:
            fp = spec.fingerprint()
            current[spec.name] = fp
            if seen.get(spec.name) != fp:
                requests.append(dg.RunRequest(run_key=f"{spec.name}:{fp}", partition_key=spec.name))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[SOURCES.build_add_request(new_parts)] if new_parts else [],
            cursor=json.dumps(current, sort_keys=True),
            skip_reason=None if requests else "registry unchanged",
        )

    return source_registry_sensor
