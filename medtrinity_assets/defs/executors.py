"""Which executor runs the steps of a run: chosen by ``MEDTRINITY_EXECUTOR`` when the code location loads.

- ``multiprocess`` (the default, also when unset): Dagster's default executor, one process per
  step on the run's host. The code location declares no executor, as before.
- ``celery``: ``dagster_celery``'s ``celery_executor``; each step is a Celery task on a queue
  (``dagster`` unless the step's ``dagster-celery/queue`` tag names another: GPU steps go to
  ``gpu``, see :mod:`medtrinity_assets.defs.accelerators`). The broker defaults to
  ``MEDTRINITY_CELERY_BROKER`` (else ``redis://127.0.0.1:6379/0``), the result backend to
  ``MEDTRINITY_CELERY_BACKEND`` (else the broker's URL).
- ``k8s``: ``dagster_k8s``'s ``k8s_job_executor``; each step is a Kubernetes Job whose pod takes
  its image, namespace and environment from the run launcher, and the defaults may come from a
  run-config file named by ``MEDTRINITY_K8S_EXECUTOR_CONFIG`` (its ``execution.config`` block,
  e.g. ``deploy/k8s/run_config.yaml``). GPU steps request ``nvidia.com/gpu`` through their
  ``dagster-k8s/config`` tag.

The defaults are the config schema's defaults: a run's ``execution: config:`` still overrides
each of them. The Celery workers and the step pods load this code location too, so they need the
same ``MEDTRINITY_EXECUTOR`` (their run config is validated against the same executor).
``dagster_celery`` and ``dagster_k8s`` (the ``production`` extra) are imported only when chosen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

EXECUTOR_ENV = "MEDTRINITY_EXECUTOR"
CELERY_BROKER_ENV = "MEDTRINITY_CELERY_BROKER"
CELERY_BACKEND_ENV = "MEDTRINITY_CELERY_BACKEND"
K8S_CONFIG_ENV = "MEDTRINITY_K8S_EXECUTOR_CONFIG"
DEFAULT_CELERY_BROKER = "redis://127.0.0.1:6379/0"

MULTIPROCESS = "multiprocess"
CELERY = "celery"
K8S = "k8s"
EXECUTOR_NAMES = (MULTIPROCESS, CELERY, K8S)


def executor_name(env: Mapping[str, str] | None = None) -> str:
    """The executor ``MEDTRINITY_EXECUTOR`` names (``multiprocess`` when unset or empty)."""
    env = os.environ if env is None else env
    name = env.get(EXECUTOR_ENV, "").strip().lower() or MULTIPROCESS
    if name not in EXECUTOR_NAMES:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTOR_NAMES)}")
    return name


def with_defaults(executor_def: dg.ExecutorDefinition, defaults: Mapping[str, Any]) -> dg.ExecutorDefinition:
    """``executor_def`` whose config fields in ``defaults`` get these values as their defaults
    (a run's ``execution: config:`` can still set them; the other fields are unchanged)."""
    if not defaults:
        return executor_def
    fields = dict(executor_def.config_schema.config_type.fields)
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise ValueError(f"executor '{executor_def.name}' has no config field(s) {', '.join(unknown)}")
    for key, value in defaults.items():
        field = fields[key]
        fields[key] = dg.Field(
            field.config_type, default_value=value, is_required=False, description=field.description
        )
    return executor_def.configured(_passthrough, name=executor_def.name, config_schema=fields)


def _passthrough(config: dict[str, Any]) -> dict[str, Any]:
    return config


def celery_defaults(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The broker and result backend of the Celery executor (see the module doc)."""
    env = os.environ if env is None else env
    broker = env.get(CELERY_BROKER_ENV, "").strip() or DEFAULT_CELERY_BROKER
    backend = env.get(CELERY_BACKEND_ENV, "").strip() or broker
    return {"broker": broker, "backend": backend}


def k8s_defaults(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``execution.config`` block of the file ``MEDTRINITY_K8S_EXECUTOR_CONFIG`` names ({} when unset)."""
    import yaml

    env = os.environ if env is None else env
    path = env.get(K8S_CONFIG_ENV, "").strip()
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    config = (data.get("execution") or {}).get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{K8S_CONFIG_ENV}={path}: 'execution: config:' is not a mapping")
    return config


def select_executor(env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """The executor of the code location, or None for Dagster's default (``multiprocess``)."""
    name = executor_name(env)
    if name == CELERY:
        from dagster_celery import celery_executor

        return with_defaults(celery_executor, celery_defaults(env))
    if name == K8S:
        from dagster_k8s import k8s_job_executor

        return with_defaults(k8s_job_executor, k8s_defaults(env))
    return None
