"""Where a model-chain job runs: in the asset's process, or as an external ``torchrun`` job
launched through Dagster Pipes (its logs stream into the run; its result comes back as a
custom message). The job is the same JSON either way (:mod:`medtrinity_assets.llava.jobs`)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from medtrinity_assets.defs.model_resources import LlavaTrainingResource


def job_for(training: LlavaTrainingResource, task: str, out: Path, args: dict[str, Any]) -> dict[str, Any]:
    return {"task": task, "plan": training.plan().to_dict(), "out": str(out),
            "device": training.resolved_device(), **args}


def run_training(context: dg.AssetExecutionContext, training: LlavaTrainingResource, task: str, out: Path,
                 args: dict[str, Any]) -> dict[str, Any]:
    """Run ``task`` where ``training.launcher`` says; a failure becomes a one-line ``Failure``."""
    from medtrinity_assets.core.storage import held_lock
    from medtrinity_assets.llava.jobs import run_job
    from medtrinity_assets.llava.language import LanguageModelError
    from medtrinity_assets.llava.model import CheckpointError
    from medtrinity_assets.vqa.leakage import VQALeakageError

    job = job_for(training, task, out, args)
    lock = out / "models" / f".{task}{'-' + args['vqa_set'] if 'vqa_set' in args else ''}.lock"
    try:
        if task == "evaluate":  # reads checkpoints only
            return run_job(job, context.log.info)
        # two runs of one checkpoint at once would share its .writing and .state folders; the
        # second finds the first's checkpoint finished and keeps it (held here, not in the job:
        # every torchrun rank runs the job, and a rank waiting on a lock stalls the others)
        with held_lock(lock, lambda: context.log.info(f"another run is training {task} in {out}: waiting for it")):
            if training.launcher == "torchrun":
                return _torchrun(context, training, job, out)
            return run_job(job, context.log.info)
    except VQALeakageError as exc:
        raise dg.Failure(description=str(exc), metadata={"leaks": dg.MetadataValue.json(exc.leaks[:100])}) from None
    except (LanguageModelError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise dg.Failure(description=f"{task}: {exc}") from None


def _torchrun(context: dg.AssetExecutionContext, training: LlavaTrainingResource, job: dict[str, Any],
              out: Path) -> dict[str, Any]:
    text = json.dumps(job, sort_keys=True)
    folder = out / "models" / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job['task']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    path.write_text(text, encoding="utf-8")
    logs = folder / "logs"  # the launcher's per-rank folders (error files of a failed rank), not /tmp
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--log-dir={logs}",
               f"--nproc_per_node={training.nproc_per_node}", "-m", "medtrinity_assets.defs.train_entry", str(path)]
    context.log.info(f"launching: {' '.join(command)} (rank error files under {logs})")
    results = dg.PipesSubprocessClient().run(command=command, context=context)
    messages = [m for m in results.get_custom_messages() if isinstance(m, dict) and "result_path" in m]
    if not messages:
        raise dg.Failure(description=f"the torchrun job {path.name} ended without reporting a result")
    return json.loads(Path(messages[-1]["result_path"]).read_text(encoding="utf-8"))
