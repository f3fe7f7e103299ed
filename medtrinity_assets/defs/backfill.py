"""One launch that backfills every source: a Dagster asset backfill over the plan's per-source and
shared assets, for all registered sources, queued on the instance.

It is the backfill the UI makes from "Materialize" over all partitions: Dagster's backfill daemon
(``dagster dev`` or ``dagster-daemon run``) runs it in dependency order (every source's
ingestion, then the shared models once, then every source's enrichment), shows its progress per
partition in the UI's backfill page, and can be re-executed from failure there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from medtrinity_assets.defs.partitions import shard_partition
from medtrinity_assets.defs.plan import RunPlan

BACKFILL_TAG = "medtrinity/backfill"


def backfill_keys(plan: RunPlan) -> list[dg.AssetKey]:
    """The assets a backfill of every source builds: ingestion, shared models, enrichment, summaries."""
    keys: list[dg.AssetKey] = []
    for name in ("ingest", "shared_models", "enrichment", "summary"):
        if plan.has(name):
            keys.extend(plan.phase(name).keys)
    return keys


def backfill_partitions(
    plan: RunPlan, shards: Mapping[str, int]
) -> set[AssetKeyPartitionKey]:
    """Every (asset, partition) of the backfill: each shard of each source for per-shard assets,
    each source for per-source ones, one for the shared models."""
    out: set[AssetKeyPartitionKey] = set()
    for name in ("ingest", "shared_models", "enrichment", "summary"):
        if not plan.has(name):
            continue
        phase = plan.phase(name)
        if phase.per_shard:
            keys = [shard_partition(s, k) for s, n in shards.items() for k in range(n)]
        elif phase.per_source:
            keys = list(shards)
        else:
            keys = [None]
        out |= {AssetKeyPartitionKey(a, k) for a in phase.keys for k in keys}
    return out


def submit_backfill(
    instance: dg.DagsterInstance, definitions: dg.Definitions, plan: RunPlan, shards: Mapping[str, int]
) -> PartitionBackfill:
    """Queue one asset backfill of the sources ``shards`` counts (already added as partitions, with
    their shard keys) on ``instance``."""
    graph = definitions.resolve_asset_graph()
    subset = AssetGraphSubset.from_asset_partition_set(backfill_partitions(plan, shards), graph)
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        backfill_timestamp=time.time(),
        tags={BACKFILL_TAG: "all_sources"},
        dynamic_partitions_store=instance,
        asset_graph_subset=subset,
        title=f"All sources ({len(shards)}, {sum(shards.values())} shard(s))",
        description="Every registered source through ingestion, the shared models, enrichment and its triplets.",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill
