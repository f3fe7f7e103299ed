"""Expert grounding models: a small MONAI U-Net per modality, and a classical fallback.

The paper grounds sources that have no ROI annotation with expert segmenters. Here the expert
of a modality is trained, inside the pipeline, on the sources of that modality that *do* have
masks (binary foreground: any label > 0), with a held-out split whose Dice is recorded next
to the Dice of the classical fallback on the same images, so the card says whether the network
is worth using. A user can declare their own weights per source (``expert_model`` in the
registry): a safetensors file for our architecture, or a TorchScript file.

Files of a trained expert (``save_expert``): ``<dir>/model.safetensors`` and ``<dir>/card.json``
(modality, architecture config, training sources and their image counts, metrics, the
sha256 of the weights). ``load_expert`` refuses weights whose sha256 differs from the card's
(or from an ``expected_sha256`` the caller pins).

Inputs are reduced to one grey channel, z-scored per image and resized to a fixed square;
predictions are resized back to each image's own size.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medtrinity_assets.registry import SourceSpec, canonical_modality
from medtrinity_assets.roi_attributes import RoiConfig, default_config, to_grey
from medtrinity_assets.storage import atomic_write_bytes, sha256_file

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
CARD_FORMAT = "medtrinity-expert-v1"
TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript", ".jit"}


class ExpertLoadError(ValueError):
    """Expert weights could not be loaded (missing, wrong format, wrong architecture)."""


class ExpertIntegrityError(ExpertLoadError):
    """The weights file's sha256 does not match its card (or the pinned hash)."""


@dataclass
class ExpertConfig:
    """Architecture and training settings (all recorded in the card)."""

    image_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 0
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-2
    val_fraction: float = 0.2
    threshold: float = 0.5
    augment_flips: bool = True
    max_train_seconds: float | None = 110.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpertConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("channels", "strides"):
            if key in known:
                known[key] = tuple(int(x) for x in known[key])
        return cls(**known)


def build_network(config: ExpertConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(config.channels),
        strides=tuple(config.strides),
        num_res_units=config.num_res_units,
    )


def modality_slug(modality: str) -> str:
    return canonical_modality(modality).replace(" ", "_").replace("/", "_")


# --------------------------------------------------------------------------------------
# tensors


def _prepare(image: np.ndarray, size: int) -> torch.Tensor:
    """Grey, z-scored, resized to ``size`` x ``size``: a (1, size, size) float tensor."""
    grey = to_grey(image).astype(np.float32)
    std = float(grey.std())
    grey = (grey - float(grey.mean())) / (std if std > 1e-6 else 1.0)
    t = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0]


def _prepare_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    m = torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))[None, None]
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (m[0] > 0.5).float()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth) > 0
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


# --------------------------------------------------------------------------------------
# predictor


