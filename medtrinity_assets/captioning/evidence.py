"""Independent evidence for the quality checks: what a region's own mask says, recomputed from its
RLE (never read from the attribute table the description was written from), and what the metadata,
ontologies and retrieved passages allow a description to name.

- :func:`region_facts`: image thirds of the centroid, area fraction and bounding box of the mask.
- :func:`nesting`: which regions of one image lie within which (hole-filled outlines), by label.
- :func:`metadata_text`: everything the source states about the image, for the ontology checks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.wording import label_text
from medtrinity_assets.rois.rle import rle_decode

INSIDE_SHARE = 0.9  # a region lies within another when this share of it is inside the other's outline


@dataclass(frozen=True)
class RegionFacts:
    """What the region's mask says (``whole``: no region was localised)."""

    whole: bool
    horizontal: str | None = None  # left | centre | right
    vertical: str | None = None  # upper | middle | lower
    area_fraction: float | None = None
    bbox_norm: tuple[float, float, float, float] | None = None


def _third(value: float, words: tuple[str, str, str]) -> str:
    return words[0] if value < 1 / 3 else words[2] if value > 2 / 3 else words[1]


def decode(item: CaptionInput) -> np.ndarray | None:
    """The region's full-size mask, or None without a readable RLE."""
    if not item.mask_rle:
        return None
    try:
        mask = rle_decode(item.mask_rle)
    except (ValueError, KeyError, TypeError):
        return None
    return mask if mask.any() else None


def region_facts(item: CaptionInput, mask: np.ndarray | None = None) -> RegionFacts | None:
    """Facts of the region from its mask; None when there is neither a mask nor a whole image."""
    if item.origin == "whole_image":
        return RegionFacts(whole=True)
    mask = decode(item) if mask is None else mask
    if mask is None and item.origin == "box" and item.bbox_norm and len(item.bbox_norm) == 4:
        return _box_facts(tuple(float(v) for v in item.bbox_norm))  # the annotation's own box
    if mask is None:
        return None
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    cx, cy = (cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h
    return RegionFacts(
        whole=False,
        horizontal=_third(cx, ("left", "centre", "right")),
        vertical=_third(cy, ("upper", "middle", "lower")),
        area_fraction=float(mask.mean()),
        bbox_norm=(cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h),
    )


def _box_facts(box: tuple[float, ...]) -> RegionFacts:
    x0, y0, x1, y1 = box
    return RegionFacts(
        whole=False,
        horizontal=_third((x0 + x1) / 2, ("left", "centre", "right")),
        vertical=_third((y0 + y1) / 2, ("upper", "middle", "lower")),
        area_fraction=max(x1 - x0, 0.0) * max(y1 - y0, 0.0),
        bbox_norm=(x0, y0, x1, y1),
    )


def nesting(items: Iterable[CaptionInput]) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """``{(record_id, roi_id): {("lies within" | "encloses", other label)}}`` recomputed from the
    masks of each image's regions (a region's outline has its holes filled)."""
    by_record: dict[str, list[tuple[CaptionInput, np.ndarray]]] = defaultdict(list)
    for item in items:
        mask = decode(item) if item.origin != "whole_image" else None
        if mask is not None:
            by_record[item.record_id].append((item, mask))
    out: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for regions in by_record.values():
        filled = [ndimage.binary_fill_holes(m) for _, m in regions]
        for i, (a, ma) in enumerate(regions):
            for j, (b, mb) in enumerate(regions):
                if i != j and ma.shape == mb.shape and ma.sum() < mb.sum():
                    if (ma & filled[j]).sum() >= INSIDE_SHARE * ma.sum():
                        out[(a.record_id, str(a.roi_id))].add(("lies within", label_text(b.label).lower()))
                        out[(b.record_id, str(b.roi_id))].add(("encloses", label_text(a.label).lower()))
    return dict(out)


def metadata_text(item: CaptionInput) -> str:
    """Everything the source states about the image and region: organ, labels, terms, concepts,
    the coarse caption and the labels of the regions it is related to."""
    parts: list[Any] = [
        item.organ,
        label_text(item.label),
        label_text(item.inside_label),
        item.coarse_caption,
        *item.terms,
        *item.concepts,
        *(label_text(r.get("other_label")) for r in item.relations),
    ]
    return " . ".join(str(p) for p in parts if p)


def passages_text(item: CaptionInput) -> str:
    return " ".join(p.text for p in item.passages)
