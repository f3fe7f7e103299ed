"""The registry sensor: a new or changed source declaration runs that source through the plan.

On each tick it compares every declaration with the instance, not only with its cursor: a
source needs work when its fingerprint differs from the one recorded on its latest
``source_manifest`` materialization (or it has none). Such a source goes through the plan's
phases in order, one run each: ``ingest_job`` for it, then ``shared_models_job`` when a shared
asset is older than the per-source data it reads (or missing), then ``enrichment_job`` for it.
Sources already built (``medtrinity build``, an earlier tick) request nothing, so opening the UI
over a built instance starts no work. A failed run is not retried by the sensor (runs carry the
fingerprint they ingested, so an attempt with the same declaration is known): fix the cause and
change the declaration, or launch the job from the UI.
"""


import json
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.events import DagsterEventType

from medtrinity_assets.core.tables import SOURCE_MANIFEST
from medtrinity_assets.defs.partitions import SOURCES
from medtrinity_assets.defs.plan import RunPlan
from medtrinity_assets.defs.resources import SourceRegistry

SENSOR_NAME = "source_registry_sensor"
SOURCE_TAG = "medtrinity/source"
PHASE_TAG = "medtrinity/phase"
FINGERPRINT_TAG = "medtrinity/fingerprint"  # the declaration a run ingested
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass
class InstanceState:
    """What the instance says about each source and each shared asset."""

    fingerprints: dict[str, str] = field(default_factory=dict)  # source -> fingerprint of its last ingest
    ingest_ids: dict[str, int] = field(default_factory=dict)  # source -> storage id of that ingest
    attempted: set[tuple[str, str]] = field(default_factory=set)  # (source, fingerprint) ingest runs, any outcome
    stale_shared: list[dg.AssetKey] = field(default_factory=list)  # missing or older than their inputs
    in_flight: bool = False


def _latest_ids(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, int]:
    return dict(instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION))


def _fingerprints(instance: dg.DagsterInstance, key: dg.AssetKey, ids: dict[str, int]) -> dict[str, str]:
    if not ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
    ).records
    out = {}
    for r in records:
        fp = r.asset_materialization.metadata.get("registry_fingerprint") if r.asset_materialization else None
        if r.partition_key and fp is not None:
            out[r.partition_key] = str(getattr(fp, "value", fp))
    return out


def _stale_shared(instance: dg.DagsterInstance, plan: RunPlan) -> list[dg.AssetKey]:
    if not plan.has("shared_models"):
        return []
    stale = []
    for key in plan.phase("shared_models").keys:
        records = instance.fetch_materializations(key, limit=1).records
        own = records[0].storage_id if records else None
        upstream = [max(_latest_ids(instance, k).values(), default=0) for k in plan.per_source_upstream(key)]
        if own is None or max(upstream, default=0) > own:
            stale.append(key)
    return stale


def _attempted(instance: dg.DagsterInstance, declared: dict[str, str]) -> set[tuple[str, str]]:
    """(source, fingerprint) pairs an ingest run was launched for (by the CLI or this sensor)."""
    if not declared:
        return set()
    runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job", tags={FINGERPRINT_TAG: sorted(set(declared.values()))}))
    return {(r.tags.get(SOURCE_TAG, ""), r.tags.get(FINGERPRINT_TAG, "")) for r in runs}


def read_state(instance: dg.DagsterInstance, plan: RunPlan, declared: dict[str, str]) -> InstanceState:
    key = dg.AssetKey(SOURCE_MANIFEST.name)
    ids = _latest_ids(instance, key)
    in_flight = instance.get_runs_count(
        dg.RunsFilter(statuses=IN_FLIGHT, tags={PHASE_TAG: [p.name for p in plan.phases]})
    )
    return InstanceState(
        _fingerprints(instance, key, ids),
        ids,
        _attempted(instance, declared),
        _stale_shared(instance, plan),
        in_flight > 0,
    )


def next_requests(
    plan: RunPlan, declared: dict[str, str], state: InstanceState, pending: dict[str, str]
) -> tuple[list[dg.RunRequest], dict[str, str]]:
    """Run requests for one tick and the sources still waiting for a later phase.

    ``declared``: source -> fingerprint of its declaration now; ``pending``: sources this sensor
    has sent into the plan (source -> the fingerprint it ingests) and not yet enriched.
    """
    pending = {n: fp for n, fp in pending.items() if declared.get(n) == fp}
    requests = []
    for name, fp in declared.items():
        attempted = (name, fp) in state.attempted
        if state.fingerprints.get(name) != fp and pending.get(name) != fp and not attempted:
            tags = {SOURCE_TAG: name, FINGERPRINT_TAG: fp}
            requests.append(
                dg.RunRequest(run_key=f"ingest:{name}:{fp}", job_name="ingest_job", partition_key=name, tags=tags)
            )
            pending[name] = fp
    if requests or state.in_flight:
        return requests, pending
    done = sorted(n for n, fp in pending.items() if state.fingerprints.get(n) == fp)
    if not done:
        return [], pending
    if state.stale_shared:
        newest = max(state.ingest_ids.values(), default=0)
        return [
            dg.RunRequest(run_key=f"shared:{newest}", job_name="shared_models_job", asset_selection=state.stale_shared)
        ], pending
    if not plan.has("enrichment"):
        return [], {}
    for name in done:
        requests.append(
            dg.RunRequest(
                run_key=f"enrich:{name}:{state.ingest_ids[name]}",
                job_name="enrichment_job",
                partition_key=name,
                tags={SOURCE_TAG: name},
            )
        )
        pending.pop(name)
    return requests, pending


def build_registry_sensor(plan: RunPlan, jobs: list) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a partition for each new source declaration and runs a new or changed source "
        "through the plan (ingest, shared models when stale, enrichment); built sources request nothing.",
    )
    def source_registry_sensor(context: dg.SensorEvaluationContext, registry: SourceRegistry):
        from medtrinity_assets.ingest.registry import RegistryError

        try:
            specs = registry.sources()
        except RegistryError as exc:
            return dg.SkipReason(str(exc))
        for err in registry.errors():
            context.log.warning(f"rejected registry file: {err}")
        existing = set(context.instance.get_dynamic_partitions(SOURCES.name))
        new_parts = [s.name for s in specs if s.name not in existing]
        declared = {s.name: s.fingerprint() for s in specs}
        state = read_state(context.instance, plan, declared)
        pending = json.loads(context.cursor) if context.cursor else {}
        requests, pending = next_requests(plan, declared, state, pending)
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[SOURCES.build_add_request(new_parts)] if new_parts else [],
            cursor=json.dumps(pending, sort_keys=True),
            skip_reason=None if requests else "every declared source is built and current",
        )

    return source_registry_sensor
