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


#: the start of the compact JSON :func:`rle_json` writes, up to its counts
_COMPACT_HEAD = re.compile(r'\{"size":\[(0|[1-9][0-9]{0,8}),(0|[1-9][0-9]{0,8})\],"counts":\[')
_DIGITS_AND_COMMAS = str.maketrans("", "", "0123456789,")


def rle_parse(rle: dict[str, Any] | str) -> tuple[int, int, np.ndarray]:
    """``(h, w, run lengths)`` of an RLE (the dict or its JSON string), checked as :func:`rle_decode`
    checks them; ``ValueError`` for anything else. The compact JSON the pipeline writes is read
    without building a list of its numbers (half the time of ``json.loads`` on a mask of some fifty
    runs); any other JSON is read by ``json``."""
    parsed = _compact(rle) if isinstance(rle, str) else None
    if parsed is not None:
        h, w, counts = parsed
    else:
        if isinstance(rle, str):
            rle = json.loads(rle)
        h, w = (int(x) for x in rle["size"])
        if isinstance(rle["counts"], str):
            raise ValueError("compressed (string) COCO counts are not supported; use list counts")
        try:
            counts = np.asarray(rle["counts"], dtype=np.int64)
        except OverflowError:
            raise ValueError("RLE counts do not fit the declared size") from None
    if counts.sum() > h * w or (parsed is None and (counts < 0).any()):  # digits alone are not negative
        raise ValueError("RLE counts do not fit the declared size")
    return h, w, counts


def _compact(text: str) -> tuple[int, int, np.ndarray] | None:
    """``(h, w, run lengths)`` of the compact RLE JSON :func:`rle_json` writes, or None for any other
    text (read by ``json``): digits and single commas between the brackets, each count under 10^18."""
    head = _COMPACT_HEAD.match(text)
    if head is None or not text.endswith("]}"):
        return None
    body = text[head.end() : -2]
    if not body:
        return int(head[1]), int(head[2]), np.zeros(0, np.int64)
    if body.translate(_DIGITS_AND_COMMAS) or ",," in body or body[0] == "," or body[-1] == ",":
        return None
    counts = np.fromstring(body, dtype=np.int64, sep=",")
    if counts.max() >= 10**18:  # a longer number saturates: let json refuse it
        return None
    return int(head[1]), int(head[2]), counts


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
