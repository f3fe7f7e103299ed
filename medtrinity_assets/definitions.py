"""The ``medtrinity_assets`` code location."""

from __future__ import annotations

import dagster as dg

from medtrinity_assets.assets import ingest
from medtrinity_assets.assets.common import SOURCES
from medtrinity_assets.resources import default_resources
from medtrinity_assets.sensors import build_registry_sensor

ASSET_MODULES = [ingest]


def build_definitions() -> dg.Definitions:
    assets = dg.load_assets_from_modules(ASSET_MODULES)
    checks = dg.load_asset_checks_from_modules(ASSET_MODULES)
    per_source = dg.AssetSelection.assets(
        *[a for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def == SOURCES]
    )
    source_job = dg.define_asset_job(
        "source_pipeline_job",
        selection=per_source,
        partitions_def=SOURCES,
        description="Every per-source asset of one source partition, in lineage order.",
    )
    jobs = [source_job]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=[build_registry_sensor(source_job)],
        resources=default_resources(),
    )


defs = build_definitions()
