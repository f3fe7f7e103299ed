"""Segmentation for sources without ROIs: expert grounding models (a MONAI U-Net per modality,
trained in the graph or the user's weights) and the classical fallback."""

from medtrinity_assets.segmentation.classical import classical_segment
from medtrinity_assets.segmentation.network import ExpertConfig, ExpertPredictor, build_network, dice
from medtrinity_assets.segmentation.phantoms import generate_phantoms
from medtrinity_assets.segmentation.store import (
    ExpertIntegrityError,
    ExpertLoadError,
    load_expert,
    load_expert_for,
    load_experts_for,
    save_expert,
)
from medtrinity_assets.segmentation.training import (
    ExpertsReport,
    ExpertTarget,
    ExpertTrainResult,
    collect_training_samples,
    train_expert,
    train_experts,
)

__all__ = [
    "ExpertConfig",
    "ExpertIntegrityError",
    "ExpertLoadError",
    "ExpertPredictor",
    "ExpertTrainResult",
    "ExpertTarget",
    "ExpertsReport",
    "build_network",
    "classical_segment",
    "collect_training_samples",
    "dice",
    "generate_phantoms",
    "load_expert",
    "load_expert_for",
    "load_experts_for",
    "save_expert",
    "train_expert",
    "train_experts",
]
