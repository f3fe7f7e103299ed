"""Segmentation for sources without ROIs: expert grounding models (a MONAI U-Net per modality,
trained in the graph or the user's weights) and the classical fallback.

The names are imported when first used (PEP 562): code that needs only the classical
segmentation (the ROI builder, and through it the description checks) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "classical": ["classical_segment"],
    "network": ["ExpertConfig", "ExpertPredictor", "build_network", "dice"],
    "phantoms": ["generate_phantoms"],
    "store": ["ExpertIntegrityError", "ExpertLoadError", "load_expert", "load_expert_for", "load_experts_for",
              "save_expert"],
    "training": ["ExpertsReport", "ExpertTarget", "ExpertTrainResult", "collect_training_samples", "train_expert",
                 "train_experts"],
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
