"""COCO run-length encoding of ROI masks: uncompressed counts, column-major, starting with a
run of zeros (``{"size": [h, w], "counts": [...]}``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def rle_counts_from_crop(crop: np.ndarray, r0: int, c0: int, h: int, w: int) -> list[int]:
    """Run lengths of a mask given as a crop placed at (r0, c0) in an h x w image."""
    cc, rr = np.nonzero(np.asarray(crop, bool).T)  # sorted by column, then row
    if cc.size == 0:
        return [h * w]
    idx = (cc.astype(np.int64) + c0) * h + (rr.astype(np.int64) + r0)
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([idx[:1], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], idx[-1:]]) + 1  # exclusive
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = h * w - ends[-1]
    out = counts.tolist()
    if out[-1] == 0:
        out.pop()
    return out


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a 2D boolean mask: ``{"size": [h, w], "counts": [...]}``."""
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    h, w = m.shape
    return {"size": [h, w], "counts": rle_counts_from_crop(m, 0, 0, h, w)}


def rle_parse(rle: dict[str, Any] | str) -> tuple[int, int, np.ndarray]:
    """``(h, w, run lengths)`` of an RLE (the dict or its JSON string), checked as :func:`rle_decode`
    checks them; ``ValueError`` for anything else (a count past 64 bits too)."""
    if isinstance(rle, str):
        rle = json.loads(rle)
    h, w = (int(x) for x in rle["size"])
    if isinstance(rle["counts"], str):
        raise ValueError("compressed (string) COCO counts are not supported; use list counts")
    try:
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except OverflowError:
        raise ValueError("RLE counts do not fit the declared size") from None
    if (counts < 0).any() or not _fit(counts, h * w):
        raise ValueError("RLE counts do not fit the declared size")
    return h, w, counts


def _fit(counts: np.ndarray, pixels: int) -> bool:
    """Whether non-negative run lengths add up to at most ``pixels`` (summed without wrapping round:
    ten counts near 10^18 add up past 64 bits)."""
    total = int(counts.sum())
    if total <= pixels and counts.size and int(counts.max()) * counts.size >= 2**63:
        total = sum(counts.tolist())
    return total <= pixels


def rle_decode(rle: dict[str, Any] | str) -> np.ndarray:
    """Inverse of :func:`rle_encode` (accepts the dict or its JSON string)."""
    h, w, counts = rle_parse(rle)
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    flat = np.pad(flat, (0, h * w - flat.size))
    return flat.reshape((w, h)).T.copy()


def rle_json(rle: dict[str, Any]) -> str:
    """The RLE as compact JSON (the ``mask_rle`` column)."""
    return json.dumps(rle, separators=(",", ":"))
