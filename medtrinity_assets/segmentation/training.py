"""Training the expert of a modality on the sources of that modality that have masks (binary
foreground: any label > 0), with a held-out split whose Dice is recorded next to the classical
fallback's on the same images, so the card says whether the network is worth using."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtrinity_assets.core.images import read_label_map, read_png
from medtrinity_assets.core.vocabulary import canonical_modality, modality_slug
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.segmentation.classical import classical_segment
from medtrinity_assets.segmentation.domain import training_domain
from medtrinity_assets.segmentation.network import (
    ExpertConfig,
    ExpertPredictor,
    _prepare,
    _prepare_mask,
    build_network,
    dice,
)
from medtrinity_assets.segmentation.records import ExpertTarget, ExpertTrainResult


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n >= 2 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op thread count set to ``n`` for the block (unchanged for None)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_expert(
    samples: list[tuple[np.ndarray, np.ndarray]],
    *,
    modality: str,
    device: str = "cpu",
    config: ExpertConfig | None = None,
    seed: int = 0,
    training_sources: dict[str, Any] | list[str] | None = None,
    target: ExpertTarget | None = None,
) -> ExpertTrainResult:
    """Train a 2D U-Net on (image, label map) pairs: binary foreground, seeded, held-out Dice.

    The held-out Dice (mean per image, at native resolution) is recorded with the classical
    fallback's Dice on the same images. Training stops early at ``max_train_seconds``.
    """
    from monai.losses import DiceCELoss

    cfg = config or ExpertConfig()
    if len(samples) < 2:
        raise ValueError("train_expert needs at least two samples (one is held out)")
    mod = canonical_modality(modality)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    train_idx, val_idx = _split(len(samples), cfg.val_fraction, seed)
    dev = torch.device(device)
    x = torch.stack([_prepare(samples[i][0], cfg.image_size) for i in train_idx])
    y = torch.stack([_prepare_mask(samples[i][1], cfg.image_size) for i in train_idx])
    net = build_network(cfg).to(dev)
    with _cpu_threads(cfg.cpu_threads if dev.type == "cpu" else None):
        history, epochs_run, train_seconds = _fit(net, x, y, cfg, dev, DiceCELoss(sigmoid=True), seed)
    net.eval()
    name = target.name if target is not None else f"unet_{modality_slug(mod)}"
    predictor = ExpertPredictor(
        net, name=name, modality=mod, image_size=cfg.image_size, threshold=cfg.threshold, device=device
    )
    expert_d, classical_d = _held_out_dice(predictor, [samples[i] for i in val_idx], mod)
    if isinstance(training_sources, list):
        training_sources = {s: None for s in training_sources}
    metrics = {
        "dice": float(np.mean(expert_d)) if expert_d else math.nan,
        "classical_dice": float(np.mean(classical_d)) if classical_d else math.nan,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "epochs_run": epochs_run,
        "final_train_loss": history[-1] if history else None,
        "train_seconds": round(train_seconds, 2),
        "device": str(device),
        # what its training images were like (target area, image size, target brighter or darker
        # than the rest of the tissue): a prediction on an image unlike them is not used
        **training_domain([samples[i] for i in train_idx]),
    }
    return ExpertTrainResult(
        network=net.cpu(),
        config=cfg,
        modality=mod,
        name=name,
        seed=seed,
        metrics=metrics,
        training_sources=dict(training_sources or {}),
        history=history,
        target=target,
    )


def _fit(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ExpertConfig,
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seed: int,
) -> tuple[list[float], int, float]:
    """Train ``net`` on ``(x, y)`` with Adam and a cosine schedule over ``cfg.epochs``, stopping
    early past ``cfg.max_train_seconds``: the mean loss of each epoch, the epochs run and the
    seconds taken."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    t0 = time.perf_counter()
    epochs_run = 0
    for _epoch in range(cfg.epochs):
        batches = _batches(x, y, cfg.batch_size, cfg.augment_flips, gen)
        epoch_loss = _train_epoch(net, batches, opt, loss_fn, device)
        sched.step()
        history.append(epoch_loss)
        epochs_run += 1
        if cfg.max_train_seconds is not None and time.perf_counter() - t0 > cfg.max_train_seconds:
            break
    return history, epochs_run, time.perf_counter() - t0


