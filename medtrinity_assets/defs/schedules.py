"""Schedules (stopped by default: nothing starts work because a UI was opened)."""

from __future__ import annotations

import dagster as dg

from medtrinity_assets.defs.jobs import KNOWLEDGE_JOB


def build_schedules() -> list[dg.ScheduleDefinition]:
    return [
        dg.ScheduleDefinition(
            name="weekly_knowledge_refresh",
            job_name=KNOWLEDGE_JOB,
            cron_schedule="0 3 * * 0",
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description="Pick up changes in the configured corpora every week (only new chunks are embedded).",
        )
    ]