class ExpertPredictor:
    """A loaded expert: ``predict(images) -> masks`` (boolean, each at its image's size)."""

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        name: str,
        modality: str,
        image_size: int,
        threshold: float = 0.5,
        device: str = "cpu",
        card: dict[str, Any] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.name = name
        self.modality = modality
        self.image_size = int(image_size)
        self.threshold = float(threshold)
        self.card = card or {}

    def __repr__(self) -> str:
        return f"ExpertPredictor(name={self.name!r}, modality={self.modality!r}, device={self.device})"

    @torch.no_grad()
    def predict_proba(self, images: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.stack([_prepare(im, self.image_size) for im in chunk]).to(self.device)
            logits = self.network(x)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            if logits.shape[1] == 1:
                prob = torch.sigmoid(logits)
            else:  # multi-class output: foreground = not class 0
                prob = 1.0 - torch.softmax(logits, dim=1)[:, :1]
            prob = prob.float().cpu()
            for im, p in zip(chunk, prob, strict=True):
                h, w = np.asarray(im).shape[:2]
                if (h, w) != tuple(p.shape[-2:]):
                    p = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                out.append(p[0].numpy())
        return out

    def predict(self, images: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        return [p >= self.threshold for p in self.predict_proba(images, batch_size=batch_size)]


# --------------------------------------------------------------------------------------
# classical fallback


_DARK_FOREGROUND = {"histopathology"}
_BRIGHT_FOREGROUND = {"nuclear medicine", "pet"}


def classical_segment(
    image: np.ndarray, modality: str = "", *, config: RoiConfig | None = None
) -> np.ndarray:
    """Otsu threshold of the smoothed grey image, opening, hole filling; a boolean mask.

    Foreground polarity: dark for histopathology (haematoxylin-stained nuclei), bright for
    nuclear medicine / PET (uptake), otherwise the minority side of the threshold (objects
    are usually smaller than their background). Components are separated later by the ROI
    stage, which also drops those under ``predicted_min_area_px``.
    """
    from skimage.filters import threshold_otsu

    cfg = config or default_config()
    grey = to_grey(image)
    if cfg.classical_smooth_sigma > 0:
        grey = ndimage.gaussian_filter(grey, cfg.classical_smooth_sigma)
    if float(grey.max()) - float(grey.min()) < 1e-9:
        return np.zeros(grey.shape, bool)
    t = threshold_otsu(grey)
    bright = grey > t
    mod = canonical_modality(modality or "")
    if mod in _DARK_FOREGROUND:
        fg = ~bright
    elif mod in _BRIGHT_FOREGROUND:
        fg = bright
    else:
        fg = bright if bright.mean() <= 0.5 else ~bright
    r = int(cfg.classical_opening_radius)
    if r > 0:
        y, x = np.ogrid[-r : r + 1, -r : r + 1]
        fg = ndimage.binary_opening(fg, structure=(x * x + y * y) <= r * r)
    return ndimage.binary_fill_holes(fg)


# --------------------------------------------------------------------------------------
# training


@dataclass
class ExpertTrainResult:
    """A trained expert network with the facts its card records."""

    network: torch.nn.Module
    config: ExpertConfig
    modality: str
    name: str
    seed: int
    metrics: dict[str, Any]
    training_sources: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)

    def predictor(self, device: str = "cpu") -> ExpertPredictor:
        return ExpertPredictor(
            self.network,
            name=self.name,
            modality=self.modality,
            image_size=self.config.image_size,
            threshold=self.config.threshold,
            device=device,
        )


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n >= 2 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_expert(
    samples: list[tuple[np.ndarray, np.ndarray]],
    *,
    modality: str,
    device: str = "cpu",
    config: ExpertConfig | None = None,
    seed: int = 0,
    training_sources: dict[str, Any] | list[str] | None = None,
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
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    loss_fn = DiceCELoss(sigmoid=True)
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    t0 = time.perf_counter()
    epochs_run = 0
    for _epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(train_idx), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if cfg.augment_flips:
                flips = torch.rand(2, generator=gen)
                if flips[0] < 0.5:
                    xb, yb = xb.flip(-1), yb.flip(-1)
                if flips[1] < 0.5:
                    xb, yb = xb.flip(-2), yb.flip(-2)
            xb, yb = xb.to(dev), yb.to(dev)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        sched.step()
        history.append(total / max(count, 1))
        epochs_run += 1
        if cfg.max_train_seconds is not None and time.perf_counter() - t0 > cfg.max_train_seconds:
            break
    train_seconds = time.perf_counter() - t0
    net.eval()
    name = f"unet_{modality_slug(mod)}"
    predictor = ExpertPredictor(
        net, name=name, modality=mod, image_size=cfg.image_size, threshold=cfg.threshold, device=device
    )
    val_images = [samples[i][0] for i in val_idx]
    val_masks = [samples[i][1] for i in val_idx]
    preds = predictor.predict(val_images) if val_images else []
    expert_d = [dice(p, t) for p, t in zip(preds, val_masks, strict=True)]
    classical_d = [dice(classical_segment(im, mod), t) for im, t in zip(val_images, val_masks, strict=True)]
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
    )


# --------------------------------------------------------------------------------------
# saving and loading


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
        "target": "binary foreground (any mask label > 0)",
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
        net = _load_safetensors_into(weights, cfg)
        return ExpertPredictor(
            net,
            name=str(card.get("name") or "unet"),
            modality=str(card.get("modality") or modality),
            image_size=cfg.image_size,
            threshold=cfg.threshold,
            device=device,
            card=card,
        )
    if p.suffix == ".safetensors":
        sibling = p.parent / CARD_NAME
        if sibling.exists():
            try:
                card = json.loads(sibling.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                card = {}
            if card.get("format") == CARD_FORMAT and card.get("weights_file") == p.name:
                return load_expert(sibling, expected_sha256, device=device, modality=modality)
        _check_hash(p, expected_sha256)
        cfg = config or ExpertConfig()
        net = _load_safetensors_into(p, cfg)
        return ExpertPredictor(
            net,
            name=f"user_{p.stem}",
            modality=modality,
            image_size=cfg.image_size,
            threshold=cfg.threshold,
            device=device,
        )
    if p.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        _check_hash(p, expected_sha256)
        try:
            net = torch.jit.load(str(p), map_location=device)
        except Exception as exc:
            raise ExpertLoadError(f"{p.name}: not a loadable TorchScript module: {exc}") from exc
        cfg = config or ExpertConfig()
        return ExpertPredictor(
            net,
            name=f"user_{p.stem}",
            modality=modality,
            image_size=cfg.image_size,
            threshold=cfg.threshold,
            device=device,
        )
    raise ExpertLoadError(
        f"{p.name}: unsupported expert format (use a card.json, .safetensors or TorchScript)"
    )


def load_expert_for(
    spec: SourceSpec, experts_dir: str | Path, *, device: str = "cpu"
) -> ExpertPredictor | None:
    """The expert a source should use: its declared ``expert_model`` (path relative to the
    registry file; refused unless it matches ``expert_model_sha256`` when that is declared), else
    the trained expert of its modality under ``experts_dir`` (checked against its card), else None."""
    mod = canonical_modality(spec.modality)
    if spec.expert_model:
        p = Path(spec.expert_model).expanduser()
        if not p.is_absolute() and spec.registry_file:
            p = Path(spec.registry_file).parent / p
        return load_expert(p, spec.expert_model_sha256, device=device, modality=mod)
    card = Path(experts_dir) / modality_slug(mod) / CARD_NAME
    if card.exists():
        return load_expert(card, device=device, modality=mod)
    return None


def collect_training_samples(
    specs: list[SourceSpec], out: str | Path, *, max_samples: int = 400, seed: int = 0
) -> dict[str, tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]]:
    """(image, label map) pairs per canonical modality from the sources whose
    ``preprocessed_images`` have masks, with the number of images taken from each source.

    At most ``max_samples`` per modality, chosen deterministically (seeded) across sources.
    Unreadable files and size mismatches are skipped.
    """
    import polars as pl

    from medtrinity_assets.rois import read_label_map, read_png
    from medtrinity_assets.storage import table_path

    out = Path(out)
    candidates: dict[str, list[tuple[str, str, str, str]]] = {}
    for spec in specs:
        path = table_path(out, "preprocessed_images", spec.name)
        if not path.exists():
            continue
        try:
            df = pl.read_parquet(path, columns=["record_id", "image_path", "mask_path"])
        except Exception:
            continue
        df = df.filter(pl.col("mask_path").is_not_null()).sort("record_id")
        mod = canonical_modality(spec.modality)
        for rec, img, msk in df.iter_rows():
            candidates.setdefault(mod, []).append((spec.name, rec, img, msk))
    result: dict[str, tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]] = {}
    for mod, items in sorted(candidates.items()):
        if len(items) > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_samples, replace=False))
            items = [items[i] for i in keep]
        samples: list[tuple[np.ndarray, np.ndarray]] = []
        provenance: dict[str, int] = {}
        for source, _rec, img, msk in items:
            try:
                image = read_png(out / img)
                mask = read_label_map(out / msk)
            except Exception:
                continue
            if mask.shape != image.shape[:2]:
                continue
            samples.append((image, mask))
            provenance[source] = provenance.get(source, 0) + 1
        result[mod] = (samples, provenance)
    return result


