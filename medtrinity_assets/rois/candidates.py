"""ROI candidates of one image, before measurement: connected components of a label map or of
a predicted mask, boxes as given, and the whole image.

A candidate that cannot be used carries ``status='flagged'`` and a ``reason``
(``<code>: <detail>``) instead of geometry, so bad input is recorded, never fatal.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medtrinity_assets.rois.config import RoiConfig

WHOLE_IMAGE_LABEL = "whole_image"
PREDICTED_LABEL = "region"


@dataclass
class RoiCandidate:
    """One region of an image: its label, where it came from, and its mask crop or box."""

    label: str | None
    origin: str
    status: str = "ok"
    reason: str | None = None
    label_value: int | None = None
    crop: np.ndarray | None = None  # boolean mask crop
    window: tuple[int, int, int, int] | None = None  # r0, r1, c0, c1
    bbox: list[float] | None = None
    has_mask: bool = False


def _structure(cfg: RoiConfig) -> np.ndarray:
    return np.ones((3, 3), bool) if cfg.connectivity_8 else ndimage.generate_binary_structure(2, 1)


def components(
    binary: np.ndarray, min_area: int, cfg: RoiConfig, offset: tuple[int, int] = (0, 0)
) -> tuple[list[tuple[np.ndarray, tuple[int, int, int, int]]], int]:
    """Connected components of a boolean array as (crop mask, window) pairs, and the count dropped."""
    labelled, n = ndimage.label(binary, structure=_structure(cfg))
    if n == 0:
        return [], 0
    areas = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    out = []
    dropped = 0
    for i, sl in enumerate(ndimage.find_objects(labelled)):
        if sl is None:
            continue
        if areas[i] < min_area:
            dropped += 1
            continue
        crop = labelled[sl] == i + 1
        r0, c0 = sl[0].start + offset[0], sl[1].start + offset[1]
        out.append((crop, (r0, r0 + crop.shape[0], c0, c0 + crop.shape[1])))
    return out, dropped


def mask_candidates(
    label_map: np.ndarray, names: dict[int, str], cfg: RoiConfig, dropped: Counter
) -> list[RoiCandidate]:
    """One candidate per connected component of each label value (components under
    ``min_area_px`` are counted in ``dropped``); values not in ``names`` are flagged."""
    out: list[RoiCandidate] = []
    if label_map.max() <= 0:
        if label_map.min() < 0:
            return [RoiCandidate(None, "mask", "flagged", "negative_mask_values: label map has values < 0")]
        return [RoiCandidate(None, "mask", "flagged", "empty_mask: the label map has no foreground")]
    slices = ndimage.find_objects(np.clip(label_map, 0, None).astype(np.int64))
    for value_minus_1, sl in enumerate(slices):
        if sl is None:
            continue
        value = value_minus_1 + 1
        crop_binary = label_map[sl] == value
        comps, n_dropped = components(crop_binary, cfg.min_area_px, cfg, (sl[0].start, sl[1].start))
        name = names.get(value)
        if n_dropped:
            dropped[f"below_min_area:{name or value}"] += n_dropped
        for crop, win in comps:
            r0, r1, c0, c1 = win
            roi = RoiCandidate(
                name if name is not None else f"unknown_{value}",
                "mask",
                label_value=value,
                crop=crop,
                window=win,
                bbox=[float(c0), float(r0), float(c1), float(r1)],
                has_mask=True,
            )
            if name is None:
                roi.status = "flagged"
                roi.reason = f"unknown_label_value: mask value {value} is not named in the source's labels"
            out.append(roi)
    if not out:
        reason = f"components_below_min_area: all under {cfg.min_area_px} px"
        out.append(RoiCandidate(None, "mask", "flagged", reason))
    return out


def box_candidates(row: dict[str, Any], h: int, w: int) -> list[RoiCandidate]:
    """One candidate per box of the ``preprocessed_images`` row, labelled from ``box_labels``
    (else "box") and clipped to the ``h`` x ``w`` image."""
    boxes = row.get("boxes") or []
    labels = list(row.get("box_labels") or [])
    clipped_upstream = list(row.get("box_clipped") or [])
    out: list[RoiCandidate] = []
    for i, box in enumerate(boxes):
        label = labels[i] if i < len(labels) and labels[i] else "box"
        upstream = clipped_upstream[i] if i < len(clipped_upstream) else None
        out.append(_box_candidate(box, label, upstream, h, w))
    return out


def _box_candidate(box: Any, label: str, clipped_upstream: Any, h: int, w: int) -> RoiCandidate:
    """The candidate of one box ``[x0, y0, x1, y1]`` (pixels), flagged when it is not four finite
    numbers, has no area, lies outside the image or covers under one pixel once clipped."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return RoiCandidate(label, "box", "flagged", f"degenerate_box: not four numbers: {box!r}")
    given = [x0, y0, x1, y1]
    if not all(math.isfinite(v) for v in given):
        return RoiCandidate(label, "box", "flagged", f"degenerate_box: non-finite coordinates {given}")
    if x1 <= x0 or y1 <= y0:
        reason = f"degenerate_box: zero or negative size {given}"
        return RoiCandidate(label, "box", "flagged", reason, bbox=given)
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if cx1 <= cx0 or cy1 <= cy0:
        reason = f"box_outside_image: {given} vs image {w}x{h}"
        return RoiCandidate(label, "box", "flagged", reason, bbox=given)
    reasons = []
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        reasons.append(f"box_clipped: {given} clipped to the {w}x{h} image")
    if clipped_upstream:
        reasons.append("box_clipped_upstream: clipped during preprocessing")
    r0, r1 = int(math.floor(cy0)), int(math.ceil(cy1))
    c0, c1 = int(math.floor(cx0)), int(math.ceil(cx1))
    if r1 <= r0 or c1 <= c0:
        return RoiCandidate(label, "box", "flagged", f"degenerate_box: under one pixel {given}", bbox=given)
    return RoiCandidate(
        label,
        "box",
        reason="; ".join(reasons) or None,
        crop=np.ones((r1 - r0, c1 - c0), bool),
        window=(r0, r1, c0, c1),
        bbox=[cx0, cy0, cx1, cy1],
    )


def predicted_candidates(
    mask: np.ndarray, origin: str, cfg: RoiConfig, dropped: Counter
) -> list[RoiCandidate]:
    """One candidate per connected component of a predicted (expert or classical) mask;
    components under ``predicted_min_area_px`` are counted in ``dropped``."""
    comps, n_dropped = components(np.asarray(mask, bool), cfg.predicted_min_area_px, cfg)
    if n_dropped:
        dropped[f"below_min_area:{origin}"] += n_dropped
    return [
        RoiCandidate(
            PREDICTED_LABEL,
            origin,
            crop=crop,
            window=win,
            bbox=[float(win[2]), float(win[0]), float(win[3]), float(win[1])],
            has_mask=True,
        )
        for crop, win in comps
    ]


def whole_image_candidate(h: int, w: int, reason: str | None) -> RoiCandidate:
    """The whole ``h`` x ``w`` image as one region (the fallback when nothing usable remains)."""
    return RoiCandidate(
        WHOLE_IMAGE_LABEL,
        "whole_image",
        reason=reason,
        crop=np.ones((h, w), bool),
        window=(0, h, 0, w),
        bbox=[0.0, 0.0, float(w), float(h)],
    )
