"""The Dagster layer: partitions, resources, one asset module per stage, checks, the run plan with
its jobs, schedules and sensors. ``medtrinity_assets.definitions`` assembles this folder; every
asset module in it is found without a list (adding a module is enough)."""

import warnings

# GPU-bound per-source assets (roi_set, caption_batch) use single-run backfills so a model loads
# once per backfill; a job that mixes them with multi-run assets falls back to one partition per
# run and says so on every load. That fallback is what we want.
warnings.filterwarnings("ignore", message=".*materializes assets with varying BackfillPolicies.*")
warnings.filterwarnings("ignore", message=".*Parameter `backfill_policy` of function.*")
