"""Named jobs: one per phase of the run plan, plus the knowledge refresh the schedule runs."""

from __future__ import annotations

import dagster as dg

from medtrinity_assets.core.tables import KNOWLEDGE_CORPUS
from medtrinity_assets.defs.knowledge import KNOWLEDGE_INDEX
from medtrinity_assets.defs.plan import RunPlan

KNOWLEDGE_JOB = "knowledge_job"


def build_jobs(plan: RunPlan) -> list[dg.UnresolvedAssetJobDefinition]:
    knowledge = dg.define_asset_job(
        KNOWLEDGE_JOB,
        selection=dg.AssetSelection.assets(KNOWLEDGE_CORPUS.name, KNOWLEDGE_INDEX),
        description="Re-ingest the corpora and rebuild the knowledge index (incremental embeddings).",
    )
    return [*plan.jobs(), knowledge]
