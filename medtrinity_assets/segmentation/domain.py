"""Is an image what an expert learned from? The facts its card keeps about its training data
(how much of the image its target covers, how large the images were, whether the target is
brighter or darker than the rest of the tissue) and the check of one prediction against them.

An expert is a small network trained on a few hundred images of one scope; on an image unlike
those (a 33-pixel crop when it learned from 100-pixel slices, a region brighter than the tissue
around it when its target was always darker) its output is not its label, however confident. A
prediction that fails a check is flagged with the reason, never described.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medtrinity_assets.core.images import to_grey

#: slack around the share of the image an expert's training masks covered, and the image size
AREA_SLACK = 2.0
SIDE_SLACK = 2.0
#: |contrast| under this is neither brighter nor darker; the polarity must hold on this share
POLARITY_MIN_CONTRAST = 0.05
POLARITY_AGREEMENT = 0.9


def region_contrast(image: np.ndarray, mask: np.ndarray) -> float | None:
    """(mean inside - mean of the rest of the tissue) / (their sum); the tissue is every pixel
    above a tenth of the image's range (not the air or the black around a scan)."""
    grey = to_grey(image).astype(np.float64)
    m = np.asarray(mask, bool)
    if m.shape != grey.shape or not m.any():
        return None
    lo, hi = float(grey.min()), float(grey.max())
    tissue = grey > lo + 0.1 * (hi - lo)
    rest = tissue & ~m
    if not rest.any():
        return None
    inside, outside = float(grey[m].mean()), float(grey[rest].mean())
    return (inside - outside) / max(inside + outside, 1e-9)


def training_domain(samples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The card's domain facts from training (image, mask) pairs."""
    fractions = [float((np.asarray(m) > 0).mean()) for _, m in samples] or [0.0, 1.0]
    sides = [max(np.asarray(i).shape[:2]) for i, _ in samples] or [0]
    signs = []
    for img, m in samples:
        c = region_contrast(img, np.asarray(m) > 0)
        if c is not None:
            signs.append(0 if abs(c) < POLARITY_MIN_CONTRAST else int(np.sign(c)))
    polarity = next((p for p in (1, -1) if signs and signs.count(p) >= POLARITY_AGREEMENT * len(signs)), 0)
    return {
        "area_fraction_range": [round(float(np.percentile(fractions, 5)), 6), round(float(np.percentile(fractions, 95)), 6)],
        "image_side_range": [int(min(sides)), int(max(sides))],
        "target_polarity": polarity,
    }


def out_of_domain(metrics: dict[str, Any], image: np.ndarray | None, mask: np.ndarray) -> str | None:
    """Why a prediction is not used (``expert_out_of_domain: ...``), or None."""
    return _area(metrics, mask) or (_side(metrics, image) if image is not None else None) or (
        _polarity(metrics, image, mask) if image is not None else None
    )


def _area(metrics: dict[str, Any], mask: np.ndarray) -> str | None:
    rng = metrics.get("area_fraction_range")
    if not rng:
        return None
    frac = float(np.asarray(mask, bool).mean())
    lo, hi = float(rng[0]) / AREA_SLACK, min(1.0, float(rng[1]) * AREA_SLACK)
    if lo <= frac <= hi or (frac == 0.0 and rng[0] == 0.0):
        return None
    return f"expert_out_of_domain: its mask covers {frac:.1%} of the image, its training masks {rng[0]:.1%}-{rng[1]:.1%}"


def _side(metrics: dict[str, Any], image: np.ndarray) -> str | None:
    rng = metrics.get("image_side_range")
    side = max(np.asarray(image).shape[:2])
    if not rng or rng[0] / SIDE_SLACK <= side <= rng[1] * SIDE_SLACK:
        return None
    return f"expert_out_of_domain: the image is {side} px on its longer side, its training images {rng[0]}-{rng[1]} px"


def _polarity(metrics: dict[str, Any], image: np.ndarray, mask: np.ndarray) -> str | None:
    expected = int(metrics.get("target_polarity") or 0)
    c = region_contrast(image, mask)
    if expected == 0 or c is None or abs(c) < POLARITY_MIN_CONTRAST or int(np.sign(c)) == expected:
        return None
    said, was = ("brighter", "darker") if c > 0 else ("darker", "brighter")
    return f"expert_out_of_domain: its region is {said} than the rest of the tissue, its training targets {was}"