def _batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, flips: bool, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches of ``(x, y)``; with ``flips`` each batch is flipped left-right and
    up-down, each with probability 1/2."""
    perm = torch.randperm(len(x), generator=gen)
    for start in range(0, len(perm), batch_size):
        idx = perm[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if flips:
            coins = torch.rand(2, generator=gen)
            if coins[0] < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            if coins[1] < 0.5:
                xb, yb = xb.flip(-2), yb.flip(-2)
        yield xb, yb


def _train_epoch(
    net: torch.nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> float:
    """One pass of optimiser steps over ``batches``; the loss averaged over the samples."""
    net.train()
    total, count = 0.0, 0
    for xb, yb in batches:
        n = len(xb)
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * n
        count += n
    return total / max(count, 1)


def _held_out_dice(
    predictor: ExpertPredictor, held_out: list[tuple[np.ndarray, np.ndarray]], modality: str
) -> tuple[list[float], list[float]]:
    """Dice of the expert and of the classical fallback on each held-out (image, label map)."""
    val_images = [image for image, _ in held_out]
    val_masks = [mask for _, mask in held_out]
    preds = predictor.predict(val_images) if val_images else []
    expert_d = [dice(p, t) for p, t in zip(preds, val_masks, strict=True)]
    classical_d = [
        dice(classical_segment(im, modality), t) for im, t in zip(val_images, val_masks, strict=True)
    ]
    return expert_d, classical_d


def _masked_images(spec: SourceSpec, out: Path) -> list[tuple[str, str, str, dict[int, str]]]:
    """``(record_id, image_path, mask_path, {value: name})`` of a source's images with masks."""
    import polars as pl

    from medtrinity_assets.core.parts import part_paths
    from medtrinity_assets.core.tables import PREPROCESSED_IMAGES

    paths = part_paths(PREPROCESSED_IMAGES, out, spec.name)
    if not paths:
        return []
    cols = ["record_id", "image_path", "mask_path", "mask_labels", "mask_label_names"]
    try:  # every shard of the source
        df = pl.concat([pl.read_parquet(p, columns=cols) for p in paths])
        df = df.filter(pl.col("mask_path").is_not_null()).sort("record_id")
    except Exception:  # noqa: BLE001 - an unreadable table contributes nothing
        return []
    rows = []
    for rec, img, msk, values, names in df.iter_rows():
        named = {int(v): str(n) for v, n in zip(values or [], names or [], strict=False) if n}
        named.update({v: spec.labels[v] for v in (values or []) if v in spec.labels})
        rows.append((rec, img, msk, named))
    return rows


def needed_scopes(specs: list[SourceSpec], out: str | Path) -> set[tuple[str, str, bool]]:
    """``(modality, organ, synthetic)`` of the sources that have images with neither mask nor box:
    only experts for those are worth training (an expert grounds what has no annotation)."""
    import polars as pl

    from medtrinity_assets.core.parts import part_paths
    from medtrinity_assets.core.tables import PREPROCESSED_IMAGES

    scopes = set()
    for spec in specs:
        bare = 0
        for path in part_paths(PREPROCESSED_IMAGES, out, spec.name):  # every shard of the source
            df = pl.read_parquet(path, columns=["mask_path", "boxes"])
            bare += df.filter(pl.col("mask_path").is_null() & (pl.col("boxes").list.len().fill_null(0) == 0)).height
        if bare:
            t = ExpertTarget.of(spec, "")
            scopes.add((t.modality, t.organ, t.synthetic))
    return scopes


def collect_training_samples(
    specs: list[SourceSpec], out: str | Path, *, max_samples: int = 400, seed: int = 0
) -> dict[ExpertTarget, tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]]:
    """(image, binary mask of the label) pairs per :class:`ExpertTarget` from the sources whose
    ``preprocessed_images`` have masks, with the number of images taken from each source.

    At most ``max_samples`` per target, chosen deterministically (seeded) across sources.
    Unreadable files and size mismatches are skipped.
    """
    out = Path(out)
    candidates: dict[ExpertTarget, list[tuple[str, str, str, int]]] = {}
    for spec in specs:
        for _rec, img, msk, named in _masked_images(spec, out):
            for value, name in named.items():
                candidates.setdefault(ExpertTarget.of(spec, name), []).append((spec.name, img, msk, value))
    result: dict[ExpertTarget, tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]] = {}
    for target, items in sorted(candidates.items(), key=lambda kv: kv[0].slug):
        if len(items) > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_samples, replace=False))
            items = [items[i] for i in keep]
        result[target] = _load_samples(out, items)
    return result


