"""One training stage, resumable: which parts learn, the batches in a seeded order, AdamW with
warm-up and cosine decay, gradient accumulation, bf16 autocast on a GPU, the loss on answer
tokens only, and a resumable save (trainable weights, optimizer state, step, losses) every few
steps. Under ``torchrun`` each rank takes its share of the batches and rank 0 saves."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtrinity_assets.llava.config import StageSpec
from medtrinity_assets.llava.conversation import IGNORE, encode_training
from medtrinity_assets.llava.data import Sample

Log = Callable[[str], None]


@dataclass
class StageResult:
    stage: str
    steps: int
    samples: int
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    resumed_from: int = 0
    answer_tokens: int = 0
    fingerprint: str = ""  # what the stage's weights come from (see stage_fingerprint)

    def summary(self) -> dict[str, Any]:
        tail = self.losses[-max(1, len(self.losses) // 10):] if self.losses else []
        return {**{k: v for k, v in asdict(self).items() if k != "losses"},
                "first_loss": self.losses[0] if self.losses else None,
                "final_loss": sum(tail) / len(tail) if tail else None,
                "loss_curve": _downsample(self.losses, 200)}


def _downsample(values: Sequence[float], n: int) -> list[float]:
    if len(values) <= n:
        return [round(v, 5) for v in values]
    step = len(values) / n
    return [round(values[int(i * step)], 5) for i in range(n)]


def parts(model: Any) -> dict[str, list[Any]]:
    """The trainable parts of a LLaVA model by the names stages use: ``language`` is the decoder
    (layers and final norm), ``embeddings`` the token embeddings and the output head (tied in
    small models; a quarter of a CPU step's cost in SmolLM2, so the demo leaves them frozen)."""
    inner = model.model
    head = {id(p) for p in [*inner.language_model.get_input_embeddings().parameters(), *model.lm_head.parameters()]}
    return {"projector": list(inner.multi_modal_projector.parameters()),
            "vision": list(inner.vision_tower.parameters()),
            "language": [p for p in inner.language_model.parameters() if id(p) not in head],
            "embeddings": [p for p in model.parameters() if id(p) in head]}


def part_keys(model: Any, names: Sequence[str]) -> set[str]:
    """State-dict names of the parameters of parts ``names`` (tied names included)."""
    chosen = {id(p) for name in names for p in parts(model)[name]}
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in chosen}


def set_trainable(model: Any, trainable: Sequence[str]) -> list[tuple[str, Any]]:
    """Freeze everything but ``trainable``; returns the trainable ``(name, parameter)`` pairs."""
    chosen = {id(p) for name in trainable for p in parts(model)[name]}
    named = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in chosen)
        if id(p) in chosen:
            named.append((name, p))
    return named


class AnswerLoss:
    """Cross-entropy on answer tokens only; the language-model head runs only where a label is,
    which on short answers saves most of the head's cost."""

    def __init__(self, model: Any) -> None:
        import torch

        class _Module(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, pixel_values: Any, labels: Any) -> Any:
                out = self.inner.model(input_ids=input_ids, attention_mask=attention_mask,
                                       pixel_values=pixel_values.to(self.inner.dtype))
                targets = labels[:, 1:]
                keep = targets != IGNORE
                logits = self.inner.lm_head(out.last_hidden_state[:, :-1][keep])
                return torch.nn.functional.cross_entropy(logits.float(), targets[keep])

        self.module = _Module(model)


def _order(n: int, epochs: float, seed: int) -> list[int]:
    """Sample indices for all epochs: a fresh seeded permutation per epoch, the last one cut."""
    import torch

    total = max(1, int(round(n * epochs)))
    out: list[int] = []
    epoch = 0
    while len(out) < total:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        out.extend(torch.randperm(n, generator=g).tolist())
        epoch += 1
    return out[:total]


def _schedule(step: int, total: int, warmup: float) -> float:
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class _Run:
    """The state a stage carries between steps."""

    stage: StageSpec
    micro: list[list[int]]
    total_steps: int
    result: StageResult
    started: float = field(default_factory=time.monotonic)


