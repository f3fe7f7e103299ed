"""One launch that backfills every source: a Dagster asset backfill over the plan's per-source and
shared assets, for all registered sources, queued on the instance.

It is the backfill the UI makes from "Materialize" over all partitions: Dagster's backfill daemon
(``dagster dev`` or ``dagster-daemon run``) runs it in dependency order (every source's
ingestion, then the shared models once, then every source's enrichment), shows its progress per
partition in the UI's backfill page, and can be re-executed from failure there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dagster as dg
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from medtrinity_assets.defs.plan import RunPlan

BACKFILL_TAG = "medtrinity/backfill"


def backfill_keys(plan: RunPlan) -> list[dg.AssetKey]:
    """The assets a backfill of every source builds: ingestion, shared models, enrichment."""
    keys: list[dg.AssetKey] = []
    for name in ("ingest", "shared_models", "enrichment"):
        if plan.has(name):
            keys.extend(plan.phase(name).keys)
    return keys


def submit_backfill(
    instance: dg.DagsterInstance, definitions: dg.Definitions, plan: RunPlan, sources: Sequence[str]
) -> PartitionBackfill:
    """Queue one asset backfill of ``sources`` (already added as partitions) on ``instance``."""
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=definitions.resolve_asset_graph(),
        partition_names=list(sources),
        asset_selection=backfill_keys(plan),
        backfill_timestamp=time.time(),
        tags={BACKFILL_TAG: "all_sources"},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"All sources ({len(sources)})",
        description="Every registered source through ingestion, the shared models and enrichment.",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill
