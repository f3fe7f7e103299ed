"""The model chain as three calls the assets (or a ``torchrun`` process) make: pretraining on the
export's LLaVA JSON, fine-tuning on a VQA set's training questions (from the pretrained
checkpoint, or without triplet pretraining from the same initialisation), and evaluation on its
held-out questions. Each writes a checkpoint or a table under the output root and returns what
the asset reports."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core.storage import sha256_file
from medtrinity_assets.llava.config import TrainingPlan
from medtrinity_assets.llava.data import llava_samples, vqa_samples
from medtrinity_assets.llava.evaluate import answer
from medtrinity_assets.llava.language import recorded_sha256
from medtrinity_assets.llava.model import (
    CheckpointError,
    build_model,
    language_base_folder,
    load_checkpoint,
    read_card,
    save_checkpoint,
    verified_card,
)
from medtrinity_assets.llava.trainer import discard_state, part_keys, stage_fingerprint, train_stage

Log = Callable[[str], None]
MODELS = "models"
PRETRAINED = "llava_tri"
VARIANTS = ("pretrained", "base")


def models_root(out: Path) -> Path:
    return out / MODELS


def language_cache(out: Path) -> Path:
    return models_root(out) / "language"


def pretrained_dir(out: Path) -> Path:
    return models_root(out) / PRETRAINED / "checkpoint"


def finetuned_dir(out: Path, vqa_set: str, variant: str, seed: int) -> Path:
    return models_root(out) / "vqa" / vqa_set / f"{variant}-seed{seed}"


def export_version(export_root: Path) -> str:
    """The export a model was trained on: the hash of its verified triplet table."""
    return sha256_file(export_root / "triplets.parquet")


def _main_rank() -> bool:
    """Whether this process writes checkpoints (rank 0 of a torchrun job, or the only process);
    the other ranks wait for it."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _save(plan: TrainingPlan, out: Path, model: Any, processor: Any, folder: Path, card: dict[str, Any],
          stages: list) -> dict[str, Any]:
    """Rank 0 writes; the language weights no stage trained are referenced from the converted
    base model instead of copied (the embedded model only)."""
    import torch.distributed as dist

    trained = {part for stage in stages for part in stage.trainable}
    frozen = [p for p in ("language", "embeddings") if p not in trained]
    base = language_base_folder(plan.model, language_cache(out)) if frozen and not plan.model.llava_path else None
    if _main_rank():
        card = save_checkpoint(model.cpu(), processor, folder, card, language_base=base,
                               unchanged=part_keys(model, frozen) if base else None)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return card


