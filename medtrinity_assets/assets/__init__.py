"""Thin Dagster assets, one module per pipeline stage."""

import warnings

# GPU-bound per-source assets (roi_set, caption_batch) use single-run backfills so a model loads
# once per backfill; the per-source job mixes them with multi-run assets, for which Dagster falls
# back to one partition per run and says so on every load. That fallback is what we want.
warnings.filterwarnings("ignore", message=".*materializes assets with varying BackfillPolicies.*")
warnings.filterwarnings("ignore", message=".*Parameter `backfill_policy` of function.*")