def stage_fingerprint(stage: StageSpec, samples: Sequence[Sample], seed: int, start: str = "") -> str:
    """What a stage's weights are made from: the stage, the seed, the samples themselves and
    ``start``, the identity of the weights it begins from (the previous stage's fingerprint, a
    pretrained checkpoint's hash, or the initial model's). A saved step, or a finished checkpoint,
    counts only for the same fingerprint: the same data on other starting weights trains anew."""
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.id}\x1f{s.image}\x1f{s.question}\x1f{s.answer}\x1e".encode())
    key = json.dumps({"stage": asdict(stage), "samples": h.hexdigest(), "seed": seed, "start": start}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _beside(folder: Path) -> tuple[Path, Path]:
    """The folders a save keeps beside a stage's state: the one being written, and the previous
    one while it is replaced (a kill between the renames leaves it to resume from)."""
    return folder.with_name(folder.name + ".writing"), folder.with_name(folder.name + ".old")


def discard_state(folder: Path) -> None:
    """Remove a stage's saved steps (``folder`` and what a save keeps beside it), or every stage's
    under ``folder``."""
    for path in (folder, *_beside(folder)):
        shutil.rmtree(path, ignore_errors=True)


def _save_state(folder: Path, named: list[tuple[str, Any]], optimizer: Any, run: _Run, step: int, fp: str) -> None:
    from safetensors.torch import save_file

    tmp, old = _beside(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous().cpu() for n, p in named}, str(tmp / "trainable.safetensors"))
    opt = optimizer.state_dict()
    flat = {f"{i}.{k}": v.contiguous().cpu() for i, s in opt["state"].items() for k, v in s.items()}
    save_file(flat, str(tmp / "optimizer.safetensors"))
    meta = {"fingerprint": fp, "step": step, "losses": run.result.losses, "param_groups": opt["param_groups"],
            "wall_s": run.result.wall_s + time.monotonic() - run.started, "answer_tokens": run.result.answer_tokens}
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(folder: Path, named: list[tuple[str, Any]], optimizer: Any, fp: str) -> dict[str, Any] | None:
    """Restore a saved step of the same stage (same configuration, data size and seed)."""
    from safetensors.torch import load_file

    old = _beside(folder)[1]
    if not (folder / "state.json").is_file() and (old / "state.json").is_file():
        folder = old
    meta_path = folder / "state.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fp:
        return None  # another configuration: start over (the caller's folder is per stage)
    weights = load_file(str(folder / "trainable.safetensors"))
    for name, p in named:
        p.data.copy_(weights[name].to(p.device, p.dtype))
    flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _micro_batches(n: int, stage: StageSpec, seed: int) -> list[list[int]]:
    order = _order(n, stage.epochs, seed)
    rank, world = _world()
    batches = [order[i:i + stage.batch_size] for i in range(0, len(order), stage.batch_size)]
    return batches[rank::world]


def _autocast(device: str, bf16: bool) -> Any:
    import contextlib

    import torch

    if bf16 and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _step(run: _Run, step: int, module: Any, optimizer: Any, batch_of: Callable[[list[int]], dict],
          device: str, bf16: bool) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
    accum = run.stage.grad_accum
    chunk = run.micro[step * accum:(step + 1) * accum]
    for group in optimizer.param_groups:
        group["lr"] = run.stage.lr * _schedule(step, run.total_steps, run.stage.warmup)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for ids in chunk:
        batch = {k: v.to(device) for k, v in batch_of(ids).items()}
        run.result.answer_tokens += int((batch["labels"] != IGNORE).sum())
        with _autocast(device, bf16):
            loss = module(**batch) / len(chunk)
        loss.backward()
        total += float(loss.detach())
    import torch

    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return total


def train_stage(model: Any, processor: Any, samples: Sequence[Sample], stage: StageSpec, state_dir: Path, *,
                seed: int, device: str, system: str, max_length: int, bf16: bool = True,
                log: Log | None = None, start: str = "") -> StageResult:
    """Train ``stage`` on ``samples``, resuming from ``state_dir`` when it holds a saved step of
    the same stage from the same ``start`` (:func:`stage_fingerprint`); a finished stage is
    restored, not retrained."""
    import torch

    if not samples:
        raise ValueError(f"stage {stage.name}: no training samples")
    say = log or (lambda _m: None)
    named = set_trainable(model, stage.trainable)
    model.to(device)
    model.train()
    micro = _micro_batches(len(samples), stage, seed)
    total = math.ceil(len(micro) / stage.grad_accum)
    if stage.max_steps:
        total = min(total, stage.max_steps)
    fp = stage_fingerprint(stage, samples, seed, start)
    run = _Run(stage, micro, total, StageResult(stage.name, total, len(samples), fingerprint=fp))
    optimizer = torch.optim.AdamW([p for _, p in named], lr=stage.lr, weight_decay=stage.weight_decay)
    first = _resume(state_dir, named, optimizer, fp, run, say)
    if first >= total:
        return run.result
    module = _wrap(AnswerLoss(model).module, device)
    torch.manual_seed(seed)

    length = stage.max_length or max_length

    def batch_of(ids: list[int]) -> dict:
        return encode_training(processor, [samples[i] for i in ids], system, length)

    every = max(1, total // 10)
    for step in range(first, total):
        run.result.losses.append(_step(run, step, module, optimizer, batch_of, device, bf16))
        done = step + 1
        if done % every == 0 or done == total:
            say(f"{stage.name}: step {done}/{total}, loss {run.result.losses[-1]:.4f}")
        if (done % stage.save_every == 0 or done == total) and _world()[0] == 0:
            _save_state(state_dir, named, optimizer, run, done, fp)
    run.result.wall_s += time.monotonic() - run.started
    model.eval()
    return run.result


def _resume(state_dir: Path, named: list, optimizer: Any, fp: str, run: _Run, say: Log) -> int:
    meta = _load_state(state_dir, named, optimizer, fp)
    if not meta:
        return 0
    run.result.losses = list(meta["losses"])
    run.result.resumed_from = meta["step"]
    run.result.wall_s = meta["wall_s"]
    run.result.answer_tokens = meta.get("answer_tokens", 0)
    if meta["step"] >= run.total_steps:
        say(f"{run.stage.name}: already trained ({meta['step']} steps), restored")
    else:
        say(f"{run.stage.name}: resuming at step {meta['step']}/{run.total_steps}")
    return int(meta["step"])


def _wrap(module: Any, device: str) -> Any:
    """DistributedDataParallel under torchrun (gradients averaged across ranks), else the module."""
    import torch

    if _world()[1] == 1:
        return module
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    # find_unused_parameters: the vision tower's pooled head is never used by LLaVA (it reads hidden states)
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
