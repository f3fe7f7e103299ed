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
from medtrinity_assets.rois.geometry import convex_pixel_count

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


Component = tuple[np.ndarray, tuple[int, int, int, int]]  # (crop mask, (r0, r1, c0, c1))


def _neck_ok(parts: np.ndarray, dist: np.ndarray, peaks: dict[int, float], max_neck: float) -> bool:
    """Whether every pair of touching parts meets at a neck narrower than ``max_neck`` times the
    smaller part's core radius (else the parts are one structure with an uneven outline)."""
    for axis in (0, 1):
        a = parts.take(range(parts.shape[axis] - 1), axis=axis)
        b = parts.take(range(1, parts.shape[axis]), axis=axis)
        d = np.minimum(dist.take(range(dist.shape[axis] - 1), axis=axis), dist.take(range(1, dist.shape[axis]), axis=axis))
        touching = (a != b) & (a > 0) & (b > 0)
        for i, j, saddle in zip(a[touching], b[touching], d[touching], strict=True):
            if saddle >= max_neck * min(peaks[int(i)], peaks[int(j)]):
                return False
    return True


def split_touching(comp: np.ndarray, cfg: RoiConfig, floor: int) -> list[np.ndarray]:
    """``comp`` cut into its blobs where the mask supports it (two touching nodules, nuclei),
    else ``[comp]``: a compact component with two or more distance-transform cores joined by
    narrow necks, every part at least ``floor`` pixels (see ``roi_config.yaml``)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    area = int(comp.sum())
    if area < 2 * floor or area / max(convex_pixel_count(comp), 1) < cfg.split_min_solidity:
        return [comp]
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    top = float(dist.max())
    peaks = peak_local_max(dist, min_distance=max(2, int(top / 2)), threshold_abs=0.4 * top, labels=comp.astype(np.int32), exclude_border=False)
    if len(peaks) < 2:
        return [comp]
    markers = np.zeros(comp.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    parts = watershed(-dist, markers, mask=comp)
    cores = {k + 1: float(dist[tuple(p)]) for k, p in enumerate(peaks)}
    pieces = [parts == k for k in cores]
    if min(int(x.sum()) for x in pieces) < floor or not _neck_ok(parts, dist, cores, cfg.split_max_neck):
        return [comp]
    return pieces


def structures(
    binary: np.ndarray, floor: int, cfg: RoiConfig, offset: tuple[int, int] = (0, 0)
) -> tuple[list[Component], Counter]:
    """The components of one label (or one predicted mask) that are structures, each at least
    ``floor`` pixels: all of them when there are fewer than ``fragment_min_components`` (separate
    findings), else the largest and those reaching ``min_component_share`` of it; touching
    blobs split (:func:`split_touching`). Returns them and the dropped ones counted by reason."""
    labelled, n = ndimage.label(binary, structure=_structure(cfg))
    dropped: Counter = Counter()
    if n == 0:
        return [], dropped
    areas = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    fragmented = int((areas >= floor).sum()) >= cfg.fragment_min_components
    largest = int(areas.max()) if fragmented else 0
    out: list[Component] = []
    for i, sl in enumerate(ndimage.find_objects(labelled)):
        if sl is None:
            continue
        if areas[i] < floor:
            dropped["below_floor"] += 1
            continue
        if areas[i] < cfg.min_component_share * largest:
            dropped["minor_component"] += 1
            continue
        r0, c0 = sl[0].start + offset[0], sl[1].start + offset[1]
        for crop in split_touching(labelled[sl] == i + 1, cfg, floor):
            out.append(_tight(crop, r0, c0))
    return out, dropped


def _tight(crop: np.ndarray, r0: int, c0: int) -> Component:
    """A crop trimmed to its pixels, with its window in image coordinates."""
    rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
    t = crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    r, c = r0 + int(rows[0]), c0 + int(cols[0])
    return t, (r, r + t.shape[0], c, c + t.shape[1])


def mask_candidates(
    label_map: np.ndarray, names: dict[int, str], cfg: RoiConfig, dropped: Counter
) -> list[RoiCandidate]:
    """One candidate per structure of each label value (see :func:`structures`; what is dropped
    is counted in ``dropped`` by reason and label); values not in ``names`` are flagged."""
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
        floor = cfg.floor(label_map.size, predicted=False)
        comps, why = structures(crop_binary, floor, cfg, (sl[0].start, sl[1].start))
        name = names.get(value)
        for reason, n in why.items():
            dropped[f"{reason}:{name or value}"] += n
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
        floor = cfg.floor(label_map.size, predicted=False)
        present = [names.get(v) for v in np.unique(label_map) if v > 0]
        reason = f"no_structure: every labelled component is under {floor} px or a minor fragment"
        out.append(RoiCandidate(next((n for n in present if n), None), "mask", "flagged", reason))
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
    mask: np.ndarray, origin: str, cfg: RoiConfig, dropped: Counter, label: str = PREDICTED_LABEL
) -> list[RoiCandidate]:
    """One candidate per structure of a predicted (expert or classical) mask, named ``label``
    (an expert's trained label); the stricter predicted floors apply (see :func:`structures`)."""
    binary = np.asarray(mask, bool)
    comps, why = structures(binary, cfg.floor(binary.size, predicted=True), cfg)
    for reason, n in why.items():
        dropped[f"{reason}:{origin}"] += n
    return [
        RoiCandidate(
            label,
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
