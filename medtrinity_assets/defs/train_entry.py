"""The program ``torchrun`` starts on every rank: it joins the process group, runs the job and,
on rank 0, reports logs and the result's location back to Dagster through Pipes.

``python -m torch.distributed.run --nproc_per_node=N -m medtrinity_assets.defs.train_entry JOB.json``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _init_distributed(device: str) -> int:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return rank


def main(argv: list[str]) -> int:
    from dagster_pipes import open_dagster_pipes

    from medtrinity_assets.llava.jobs import run_job

    job_path = Path(argv[0])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if job.get("device", "cpu").startswith("cuda"):
        job["device"] = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    rank = _init_distributed(job["device"])
    if rank != 0:
        run_job(job, lambda _m: None)
        return 0
    with open_dagster_pipes() as pipes:
        result = run_job(job, pipes.log.info)
        result_path = job_path.with_suffix(".result.json")
        result_path.write_text(json.dumps(result, default=str), encoding="utf-8")
        pipes.report_custom_message({"result_path": str(result_path)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
