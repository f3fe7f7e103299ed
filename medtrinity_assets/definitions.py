"""The ``medtrinity_assets`` code location."""

from __future__ import annotations

import dagster as dg

from medtrinity_assets.assets import captions, ingest, knowledge, rois
from medtrinity_assets.assets.common import SOURCES
from medtrinity_assets.resources import default_resources
from medtrinity_assets.sensors import build_registry_sensor

ASSET_MODULES = [ingest, rois, knowledge, captions]


def build_definitions() -> dg.Definitions:
    assets = dg.load_assets_from_modules(ASSET_MODULES)
    checks = dg.load_asset_checks_from_modules(ASSET_MODULES)
    per_source = [a for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def == SOURCES]
    global_assets = [a for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def is None]
    source_job = dg.define_asset_job(
        "source_pipeline_job",
        selection=dg.AssetSelection.assets(*per_source),
        partitions_def=SOURCES,
        description="Every per-source asset of one source partition, in lineage order.",
    )
    knowledge_job = dg.define_asset_job(
        "knowledge_job",
        selection=dg.AssetSelection.assets(knowledge.knowledge_corpus, knowledge.knowledge_index),
        description="Re-ingest the corpora and rebuild the knowledge index (incremental embeddings).",
    )
    global_job = dg.define_asset_job(
        "global_assets_job",
        selection=dg.AssetSelection.assets(*global_assets),
        description="Knowledge base, index and expert grounding models (all sources).",
    )
    knowledge_schedule = dg.ScheduleDefinition(
        name="weekly_knowledge_refresh",
        job=knowledge_job,
        cron_schedule="0 3 * * 0",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Pick up changes in the configured corpora every week (only new chunks are embedded).",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[source_job, knowledge_job, global_job],
        schedules=[knowledge_schedule],
        sensors=[build_registry_sensor(source_job)],
        resources=default_resources(),
    )


defs = build_definitions()
