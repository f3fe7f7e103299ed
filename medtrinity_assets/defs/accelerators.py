"""Which steps may use a GPU, and how that reaches the pool, the Celery queue and Kubernetes.

The GPU-capable assets (expert models, ROIs, the knowledge index, descriptions, the LLaVA-Tri
checkpoints) declare ``pool=gpu_pool()`` and ``op_tags=GPU_OP_TAGS``:

- **pool**: ``"gpu"`` only where the code location runs on a host with a GPU (or
  ``MEDTRINITY_GPU_POOL=on``), so one GPU step runs at a time per instance (``dagster.yaml``
  sets the limit); on a CPU-only host there is no pool, and per-source runs are not serialised
  behind a device they do not use. ``MEDTRINITY_GPU_POOL=off`` drops it on a GPU host too.
- **Celery**: ``dagster-celery/queue: gpu`` sends these steps to the workers started with
  ``-Q gpu`` (a CPU-only cluster starts its workers with ``-Q dagster,gpu``).
- **Kubernetes**: ``dagster-k8s/config`` requests one ``nvidia.com/gpu`` for their step pods.
- **Backfills**: the per-shard GPU-capable assets (ROIs, descriptions) take
  :func:`gpu_backfill_policy`: one run for every requested shard on a GPU host (the model loads
  once per run; the pool runs their steps one at a time anyway), and on a CPU-only host no
  policy, as every other per-shard asset, so that a backfill runs each shard's enrichment as one
  run, shards side by side.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import dagster as dg

GPU_POOL = "gpu"
POOL_ENV = "MEDTRINITY_GPU_POOL"
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"
ACCELERATOR_TAG = "medtrinity/accelerator"

GPU_OP_TAGS: dict[str, Any] = {
    ACCELERATOR_TAG: "gpu",
    CELERY_QUEUE_TAG: "gpu",
    K8S_CONFIG_TAG: {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def gpu_visible() -> bool:
    """A CUDA device is visible to this process (checked without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def gpu_pool() -> str | None:
    """The pool of a GPU-capable step: ``"gpu"`` on a GPU host, else None (see the module doc)."""
    setting = os.environ.get(POOL_ENV, "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return GPU_POOL
    if setting in ("off", "0", "false", "no"):
        return None
    return GPU_POOL if gpu_visible() else None


def gpu_backfill_policy() -> dg.BackfillPolicy | None:
    """The backfill policy of a per-shard GPU-capable asset: a single run over all requested
    partitions where the GPU pool is on, else none (one run per partition).

    Dagster's asset backfill puts a parent and its child in one run only when their policies are
    equal; other children wait for the backfill daemon's next pass (30 s). On a CPU-only host a
    single-run ROI step between per-shard stages cut a backfill into one wave per stage, each
    behind a pass, with every shard in one run; without it a shard's ROIs, retrieval, descriptions
    and checks run in one run, and the shards' runs side by side."""
    return dg.BackfillPolicy.single_run() if gpu_pool() else None
