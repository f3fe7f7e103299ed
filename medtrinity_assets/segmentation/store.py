"""Saving and loading experts: ``model.safetensors`` and ``card.json`` (architecture, training
sources, metrics, the weights' sha256). Weights are loaded only when their hash matches the card
(or the hash a registry pins); TorchScript only from a path the user declared."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medtrinity_assets.core.storage import atomic_write_bytes, sha256_file
from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.segmentation.network import ExpertConfig, ExpertPredictor, build_network

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.segmentation.records import ExpertTrainResult

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
CARD_FORMAT = "medtrinity-expert-v1"
TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript", ".jit"}



class ExpertLoadError(ValueError):
    """Expert weights could not be loaded (missing, wrong format, wrong architecture)."""


class ExpertIntegrityError(ExpertLoadError):
    """The weights file's sha256 does not match its card (or the pinned hash)."""


def save_expert(result: ExpertTrainResult, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``card.json`` (atomically); returns the card's path."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.network.state_dict().items()}
    blob = save(state, metadata={"format": CARD_FORMAT, "modality": result.modality, "name": result.name})
    weights = directory / WEIGHTS_NAME
    atomic_write_bytes(weights, blob)
    card = {
        "format": CARD_FORMAT,
        "name": result.name,
        "modality": result.modality,
        "architecture": "monai.networks.nets.UNet(spatial_dims=2, in_channels=1, out_channels=1)",
        **_target_fields(result),
        "config": {
            **asdict(result.config),
            "channels": list(result.config.channels),
            "strides": list(result.config.strides),
        },
        "seed": result.seed,
        "training_sources": result.training_sources,
        "metrics": result.metrics,
        "loss_history": [round(v, 5) for v in result.history],
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": sha256_file(weights),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card_path = directory / CARD_NAME
    atomic_write_bytes(card_path, (json.dumps(card, indent=2, default=str) + "\n").encode("utf-8"))
    return card_path


def _target_fields(result: ExpertTrainResult) -> dict:
    """What the expert was trained on (and may be used on): its card's scope."""
    t = result.target
    if t is None:
        return {"target": "binary foreground (any mask label > 0)", "modalities": [result.modality]}
    return {
        "target": f"binary mask of '{t.label}'",
        "modalities": [t.modality],
        "organs": [t.organ],
        "labels": [t.label],
        "synthetic": t.synthetic,
    }


def _check_hash(path: Path, *expected: str | None) -> str:
    actual = sha256_file(path)
    for exp in expected:
        if exp is not None and exp.lower() != actual:
            raise ExpertIntegrityError(
                f"refusing {path.name}: sha256 {actual[:16]}... does not match the expected {exp[:16]}..."
            )
    return actual


def _load_safetensors_into(path: Path, config: ExpertConfig) -> torch.nn.Module:
    from safetensors.torch import load_file

    net = build_network(config)
    try:
        state = load_file(str(path))
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ExpertLoadError(f"{path.name}: weights do not fit the configured U-Net: {exc}") from exc
    return net


def load_expert(
    path: str | Path,
    expected_sha256: str | None = None,
    *,
    device: str = "cpu",
    config: ExpertConfig | None = None,
    modality: str = "",
    label: str | None = None,
) -> ExpertPredictor:
    """Load an expert from a directory or ``card.json`` (hash-checked against the card), a
    user's safetensors file (our architecture, ``config`` or the defaults), or a user's
    TorchScript file (``.pt/.pth/.ts/.torchscript/.jit``; only call this on a path the user
    declared: TorchScript runs code). ``expected_sha256`` pins the weights' hash in every case.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / CARD_NAME
    if not p.exists():
        raise ExpertLoadError(f"expert weights not found: {p}")
    if p.suffix == ".json":
        return _from_card(p, expected_sha256, device, modality, label)
    if p.suffix == ".safetensors":
        sibling = _sibling_card(p)
        if sibling is not None:
            return _from_card(sibling, expected_sha256, device, modality, label)
        _check_hash(p, expected_sha256)
        cfg = config or ExpertConfig()
        return _user_predictor(_load_safetensors_into(p, cfg), p, cfg, device, modality, label)
    if p.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        _check_hash(p, expected_sha256)
        try:
            net = torch.jit.load(str(p), map_location=device)
        except Exception as exc:
            raise ExpertLoadError(f"{p.name}: not a loadable TorchScript module: {exc}") from exc
        return _user_predictor(net, p, config or ExpertConfig(), device, modality, label)
    raise ExpertLoadError(f"{p.name}: unsupported expert format (use a card.json, .safetensors or TorchScript)")


def _from_card(p: Path, expected_sha256: str | None, device: str, modality: str, label: str | None) -> ExpertPredictor:
    """An expert from its ``card.json``: the weights beside it, checked against the card's hash."""
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExpertLoadError(f"{p}: unreadable card: {exc}") from exc
    if card.get("format") != CARD_FORMAT:
        raise ExpertLoadError(f"{p}: not an expert card (format {card.get('format')!r})")
    weights = p.parent / Path(str(card["weights_file"])).name
    if not weights.exists():
        raise ExpertLoadError(f"{p}: weights file {weights.name} is missing")
    _check_hash(weights, card.get("weights_sha256"), expected_sha256)
    cfg = ExpertConfig.from_dict(card.get("config", {}))
    return ExpertPredictor(
        _load_safetensors_into(weights, cfg),
        name=str(card.get("name") or "unet"),
        modality=str(card.get("modality") or modality),
        image_size=cfg.image_size,
        threshold=cfg.threshold,
        device=device,
        card=card,
        label=(card.get("labels") or [label or "region"])[0],
    )


def _sibling_card(p: Path) -> Path | None:
    """The ``card.json`` beside a safetensors file that names it, if any."""
    sibling = p.parent / CARD_NAME
    if not sibling.exists():
        return None
    try:
        card = json.loads(sibling.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return sibling if card.get("format") == CARD_FORMAT and card.get("weights_file") == p.name else None


def _user_predictor(
    net: torch.nn.Module, p: Path, cfg: ExpertConfig, device: str, modality: str, label: str | None
) -> ExpertPredictor:
    return ExpertPredictor(
        net,
        name=f"user_{p.stem}",
        modality=modality,
        image_size=cfg.image_size,
        threshold=cfg.threshold,
        device=device,
        label=label or "region",
    )


#: an expert is used only when its held-out Dice reaches this and beats the classical fallback's
MIN_EXPERT_DICE = 0.7


def _matches(card: dict, spec: SourceSpec) -> bool:
    """Whether an expert's card covers a source (same modality, organ and synthetic flag) and its
    held-out Dice says it is worth using."""
    organ = spec.organ.strip().lower()
    metrics = card.get("metrics", {})
    dice, classical = metrics.get("dice") or 0.0, metrics.get("classical_dice") or 0.0
    return (
        canonical_modality(spec.modality) in card.get("modalities", [])
        and organ in card.get("organs", [])
        and bool(card.get("synthetic", False)) == spec.synthetic
        and dice >= MIN_EXPERT_DICE
        and dice > classical
    )


def load_experts_for(spec: SourceSpec, experts_dir: str | Path, *, device: str = "cpu") -> list[ExpertPredictor]:
    """The experts a source may use: its declared ``expert_model`` (path relative to the registry
    file; refused unless it matches ``expert_model_sha256`` when that is declared), else every
    trained expert whose card names the source's modality and organ (checked against its card's
    hash). An expert trained on other anatomy is never applied."""
    mod = canonical_modality(spec.modality)
    if spec.expert_model:
        p = Path(spec.expert_model).expanduser()
        if not p.is_absolute() and spec.registry_file:
            p = Path(spec.registry_file).parent / p
        return [load_expert(p, spec.expert_model_sha256, device=device, modality=mod, label=spec.expert_label)]
    out = []
    for card_path in sorted(Path(experts_dir).glob(f"*/{CARD_NAME}")):
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if card.get("format") == CARD_FORMAT and _matches(card, spec):
            out.append(load_expert(card_path, device=device, modality=mod))
    return out


def load_expert_for(spec: SourceSpec, experts_dir: str | Path, *, device: str = "cpu") -> ExpertPredictor | None:
    """The first of :func:`load_experts_for`, or None."""
    found = load_experts_for(spec, experts_dir, device=device)
    return found[0] if found else None


def experts_version(experts_dir: str | Path) -> str:
    """A hash of what the trained experts are (cards without their timestamps, which include the
    weights' sha256 and the gates): equal for a retraining that produced the same models."""
    import hashlib

    digest = hashlib.sha256()
    for card_path in sorted(Path(experts_dir).glob(f"**/{CARD_NAME}")):
        card = json.loads(card_path.read_text(encoding="utf-8"))
        card.pop("created_at", None)
        digest.update(card_path.parent.relative_to(experts_dir).as_posix().encode())
        digest.update(json.dumps(card, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]
