"""The ``medtrinity_assets`` code location: every asset module of ``defs/``, found without a list,
with the run plan's jobs, the schedule, the registry sensor and the resources."""

from __future__ import annotations

from typing import Any

import dagster as dg

from medtrinity_assets import defs as defs_package
from medtrinity_assets.defs.automation import build_automation_sensor, with_automation
from medtrinity_assets.defs.executors import select_executor
from medtrinity_assets.defs.jobs import build_jobs
from medtrinity_assets.defs.plan import RunPlan
from medtrinity_assets.defs.resources import default_resources
from medtrinity_assets.defs.schedules import build_schedules
from medtrinity_assets.defs.sensors import build_registry_sensor


def load_assets() -> tuple[list, list]:
    """Every asset and asset check defined in a module of ``medtrinity_assets.defs``."""
    assets = dg.load_assets_from_package_module(defs_package)
    checks = dg.load_asset_checks_from_package_module(defs_package)
    return list(assets), list(checks)


def build_definitions(resources: dict[str, Any] | None = None) -> dg.Definitions:
    """The code location (``resources`` replace the defaults, e.g. the CLI's output root)."""
    assets, checks = load_assets()
    plan = RunPlan.from_assets(assets)
    jobs = build_jobs(plan)
    ingest_job = next(j for j in jobs if j.name == plan.phase("ingest").job_name)
    return dg.Definitions(
        assets=with_automation(assets, plan),
        asset_checks=checks,
        jobs=jobs,
        schedules=build_schedules(plan.phase("shared_models").job_name),
        sensors=[build_registry_sensor([ingest_job]), build_automation_sensor()],
        resources=resources or default_resources(),
        executor=select_executor(),  # MEDTRINITY_EXECUTOR: multiprocess (default), celery or k8s
    )


defs = build_definitions()