def _load_samples(out: Path, items: list[tuple[str, str, str, int]]) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    samples: list[tuple[np.ndarray, np.ndarray]] = []
    provenance: dict[str, int] = {}
    for source, img, msk, value in items:
        try:
            image, mask = read_png(out / img), read_label_map(out / msk)
        except Exception:  # noqa: BLE001 - an unreadable file is skipped
            continue
        if mask.shape != image.shape[:2]:
            continue
        samples.append((image, (mask == value).astype(np.uint8)))
        provenance[source] = provenance.get(source, 0) + 1
    return samples, provenance


@dataclass
class ExpertsReport:
    """What :func:`train_experts` trained (cards' metrics per target) and skipped (why)."""

    directory: Path
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def markdown(self) -> str:
        rows = [
            f"| {m} | {s['dice']:.3f} | {s['classical_dice']:.3f} | {s['n_train']} | {s['n_val']} |"
            for m, s in self.summary.items()
        ]
        return "| expert (modality__organ__label) | expert Dice | classical Dice | train | val |\n|---|---|---|---|---|\n" + "\n".join(rows)


def train_experts(
    specs: list[SourceSpec],
    out: str | Path,
    config: ExpertConfig,
    *,
    device: str = "cpu",
    min_samples: int = 8,
    max_samples: int = 400,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> ExpertsReport:
    """Train and save one expert per :class:`ExpertTarget` (modality, organ, label) with at least
    ``min_samples`` masked images; older experts of the folder are replaced. Two trainings into one
    output root (a build while the UI's automation starts one) take turns: they would share the
    staging folder."""
    from medtrinity_assets.core.storage import held_lock

    out = Path(out)
    def waiting() -> None:
        if log:
            log("another run is training the expert models of this output root: waiting for it to finish")

    with held_lock(out / ".expert_models.lock", waiting):
        return _train_experts(specs, out, config, device=device, min_samples=min_samples,
                              max_samples=max_samples, seed=seed, log=log)


def _train_experts(specs: list[SourceSpec], out: Path, config: ExpertConfig, *, device: str, min_samples: int,
                   max_samples: int, seed: int, log: Callable[[str], None] | None) -> ExpertsReport:
    import shutil

    from medtrinity_assets.segmentation.store import save_expert

    report = ExpertsReport(out / "expert_models")
    staging = out / ".expert_models.new"
    shutil.rmtree(staging, ignore_errors=True)
    needed = needed_scopes(specs, out)
    targets = collect_training_samples(specs, out, max_samples=max_samples, seed=seed)
    for target, (samples, provenance) in targets.items():
        if (target.modality, target.organ, target.synthetic) not in needed:
            report.skipped[target.slug] = "no registered source has unannotated images of this modality and organ"
            continue
        if len(samples) < min_samples:
            report.skipped[target.slug] = f"only {len(samples)} masked images (< {min_samples})"
            continue
        if log:
            log(f"training expert {target.name} on {len(samples)} images from {sorted(provenance)}")
        result = train_expert(
            samples, modality=target.modality, device=device, config=config, seed=seed,
            training_sources=provenance, target=target,
        )
        save_expert(result, staging / target.slug)
        report.summary[target.slug] = {k: result.metrics.get(k) for k in ("dice", "classical_dice", "n_train", "n_val")}
    _replace_folder(staging, report.directory)  # experts whose training data is gone do not linger
    return report


def _replace_folder(new: Path, old: Path) -> None:
    """Put ``new`` in place of ``old`` (an empty folder when nothing was trained)."""
    import shutil

    new.mkdir(parents=True, exist_ok=True)
    retired = old.with_name(f".{old.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if old.exists():
        old.rename(retired)
    new.rename(old)
    shutil.rmtree(retired, ignore_errors=True)
