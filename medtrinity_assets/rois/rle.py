"""COCO run-length encoding of ROI masks: uncompressed counts, column-major, starting with a
run of zeros (``{"size": [h, w], "counts": [...]}``)."""

from __future__ import annotations

import json
import re
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


#: the compact JSON :func:`rle_json` writes (numbers as JSON writes them, at most 18 digits: no overflow)
_NUMBER = r"(?:0|[1-9][0-9]{0,17})"
_COMPACT = re.compile(rf'\{{"size":\[({_NUMBER}),({_NUMBER})\],"counts":\[((?:{_NUMBER}(?:,{_NUMBER})*)?)\]\}}\Z')


def rle_parse(rle: dict[str, Any] | str) -> tuple[int, int, np.ndarray]:
    """``(h, w, run lengths)`` of an RLE (the dict or its JSON string), checked as :func:`rle_decode`
    checks them. The compact JSON the pipeline writes is read without building a list of its numbers
    (half the time of ``json.loads``); any other JSON is read by ``json``."""
    compact = _COMPACT.match(rle) if isinstance(rle, str) else None
    if compact is not None:
        h, w, text = int(compact[1]), int(compact[2]), compact[3]
        counts = np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, np.int64)
    else:
        if isinstance(rle, str):
            rle = json.loads(rle)
        h, w = (int(x) for x in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
        if isinstance(rle["counts"], str):
            raise ValueError("compressed (string) COCO counts are not supported; use list counts")
    if counts.sum() > h * w or (counts < 0).any():
        raise ValueError("RLE counts do not fit the declared size")
    return h, w, counts


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
