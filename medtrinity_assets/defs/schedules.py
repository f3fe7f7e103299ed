"""The schedule: rebuild the shared models (expert models, knowledge corpus and index) on a cadence.

``MEDTRINITY_REFRESH_CRON`` sets the cadence (default weekly, Sunday 03:00 UTC); ``off`` leaves the
schedule stopped. Running by default: it only fires at its cron time, never because the UI was
opened, and sources follow a rebuilt model only when its content changed (``automation.py``).
"""

from __future__ import annotations

import os

import dagster as dg

SCHEDULE_NAME = "shared_models_refresh"
CRON_ENV = "MEDTRINITY_REFRESH_CRON"
DEFAULT_CRON = "0 3 * * 0"


def build_schedules(job_name: str) -> list[dg.ScheduleDefinition]:
    cron = os.environ.get(CRON_ENV, DEFAULT_CRON).strip()
    off = cron.lower() in ("off", "none", "")
    return [
        dg.ScheduleDefinition(
            name=SCHEDULE_NAME,
            job_name=job_name,
            cron_schedule=DEFAULT_CRON if off else cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.STOPPED if off else dg.DefaultScheduleStatus.RUNNING,
            description="Retrain the expert models and re-ingest the corpora into the knowledge index (only "
            f"new chunks are embedded); cadence from ${CRON_ENV} (default weekly).",
        )
    ]
