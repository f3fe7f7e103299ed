"""The model chain's assets: the LLaVA-Tri checkpoint (pretrained on the export's triplets), and
per VQA set its questions, the fine-tuned checkpoints (with and without triplet pretraining, one
per seed) and their evaluation. Training runs in process or as an external torchrun job."""


import time
from pathlib import Path

import dagster as dg
import polars as pl

from medtrinity_assets.core.tables import MEDTRINITY_DATASET, VQA_DATASET, VQA_EVALUATION
from medtrinity_assets.defs.accelerators import gpu_step
from medtrinity_assets.defs.model_resources import DEMO_VQA_SET, LlavaTrainingResource, VQASetsResource
from medtrinity_assets.defs.partitions import VQA_SETS
from medtrinity_assets.defs.reporting import (
    GROUP_MODEL,
    counts_metadata,
    picture,
    stage_metrics,
    table_metadata,
)
from medtrinity_assets.defs.resources import OutputStorage
from medtrinity_assets.defs.training_launch import run_training

LLAVA_TRI = "llava_tri_checkpoint"
VQA_FINETUNED = "vqa_finetuned_checkpoint"
LEAK_CHECK = "vqa_split_leak_free"


@dg.asset(
    name=LLAVA_TRI, group_name=GROUP_MODEL, kinds={"pytorch", "safetensors"},
    **gpu_step(LlavaTrainingResource),
    deps=[MEDTRINITY_DATASET.name],
    description="LLaVA-Tri: projector alignment, then multigranular pretraining on the export's LLaVA "
    "conversations (train split); safetensors with config, tokenizer and a card (lineage, steps, losses).",
)
def llava_tri_checkpoint(context: dg.AssetExecutionContext, storage: OutputStorage,
                         training: LlavaTrainingResource) -> dg.MaterializeResult:
    from medtrinity_assets.llava.plots import loss_curves
    from medtrinity_assets.llava.recipe import pretrained_dir

    started = time.perf_counter()
    out = storage.out()
    card = run_training(context, training, "pretrain", out, {"export_root": str(MEDTRINITY_DATASET.path(out).parent)})
    curves = {s["stage"]: s["loss_curve"] for s in card["stages"]}
    return dg.MaterializeResult(metadata={
        **stage_metrics(started, rows_in=card["lineage"]["train_samples"], rows_out=1),
        "path": dg.MetadataValue.path(str(pretrained_dir(out))),
        "export_version": card["lineage"]["export_version"],
        "train_samples": card["lineage"]["train_samples"],
        **{f"{s['stage']}_final_loss": float(s["final_loss"] or 0.0) for s in card["stages"]},
        "steps": sum(s["steps"] for s in card["stages"]),
        "wall_s": float(card["wall_s"]),
        "kept": bool(card.get("kept")),  # trained earlier exactly as asked: not retrained (wall_s is then that run's)
        "device": card["device"],
        "loss_curves": picture(loss_curves(curves), "loss per stage"),
        "weights_sha256": card["weights_sha256"],
    })


def _read_set(name: str, out: Path, sets: VQASetsResource) -> tuple[pl.DataFrame, list[dict]]:
    from medtrinity_assets.vqa.generate import generate_vqa
    from medtrinity_assets.vqa.readers import read_vqa_set

    if name == DEMO_VQA_SET:
        export = MEDTRINITY_DATASET.path(out)
        return generate_vqa(MEDTRINITY_DATASET.read(out), export.parent, vqa_set=name, seed=sets.seed,
                            per_image=sets.per_image), []
    spec = sets.spec(name)
    read = read_vqa_set(name, spec["layout"], spec["root"], out / "vqa_images" / name)
    return read.frame, read.quarantined


