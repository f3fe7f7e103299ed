"""The expert network: a small MONAI 2D U-Net, its input preparation and a predictor.

Inputs are reduced to one grey channel, z-scored per image and resized to a fixed square;
predictions are resized back to each image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medtrinity_assets.core.images import to_grey


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
    #: intra-op threads on CPU: this small network trains about 5x faster on one thread than on
    #: two on a 2-core machine (8.8 s against 47.9 s, 30 epochs of 26 phantoms at 128 px)
    cpu_threads: int = 1

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
        label: str = "region",
    ) -> None:
        self.device = torch.device(device)
        self.label = label  # what its masks are: the trained label (e.g. "grey matter")
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
