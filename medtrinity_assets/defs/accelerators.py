"""Which steps may use a GPU, and how that reaches the pool, the Celery queue and Kubernetes.

The GPU-capable assets (expert models, ROIs, the knowledge index, descriptions, the LLaVA-Tri
checkpoints and their VQA evaluation) take :func:`gpu_step` of the resource they run on: a pool,
``GPU_OP_TAGS`` and, per shard, a backfill policy, decided by the device that resource is set to in
the code location (:func:`configured_device`; the embedded captioner runs on no GPU):

- **pool**: ``"gpu"`` only for a step that runs on a GPU here: its device is ``cuda``, or ``auto``
  on a host where torch sees a GPU. One such step runs at a time per instance (``dagster.yaml``
  sets the limit); a step on the CPU, on any host, has no pool, so per-source runs are not
  serialised behind a device they do not use. ``MEDTRINITY_GPU_POOL=on`` pools every GPU-capable
  step (a model captioner on this host's GPU, devices changed per run), ``off`` none.
- **device**: ``MEDTRINITY_DEVICE`` (``auto``, the default; ``cpu``; ``cuda``) is where the
  compute and training resources run unless a run configures them otherwise (the embedder runs on
  the CPU unless configured: its per-shard retrieval is not a pooled step). The pool is decided
  when the code location loads, from this setting: a device changed in one run's configuration
  (the launchpad, ``medtrinity build --settings``) does not move its step in or out of the pool,
  so set the variable for the code location (or ``MEDTRINITY_GPU_POOL``) instead.
- **Celery**: ``dagster-celery/queue: gpu`` sends these steps to the workers started with
  ``-Q gpu`` (a CPU-only cluster starts its workers with ``-Q dagster,gpu``).
- **Kubernetes**: ``dagster-k8s/config`` requests one ``nvidia.com/gpu`` for their step pods.
- **Backfills**: the per-shard GPU-capable assets (ROIs, descriptions) take
  :func:`gpu_backfill_policy`: one run for every requested shard where their steps are pooled (the
  model loads once per run; the pool runs their steps one at a time anyway), and otherwise no
  policy, as every other per-shard asset, so that a backfill runs each shard's enrichment as one
  run, shards side by side.
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Any

import dagster as dg

GPU_POOL = "gpu"
POOL_ENV = "MEDTRINITY_GPU_POOL"
DEVICE_ENV = "MEDTRINITY_DEVICE"
DEVICES = ("auto", "cpu", "cuda")
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"
ACCELERATOR_TAG = "medtrinity/accelerator"

GPU_OP_TAGS: dict[str, Any] = {
    ACCELERATOR_TAG: "gpu",
    CELERY_QUEUE_TAG: "gpu",
    K8S_CONFIG_TAG: {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def gpu_visible() -> bool:
    """A GPU device is visible to this process (checked without importing torch): NVIDIA's device
    files, ROCm's ``/dev/kfd`` or WSL2's ``/dev/dxg``, unless ``CUDA_VISIBLE_DEVICES`` hides them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg")


def default_device() -> str:
    """The device the code location's compute and training resources are set to:
    ``MEDTRINITY_DEVICE`` (``cpu``, ``cuda`` or ``auto``, the default)."""
    value = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if value not in DEVICES:
        raise ValueError(f"{DEVICE_ENV}={value!r}: expected one of {', '.join(DEVICES)}")
    return value


def resolve_device(device: str) -> str:
    """``cuda`` or ``cpu`` for a device setting: ``auto`` is ``cuda`` where a GPU is visible and torch
    can use it (torch is imported only where a GPU is visible: loading on a CPU host stays fast)."""
    if device != "auto":
        return device
    return "cuda" if gpu_visible() and _torch_sees_gpu() else "cpu"


@functools.cache
def _torch_sees_gpu() -> bool:
    """torch's answer, asked once per process (each step's process loads the code location, whose
    pools ask it for every GPU-capable step: on a GPU host that imports torch in every step)."""
    import torch

    return torch.cuda.is_available()


def gpu_pool(device: str) -> str | None:
    """The pool of a GPU-capable step set to run on ``device``: ``"gpu"`` where it runs on a GPU,
    else None; ``MEDTRINITY_GPU_POOL=on|off`` overrides (see the module docstring)."""
    setting = os.environ.get(POOL_ENV, "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return GPU_POOL
    if setting in ("off", "0", "false", "no"):
        return None
    return GPU_POOL if resolve_device(device) == "cuda" else None


def gpu_backfill_policy(device: str) -> dg.BackfillPolicy | None:
    """The backfill policy of a per-shard GPU-capable asset set to run on ``device``: a single run
    over all requested partitions where its steps are pooled (:func:`gpu_pool`), else none (one run
    per partition).

    Dagster's asset backfill puts a parent and its child in one run only when their policies are
    equal; other children wait for the backfill daemon's next pass (30 s). On a CPU-only host a
    single-run ROI step between per-shard stages cut a backfill into one wave per stage, each
    behind a pass, with every shard in one run; without it a shard's ROIs, retrieval, descriptions
    and checks run in one run, and the shards' runs side by side."""
    return dg.BackfillPolicy.single_run() if gpu_pool(device) else None


def configured_device(resource: type[dg.ConfigurableResource]) -> str:
    """The device a resource class runs its step on unless a run sets another (its ``device``
    setting's default; ``cpu`` for one without, such as the embedded captioner)."""
    field = resource.model_fields.get("device")
    return str(field.default) if field is not None else "cpu"


def gpu_step(resource: type[dg.ConfigurableResource], *, per_shard: bool = False) -> dict[str, Any]:
    """The asset arguments of a GPU-capable step that runs on ``resource``: its pool, the GPU tags
    (Celery queue, Kubernetes request) and, for a per-shard asset, its backfill policy, all from the
    device the resource is set to (:func:`configured_device`)."""
    device = configured_device(resource)
    step: dict[str, Any] = {"pool": gpu_pool(device), "op_tags": GPU_OP_TAGS}
    if per_shard:
        step["backfill_policy"] = gpu_backfill_policy(device)
    return step
