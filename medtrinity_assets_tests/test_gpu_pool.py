"""The ``gpu`` pool limits GPU steps only: two steps on a GPU run one at a time; steps on the CPU,
on a CPU-only host or on a GPU host, run side by side (no "blocked by limit for pool gpu")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from medtrinity_assets.defs.accelerators import GPU_OP_TAGS, gpu_pool

GPU_ASSETS = {"expert_models", "roi_set", "knowledge_index", "caption_batch", "llava_tri_checkpoint",
              "vqa_finetuned_checkpoint", "vqa_evaluation"}
CPU_BY_DEFAULT = {"caption_batch", "knowledge_index"}  # the embedded captioner; the embedder unless configured


def _loaded(setting: str, expression: str, where: str = "True", device: str | None = None,
            gpu_host: bool = False) -> tuple[dict, dict]:
    """``{asset key: expression}`` over the code location's executable assets ``a`` (those for
    which ``where`` holds), loaded in a new process with ``MEDTRINITY_GPU_POOL=setting`` (and
    ``MEDTRINITY_DEVICE=device``), and the devices its default resources resolve to (with whether
    torch was imported by then); ``gpu_host``: as on a host where torch sees a GPU (the device
    files and torch's answer replaced before the code location loads)."""
    host = ("import torch, medtrinity_assets.defs.accelerators as acc\n"
            "acc.gpu_visible = lambda: True; torch.cuda.is_available = lambda: True\n") if gpu_host else ""
    code = (
        host + "import json, sys; from medtrinity_assets.definitions import defs\n"
        "from medtrinity_assets.defs.partitions import SOURCE_SHARDS\n"
        "from medtrinity_assets.defs.resources import default_resources\n"
        "resources = default_resources()\n"
        "devices = {k: r.resolved_device() for k, r in resources.items() if hasattr(r, 'resolved_device')}\n"
        "devices['embedder'] = resources['embedder'].device\n"
        "devices['torch imported'] = 'torch' in sys.modules\n"
        f"print(json.dumps([{{k.to_user_string(): {expression} for a in defs.assets "
        f"if a.is_executable and {where} for k in a.keys}}, devices]))"
    )
    env = {**os.environ, "MEDTRINITY_GPU_POOL": setting}
    env.pop("MEDTRINITY_DEVICE", None)
    if device is not None:
        env["MEDTRINITY_DEVICE"] = device
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    values, devices = json.loads(out.stdout.strip().splitlines()[-1])
    return values, devices


def _pools(setting: str, **kw) -> dict[str, str | None]:
    """Pools of the code location's assets when loaded with ``MEDTRINITY_GPU_POOL=setting``."""
    return _loaded(setting, "a.op.pool", **kw)[0]


def _shard_policies(setting: str, **kw) -> dict[str, str | None]:
    """Backfill policies of the code location's per-shard assets under ``MEDTRINITY_GPU_POOL=setting``."""
    return _loaded(setting, "a.backfill_policy and a.backfill_policy.policy_type.value",
                   "a.partitions_def == SOURCE_SHARDS", **kw)[0]


def test_per_shard_assets_share_one_backfill_policy_on_a_cpu_host():
    """Dagster's asset backfill runs a child with its parent only when their policies are equal:
    on a CPU-only host every per-shard asset has none, so a backfill runs each shard's ingestion,
    and later its ROIs, retrieval, descriptions and checks, as one run per shard; on a GPU host the
    GPU-bound ones run every shard in one run (a model loads once)."""
    off, on = _shard_policies("off"), _shard_policies("on")
    assert {"source_manifest", "coarse_captions", "roi_set", "retrieved_knowledge", "caption_batch",
            "caption_quality"} <= set(off)
    assert set(off.values()) == {None}
    assert {k for k, p in on.items() if p} == {"roi_set", "caption_batch"}
    assert {p for p in on.values() if p} == {"SINGLE_RUN"}


def test_code_location_pools_follow_the_host():
    on, off = _pools("on"), _pools("off")
    assert {k for k, p in on.items() if p == "gpu"} == GPU_ASSETS
    assert all(p is None for p in off.values())
    auto, devices = _loaded("auto", "a.op.pool")  # this machine: the pool is set exactly when torch can use a GPU here
    from medtrinity_assets.defs.accelerators import gpu_visible, resolve_device

    on_gpu = resolve_device("auto") == "cuda"
    assert {k for k, p in auto.items() if p == "gpu"} == (GPU_ASSETS - CPU_BY_DEFAULT if on_gpu else set())
    if not gpu_visible():  # loading on a CPU host asks no GPU question of torch (it is not imported)
        assert devices["torch imported"] is False


def test_on_a_gpu_host_only_steps_on_the_gpu_are_pooled():
    """On a GPU host the steps whose device resolves to the GPU share the pool; the embedded
    captioner (no GPU) and the embedder (the CPU unless configured) are not pooled, and with
    ``MEDTRINITY_DEVICE=cpu`` no step is: CPU steps of a GPU host run side by side like those of a
    CPU-only host."""
    gpu, devices = _loaded("auto", "a.op.pool", gpu_host=True)
    assert devices == {"compute": "cuda", "training": "cuda", "embedder": "cpu", "torch imported": True}
    assert {k for k, p in gpu.items() if p == "gpu"} == GPU_ASSETS - CPU_BY_DEFAULT
    cpu, devices = _loaded("auto", "a.op.pool", device="cpu", gpu_host=True)
    assert devices | {"torch imported": True} == {"compute": "cpu", "training": "cpu", "embedder": "cpu",
                                                  "torch imported": True}
    assert all(p is None for p in cpu.values())
    policies = _shard_policies("auto", device="cpu", gpu_host=True)
    assert all(p is None for p in policies.values())  # shards side by side


def test_a_device_setting_that_is_not_one_fails_the_load_with_its_name():
    env = {**os.environ, "MEDTRINITY_DEVICE": "gpu0"}
    out = subprocess.run([sys.executable, "-c", "import medtrinity_assets.definitions"], env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "MEDTRINITY_DEVICE='gpu0': expected one of auto, cpu, cuda" in out.stderr


# Two GPU-capable steps in one run under the multiprocess executor; their pool is decided in each
# process from MEDTRINITY_GPU_POOL, as in the code location.
@dg.asset(pool=gpu_pool("cuda"), op_tags=GPU_OP_TAGS)
def gpu_step_a() -> None:
    import time

    time.sleep(2.5)


@dg.asset(pool=gpu_pool("cuda"), op_tags=GPU_OP_TAGS)
def gpu_step_b() -> None:
    import time

    time.sleep(2.5)


def two_gpu_steps_job() -> dg.JobDefinition:
    defs = dg.Definitions(assets=[gpu_step_a, gpu_step_b], jobs=[dg.define_asset_job("two_gpu_steps")])
    return defs.resolve_job_def("two_gpu_steps")


def _run_two_steps(setting: str, tmp_path) -> tuple[list[tuple[float, float]], list[str]]:
    code = f"""
import json, sys
import dagster as dg
from medtrinity_assets_tests.test_gpu_pool import two_gpu_steps_job
with dg.instance_for_test(temp_dir={str(tmp_path)!r}, overrides={{"concurrency": {{"pools": {{"default_limit": 1}}}}}}) as inst:
    result = dg.execute_job(dg.reconstructable(two_gpu_steps_job), instance=inst)
    assert result.success
    spans, blocked = {{}}, []
    for e in inst.all_logs(result.run_id):
        d = e.dagster_event
        if d is None:
            if "pool" in (e.user_message or ""): blocked.append(e.user_message)
            continue
        if d.event_type_value == "STEP_START": spans.setdefault(d.step_key, [0, 0])[0] = e.timestamp
        if d.event_type_value == "STEP_SUCCESS": spans.setdefault(d.step_key, [0, 0])[1] = e.timestamp
        if "blocked by limit for pool" in (e.message or ""): blocked.append(e.message)
    print(json.dumps({{"spans": list(spans.values()), "blocked": blocked}}))
"""
    env = {**os.environ, "MEDTRINITY_GPU_POOL": setting}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return [tuple(s) for s in data["spans"]], data["blocked"]


def _overlap(spans: list[tuple[float, float]]) -> float:
    (a0, a1), (b0, b1) = sorted(spans)
    return min(a1, b1) - max(a0, b0)


@pytest.mark.parametrize("setting", ["on", "off"])
def test_gpu_pool_serialises_gpu_steps_only(setting, tmp_path):
    spans, blocked = _run_two_steps(setting, tmp_path)
    assert len(spans) == 2
    if setting == "on":  # a GPU host: one GPU step at a time
        assert _overlap(spans) <= 0, spans
        assert blocked, "expected the second step to wait for the gpu pool"
    else:  # a CPU-only host: both steps run at once
        assert _overlap(spans) > 0, spans
        assert not blocked, blocked
