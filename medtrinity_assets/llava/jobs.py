"""A model-chain job as plain JSON (task, plan, output root, device and the task's arguments), so
the same call runs in the Dagster process or in every rank of an external ``torchrun`` job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import MEDTRINITY_DATASET, VQA_DATASET
from medtrinity_assets.llava import recipe
from medtrinity_assets.llava.config import TrainingPlan

Log = Callable[[str], None]
TASKS = ("pretrain", "finetune", "evaluate")


def pretraining_hashes(out: Path) -> set[str]:
    """The images a pretrained model saw: the export's train and validation splits."""
    path = MEDTRINITY_DATASET.path(out)
    if not path.exists():
        return set()
    df = pl.read_parquet(path, columns=["image_sha256", "split"])
    return set(df.filter(pl.col("split") != "test")["image_sha256"].to_list())


def variants(plan: TrainingPlan) -> tuple[str, ...]:
    return recipe.VARIANTS if plan.compare_without_pretraining else ("pretrained",)


def _finetune(plan: TrainingPlan, out: Path, vqa_set: str, device: str, log: Log) -> dict[str, Any]:
    from medtrinity_assets.vqa.leakage import refuse_vqa_leaks

    vqa = VQA_DATASET.read(out, vqa_set)
    refuse_vqa_leaks(vqa, pretraining_hashes(out))
    runs = []
    for variant in variants(plan):
        for seed in plan.seeds:
            log(f"fine-tuning {vqa_set}: {variant}, seed {seed}")
            card = recipe.finetune(plan, out, vqa, vqa_set, variant, seed, device, log)
            runs.append({**card, "path": str(recipe.finetuned_dir(out, vqa_set, variant, seed))})
    return {"runs": runs}


def _evaluate(plan: TrainingPlan, out: Path, vqa_set: str, device: str, log: Log) -> dict[str, Any]:
    from medtrinity_assets.vqa.metrics import majority_rows, score_rows

    vqa = VQA_DATASET.read(out, vqa_set)
    candidates = sorted(set(vqa.filter(pl.col("answer_type") == "open")["answer"].to_list()))
    rows: list[dict[str, Any]] = score_rows(majority_rows(vqa, vqa_set), candidates or None)
    for variant in variants(plan):
        for seed in plan.seeds:
            answered = recipe.evaluate(plan, out, vqa, vqa_set, variant, seed, device, log)
            rows.extend(score_rows(answered, candidates or None))
    return {"rows": rows}


def run_job(job: dict[str, Any], log: Log) -> dict[str, Any]:
    """Run one job; returns what the asset reports (a card, the fine-tuning runs, the scored rows)."""
    task = job["task"]
    if task not in TASKS:
        raise ValueError(f"unknown model job {task!r}; known: {TASKS}")
    plan = TrainingPlan.from_dict(job["plan"])
    out, device = Path(job["out"]), job["device"]
    if task == "pretrain":
        return recipe.pretrain(plan, out, Path(job["export_root"]), device, log)
    if task == "finetune":
        return _finetune(plan, out, job["vqa_set"], device, log)
    return _evaluate(plan, out, job["vqa_set"], device, log)
