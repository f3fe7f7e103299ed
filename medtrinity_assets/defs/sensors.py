"""The registry sensor: a new or changed source (its declaration or its files) is ingested.

On each tick it compares every declared source with the instance, not only with its cursor: a
source needs ingestion when its fingerprint (declaration and, for a local root, its files' paths,
sizes and times: ``ingest/watch.py``) differs from the one recorded on its latest
``source_manifest`` materialization (of its shard 0), or it has none. It then requests ``ingest_job``
for each shard of that source (its inputs listed, not read, to count them); the rest of the graph follows by declarative automation (``automation.py``: shared models
rebuild once the sources settle, each source's ROIs, retrieval, descriptions and triplets follow).
Sources already built (``medtrinity build``, an earlier tick) request nothing, so opening the UI
over a built instance starts no work. A failed run is not retried by the sensor (runs carry the
fingerprint they ingested, so an attempt with the same declaration and files is known): fix the
cause and change the declaration or the files, or launch the job from the UI.
"""


from collections.abc import Callable

import dagster as dg
from dagster._core.events import DagsterEventType

from medtrinity_assets.core.parts import shard_key
from medtrinity_assets.core.tables import SOURCE_MANIFEST
from medtrinity_assets.defs.ingest import SOURCE_FINGERPRINT
from medtrinity_assets.defs.partitions import (
    SHARDS,
    SOURCES,
    shard_keys_needed,
    shard_partition,
    source_and_shard,
)
from medtrinity_assets.defs.resources import SourceRegistry

SENSOR_NAME = "source_registry_sensor"
INGEST_JOB = "ingest_job"
SOURCE_TAG = "medtrinity/source"
FINGERPRINT_TAG = "medtrinity/fingerprint"  # the declaration and files a run ingested


def recorded_fingerprints(instance: dg.DagsterInstance) -> dict[str, str]:
    """Source -> the fingerprint its latest ``source_manifest`` materialization recorded."""
    key = dg.AssetKey(SOURCE_MANIFEST.name)
    ids = dict(instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION))
    if not ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
    ).records
    out = {}
    for r in records:
        meta = r.asset_materialization.metadata if r.asset_materialization else {}
        fp = meta.get(SOURCE_FINGERPRINT) or meta.get("registry_fingerprint")  # older instances
        if r.partition_key and fp is not None:
            source, shard = source_and_shard(r.partition_key)
            if shard == 0:  # shard 0 is ingested first and plans the source's shards
                out[source] = str(getattr(fp, "value", fp))
    return out


def attempted(instance: dg.DagsterInstance, declared: dict[str, str]) -> set[tuple[str, str]]:
    """(source, fingerprint) pairs an ingest run was launched for (by the CLI or this sensor), any outcome."""
    if not declared:
        return set()
    runs = instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB, tags={FINGERPRINT_TAG: sorted(set(declared.values()))}))
    return {(r.tags.get(SOURCE_TAG, ""), r.tags.get(FINGERPRINT_TAG, "")) for r in runs}


def backfill_in_progress(instance: dg.DagsterInstance) -> bool:
    """A ``medtrinity backfill`` (all sources) is still running: it, not this sensor, ingests them."""
    from dagster._core.execution.backfill import BulkActionStatus

    from medtrinity_assets.defs.backfill import BACKFILL_TAG

    return any(b.tags.get(BACKFILL_TAG) for b in instance.get_backfills(status=BulkActionStatus.REQUESTED))


def ingest_requests(
    declared: dict[str, str], recorded: dict[str, str], tried: set[tuple[str, str]],
    shards: Callable[[str], int] = lambda name: 1,
) -> list[dg.RunRequest]:
    """One ``ingest_job`` request per shard of each source whose fingerprint is new (not built, not
    attempted); ``shards(name)`` says how many shards the source has now."""
    return [
        dg.RunRequest(
            run_key=f"ingest:{name}:{shard_key(shard)}:{fp}",
            job_name=INGEST_JOB,
            partition_key=shard_partition(name, shard),
            tags={SOURCE_TAG: name, FINGERPRINT_TAG: fp},
        )
        for name, fp in sorted(declared.items())
        if recorded.get(name) != fp and (name, fp) not in tried
        for shard in range(shards(name))
    ]


def build_registry_sensor(jobs: list) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds a partition for each new source declaration and ingests a new or changed source "
        "(declaration or files); the rest follows by declarative automation. Built sources request nothing.",
    )
    def source_registry_sensor(context: dg.SensorEvaluationContext, registry: SourceRegistry):
        from medtrinity_assets.ingest import count_shards
        from medtrinity_assets.ingest.registry import RegistryError
        from medtrinity_assets.ingest.watch import source_fingerprint

        try:
            specs = registry.sources()
        except RegistryError as exc:
            return dg.SkipReason(str(exc))
        for err in registry.errors():
            context.log.warning(f"rejected registry file: {err}")
        if backfill_in_progress(context.instance):
            return dg.SkipReason("a backfill of every source is in progress: it ingests them")
        existing = set(context.instance.get_dynamic_partitions(SOURCES.name))
        new_parts = [s.name for s in specs if s.name not in existing]
        declared = {s.name: source_fingerprint(s) for s in specs}
        by_name = {s.name: s for s in specs}
        counts: dict[str, int] = {}

        def shards(name: str) -> int:  # listed only for the sources that need ingestion
            counts[name] = count_shards(by_name[name])
            return counts[name]

        requests = ingest_requests(declared, recorded_fingerprints(context.instance),
                                   attempted(context.instance, declared), shards)
        new_shards = shard_keys_needed(counts, set(context.instance.get_dynamic_partitions(SHARDS.name)))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                *([SOURCES.build_add_request(new_parts)] if new_parts else []),
                *([SHARDS.build_add_request(new_shards)] if new_shards else []),
            ],
            skip_reason=None if requests else "every declared source is built and current",
        )

    return source_registry_sensor