@dg.asset(
    name=VQA_DATASET.name, group_name=GROUP_MODEL, kinds={"parquet"}, partitions_def=VQA_SETS,
    deps=[MEDTRINITY_DATASET.name],
    check_specs=[dg.AssetCheckSpec(LEAK_CHECK, asset=VQA_DATASET.name, blocking=True,
                                   description="No test image (by sha256) in the set's train or validation "
                                   "split, nor among the images the pretrained model saw.")],
    description="A VQA set's questions in one shape: the demo set generated from the export's triplets "
    "(closed and open questions from measured and ontology facts, the export's splits), or a benchmark read "
    "from its public layout (VQA-RAD, SLAKE, PathVQA).",
)
def vqa_dataset(context: dg.AssetExecutionContext, storage: OutputStorage,
                vqa_sets: VQASetsResource) -> dg.MaterializeResult:
    from medtrinity_assets.llava.jobs import pretraining_hashes
    from medtrinity_assets.vqa.leakage import find_vqa_leaks

    started = time.perf_counter()
    name, out = context.partition_key, storage.out()
    try:
        df, quarantined = _read_set(name, out, vqa_sets)
    except (ValueError, FileNotFoundError) as exc:
        raise dg.Failure(description=f"VQA set '{name}': {exc}") from None
    path = VQA_DATASET.write(df, out, name)
    leaks = find_vqa_leaks(df, pretraining_hashes(out))
    if leaks:
        ids = sorted({q for leak in leaks for q in leak.get("test_question_ids", [])})
        context.log.error(f"VQA set '{name}': {len(leaks)} leaking image(s); test questions {ids[:10]}")
    counts = dict(df.group_by("split", "answer_type").len().select(
        pl.concat_str("split", "answer_type", separator="/"), "len").iter_rows()) if df.height else {}
    return dg.MaterializeResult(
        metadata={**table_metadata(df, path, ["split", "question", "answer", "question_type"]),
                  **stage_metrics(started, rows_in=df.height + len(quarantined), rows_out=df.height,
                                  quarantined=len(quarantined)),
                  **counts_metadata("questions", counts),
                  "quarantine_reasons": dg.MetadataValue.json(quarantined[:50])},
        check_results=[dg.AssetCheckResult(check_name=LEAK_CHECK, passed=not leaks,
                                           metadata={"leaks": dg.MetadataValue.json(leaks[:100]),
                                                     "leaking_images": len(leaks)})],
    )


@dg.asset(
    name=VQA_FINETUNED, group_name=GROUP_MODEL, kinds={"pytorch", "safetensors"},
    **gpu_step(LlavaTrainingResource),
    partitions_def=VQA_SETS, deps=[LLAVA_TRI, VQA_DATASET.name],
    description="Fine-tuned on the set's train questions, from LLaVA-Tri and (for the comparison) from the "
    "same configuration without triplet pretraining, once per seed.",
)
def vqa_finetuned_checkpoint(context: dg.AssetExecutionContext, storage: OutputStorage,
                             training: LlavaTrainingResource) -> dg.MaterializeResult:
    from medtrinity_assets.llava.plots import loss_curves

    started = time.perf_counter()
    name, out = context.partition_key, storage.out()
    cards = run_training(context, training, "finetune", out, {"vqa_set": name})["runs"]
    curves = {f"{c['variant']} seed {c['seed']}": c["stage"]["loss_curve"] for c in cards}
    questions = cards[0]["lineage"]["train_questions"] if cards else 0
    return dg.MaterializeResult(metadata={
        **stage_metrics(started, rows_in=questions, rows_out=len(cards)),
        "checkpoints": dg.MetadataValue.json({f"{c['variant']}-seed{c['seed']}": c["path"] for c in cards}),
        "train_questions": questions,
        "wall_s": float(sum(c["wall_s"] for c in cards)),
        "kept": sum(bool(c.get("kept")) for c in cards),  # checkpoints trained earlier exactly as asked
        "loss_curves": picture(loss_curves(curves), "fine-tuning loss"),
    })


@dg.asset(
    name=VQA_EVALUATION.name, group_name=GROUP_MODEL, kinds={"parquet"}, partitions_def=VQA_SETS,
    deps=[VQA_FINETUNED, VQA_DATASET.name],
    **gpu_step(LlavaTrainingResource),  # the checkpoints answer on it
    description="Every fine-tuned checkpoint answers the set's test questions: closed accuracy, open token "
    "recall (LLaVA-Med), exact match and candidate accuracy, per question type, mean and spread over seeds, "
    "with and without triplet pretraining, next to the majority baseline (the commonest training answer of each "
    "question's kind, no model).",
)
def vqa_evaluation(context: dg.AssetExecutionContext, storage: OutputStorage,
                   training: LlavaTrainingResource) -> dg.MaterializeResult:
    from medtrinity_assets.llava.plots import metric_bars
    from medtrinity_assets.vqa.metrics import summarise

    started = time.perf_counter()
    name, out = context.partition_key, storage.out()
    rows = run_training(context, training, "evaluate", out, {"vqa_set": name})["rows"]
    df = VQA_EVALUATION.frame(rows)
    path = VQA_EVALUATION.write(df, out, name)
    summary = summarise(df)
    metrics = ["closed_accuracy", "open_recall", "exact_match", "candidate_accuracy"]
    return dg.MaterializeResult(metadata={
        **table_metadata(df, path, ["variant", "seed", "question_type", "answer", "prediction"]),
        **stage_metrics(started, rows_in=df.height, rows_out=df.height),
        **{f"{v}/{m}": float(s[m]) for v, s in summary.items() for m in metrics if s.get(m) is not None},
        **{f"{v}/{m}_std": float(s[f"{m}_std"]) for v, s in summary.items() for m in metrics
           if s.get(f"{m}_std") is not None},
        "summary": dg.MetadataValue.json(summary),
        "with_vs_without": picture(metric_bars(summary, metrics), "with and without triplet pretraining"),
    })