def initial_weights(plan: TrainingPlan, out: Path, seed: int) -> str:
    """The identity of the weights a model starts from before any stage: the model's settings, the
    seed of its new parts and the language model's files (the embedded one by the hash its
    conversion recorded, which changes with the installed GGUF; a user's folder by its files'
    sizes and times)."""
    spec = plan.model
    folder = language_base_folder(spec, language_cache(out))
    user = Path(spec.llava_path or spec.language.source).expanduser()
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in user.glob("*.safetensors")) \
        if folder is None and user.is_dir() else []
    key = {"model": asdict(spec), "seed": seed, "language": recorded_sha256(folder) if folder else None, "files": files}
    return "init:" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _finished(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The card of the checkpoint in ``folder`` when it was trained exactly as asked (the same
    stages, data, seed and starting weights) and its weights are the ones it names; else None.
    The caller returns it marked ``kept`` (its ``wall_s`` is the original training's)."""
    try:
        card = read_card(folder)
        return verified_card(folder) if card.get("fingerprint") == fingerprint else None
    except (CheckpointError, OSError, ValueError):
        return None


def _drop_training_state(state: Path) -> None:
    """Remove a run's resumable state (optimizer moments and trainable weights, about three times
    the checkpoint) once its checkpoint is saved: a finished run is recognised by its card."""
    if _main_rank():
        discard_state(state)


def pretrain(plan: TrainingPlan, out: Path, export_root: Path, device: str, log: Log) -> dict[str, Any]:
    """Projector alignment, then multigranular pretraining, on ``llava/train.json``; resumable
    (each stage keeps its last saved step under ``models/llava_tri/state/<stage>`` until the
    checkpoint is saved); a checkpoint already trained on the same samples the same way is kept."""
    started = time.monotonic()
    samples = llava_samples(export_root / "llava" / "train.json", export_root)
    seed = plan.seeds[0] if plan.seeds else 0
    starts = [initial_weights(plan, out, seed)]
    for stage in plan.pretrain:
        starts.append(stage_fingerprint(stage, samples, seed, starts[-1]))
    done = _finished(pretrained_dir(out), starts[-1])
    if done is not None:
        log(f"LLaVA-Tri checkpoint already trained on these {len(samples)} samples: kept")
        return {**done, "kept": True}
    model, processor = build_model(plan.model, language_cache(out), seed=seed)
    stages = []
    for stage, start in zip(plan.pretrain, starts, strict=False):
        state = models_root(out) / PRETRAINED / "state" / stage.name
        result = train_stage(model, processor, samples, stage, state, seed=seed, device=device,
                             system=plan.model.system, max_length=plan.model.max_length, bf16=plan.bf16, log=log,
                             start=start)
        stages.append(result.summary())
    card = {
        "kind": "llava_tri_checkpoint",
        "lineage": {"export_root": str(export_root), "export_version": export_version(export_root),
                    "train_samples": len(samples)},
        "plan": plan.to_dict(), "seed": seed, "stages": stages, "device": device,
        "wall_s": round(time.monotonic() - started, 1), "fingerprint": starts[-1],
    }
    card = _save(plan, out, model, processor, pretrained_dir(out), card, list(plan.pretrain))
    _drop_training_state(models_root(out) / PRETRAINED / "state")
    return card


def _start(plan: TrainingPlan, out: Path, variant: str, seed: int) -> tuple[Any, Any, list, dict[str, Any]]:
    """The model a fine-tuning run starts from, the stages its weights have seen and its lineage."""
    if variant == "pretrained":
        model, processor, card = load_checkpoint(pretrained_dir(out))
        lineage = {"pretrained": str(pretrained_dir(out)), "pretrained_sha256": card["weights_sha256"]}
        return model, processor, list(plan.pretrain), lineage
    model, processor = build_model(plan.model, language_cache(out), seed=seed)
    return model, processor, [], {"pretrained": None, "pretrained_sha256": None}


def _start_weights(plan: TrainingPlan, out: Path, variant: str, seed: int) -> str:
    """The identity of the weights a fine-tuning run starts from (see :func:`initial_weights`)."""
    if variant == "pretrained":
        return "pretrained:" + str(read_card(pretrained_dir(out)).get("weights_sha256"))
    return initial_weights(plan, out, seed)


def finetune(plan: TrainingPlan, out: Path, vqa: pl.DataFrame, vqa_set: str, variant: str, seed: int,
             device: str, log: Log) -> dict[str, Any]:
    """Fine-tune on the set's train split (from the pretrained checkpoint, or ``base``: the same
    configuration without triplet pretraining); the checkpoint and its card. A checkpoint already
    fine-tuned on the same questions from the same starting weights is kept; one trained from
    other weights (LLaVA-Tri retrained on a new export) is trained anew, never restored."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    started = time.monotonic()
    samples = vqa_samples(vqa, "train")
    folder = finetuned_dir(out, vqa_set, variant, seed)
    start = _start_weights(plan, out, variant, seed)
    done = _finished(folder, stage_fingerprint(plan.finetune, samples, seed, start))
    if done is not None:
        log(f"fine-tuning {vqa_set}: {variant}, seed {seed} already done on these {len(samples)} questions: kept")
        return {**done, "kept": True}
    model, processor, seen, lineage = _start(plan, out, variant, seed)
    state = folder.with_name(folder.name + ".state")
    result = train_stage(model, processor, samples, plan.finetune, state, seed=seed, device=device,
                         system=plan.model.system, max_length=plan.model.max_length, bf16=plan.bf16, log=log,
                         start=start)
    card = {
        "kind": "vqa_finetuned_checkpoint", "vqa_set": vqa_set, "variant": variant, "seed": seed,
        "lineage": {**lineage, "train_questions": len(samples)},
        "stage": result.summary(), "finetune": asdict(plan.finetune), "device": device,
        "wall_s": round(time.monotonic() - started, 1), "fingerprint": result.fingerprint,
    }
    card = _save(plan, out, model, processor, folder, card, [*seen, plan.finetune])
    _drop_training_state(state)
    return card


def evaluate(plan: TrainingPlan, out: Path, vqa: pl.DataFrame, vqa_set: str, variant: str, seed: int,
             device: str, log: Log) -> list[dict[str, Any]]:
    """Answers of one fine-tuned checkpoint to the set's test questions, one row each."""
    model, processor, _ = load_checkpoint(finetuned_dir(out, vqa_set, variant, seed))
    from medtrinity_assets.vqa.metrics import answer_rows, evaluation_questions

    test = evaluation_questions(vqa)
    samples = vqa_samples(test, "test")
    predictions = answer(model, processor, samples, system=plan.model.system, device=device,
                         max_new_tokens=plan.max_new_tokens, batch_size=plan.eval_batch_size)
    log(f"{vqa_set} {variant} seed {seed}: answered {len(predictions)} test question(s)")
    return answer_rows(test, vqa_set, variant, seed, predictions)


#: fewer training triplets than this make a checkpoint the summary calls a run of the chain, not a model
FEW_TRAIN_SAMPLES = 64


def checkpoint_line(out: Path) -> str:
    """``LLaVA-Tri: <path> (stages ..., N steps, final loss x)``, or "" before pretraining."""
    from medtrinity_assets.llava.model import CARD, read_card

    folder = pretrained_dir(out)
    if not (folder / CARD).is_file():
        return ""
    card = read_card(folder)
    stages = ", ".join(f"{s['stage']} {s['steps']} steps, loss {s['first_loss']:.2f} -> {s['final_loss']:.2f}"
                       for s in card.get("stages", []) if s.get("first_loss") is not None)
    line = f"LLaVA-Tri checkpoint: {stages}; {card.get('wall_s', 0):.0f}s on {card.get('device')} -> {folder}"
    samples = card.get("lineage", {}).get("train_samples")
    if samples is not None and samples < FEW_TRAIN_SAMPLES:
        line += f" (trained on {samples} triplet(s) only: too few to learn from; it shows that the chain runs)"
    return line
