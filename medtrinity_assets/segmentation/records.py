"""What an expert segments and what training it produced: the records training writes and the
store saves (kept apart so the store never imports the training code)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from medtrinity_assets.core.vocabulary import canonical_modality, modality_slug
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.segmentation.network import ExpertConfig, ExpertPredictor


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_") or "x"


@dataclass(frozen=True)
class ExpertTarget:
    """What an expert segments: one named label of one organ in one modality. It is trained only
    on sources that match all three (and are as synthetic as it is), and used only on them."""

    modality: str
    organ: str
    label: str
    synthetic: bool = False

    @property
    def slug(self) -> str:
        return f"{modality_slug(self.modality)}__{_slug(self.organ)}__{_slug(self.label)}"

    @property
    def name(self) -> str:
        return f"unet_{self.slug}"

    @classmethod
    def of(cls, spec: SourceSpec, label: str) -> ExpertTarget:
        return cls(canonical_modality(spec.modality), spec.organ.strip().lower(), label.strip().lower(), spec.synthetic)


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
    target: ExpertTarget | None = None

    def predictor(self, device: str = "cpu") -> ExpertPredictor:
        return ExpertPredictor(
            self.network,
            name=self.name,
            modality=self.modality,
            image_size=self.config.image_size,
            threshold=self.config.threshold,
            device=device,
        )