# --------------------------------------------------------------------------------------
# synthetic phantoms


def generate_phantoms(
    n: int,
    size: int = 64,
    seed: int = 0,
    *,
    object_contrast: float = 0.35,
    bias: float = 0.9,
    noise: float = 0.12,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """MONAI circle phantoms with a strong linear bias field and Gaussian noise.

    Returns ``(image uint8 (size, size), mask uint8 {0, 1})`` pairs. Objects are only
    ``object_contrast`` brighter than their local background while the bias field spans
    ``bias`` across the image, so a global (Otsu) threshold cuts along the gradient instead
    of around the objects; a network that sees local context can still find them.
    """
    from monai.data.synthetic import create_test_image_2d

    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n):
        img, seg = create_test_image_2d(
            size,
            size,
            num_objs=int(rs.randint(2, 7)),
            rad_max=max(size // 7, 4),
            rad_min=max(size // 20, 2),
            noise_max=0.0,
            num_seg_classes=1,
            random_state=rs,
        )
        mask = (np.asarray(seg) > 0).astype(np.uint8)
        angle = rs.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
        obj = np.asarray(img, np.float64)
        obj = obj / obj.max() if obj.max() > 0 else obj
        field = bias * ramp + object_contrast * obj + rs.normal(0.0, noise, (size, size))
        field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
        out.append(((field * 255).round().astype(np.uint8), mask))
    return out
