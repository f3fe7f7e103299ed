"""What an executor definition receives for a run's ``execution: config:`` (shared by the executor tests)."""

from __future__ import annotations

import dagster as dg


def resolved_executor_config(executor: dg.ExecutorDefinition, run_value: dict) -> dict:
    """The config ``executor`` receives for ``execution: config: <run_value>``, through the
    defaults its schema carries (``defs/executors.py:with_defaults``)."""
    from dagster._config import process_config

    schema = executor.config_schema
    outer = process_config(schema.config_type, run_value)
    assert outer.success, [e.message for e in outer.errors]
    resolved = schema.resolve_config({"config": outer.value})
    assert resolved.success, [e.message for e in resolved.errors]
    return resolved.value["config"]
