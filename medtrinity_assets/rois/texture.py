"""Texture of an ROI: grey levels quantised over the image's range, masked grey-level
co-occurrence (GLCM) contrast and homogeneity, and Shannon entropy."""

from __future__ import annotations

import math

import numpy as np

from medtrinity_assets.rois.config import RoiConfig


def quantise(grey: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """Map ``grey`` onto ``0..levels-1`` over the range [lo, hi]."""
    scale = levels / (hi - lo) if hi > lo else 0.0
    q = np.floor((grey - lo) * scale)
    return np.clip(q, 0, levels - 1).astype(np.int32)


def _glcm_offsets(distance: int) -> list[tuple[int, int]]:
    """(row, col) pixel-pair offsets of the 0, 45, 90 and 135 degree GLCMs (as graycomatrix
    rounds them); the sign of an offset does not matter for a symmetric GLCM."""
    return [
        (int(round(math.sin(a) * distance)), int(round(math.cos(a) * distance)))
        for a in (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    ]


def texture_stats(
    q: np.ndarray, mask: np.ndarray, cfg: RoiConfig
) -> tuple[float | None, float | None, float | None]:
    """Masked GLCM contrast and homogeneity, and Shannon entropy (bits) of quantised ``q``.

    Only pixel pairs with both pixels in the ROI count. The contrast / homogeneity of one
    normalised symmetric GLCM is the mean of ``(i - j)**2`` / ``1 / (1 + (i - j)**2)`` over
    its pixel pairs, so it is computed from the pairs directly (same values as
    ``graycomatrix`` + ``graycoprops``, without building the level x level matrices); the
    angles with at least one pair are averaged.
    """
    rr, cc = np.nonzero(mask)
    return texture_of_pixels(q[rr, cc], rr, cc, q.shape, cfg)


def texture_of_pixels(
    vals: np.ndarray, rr: np.ndarray, cc: np.ndarray, shape: tuple[int, int], cfg: RoiConfig
) -> tuple[float | None, float | None, float | None]:
    """:func:`texture_stats` from the quantised levels ``vals`` of the ROI's pixels ``(rr, cc)``
    (row-major order) in a crop of ``shape``."""
    levels = cfg.texture_levels
    if vals.size == 0:
        return None, None, None
    hist = np.bincount(vals, minlength=levels).astype(np.float64)
    p = hist[hist > 0] / vals.size
    entropy = float(-(p * np.log2(p)).sum())
    # Pairs (r, c) -> (r + dr, c + dc) for the four offsets at once, from the ROI's pixels:
    # the levels in a padded copy where pixels outside the ROI (or the crop) are -1.
    offsets = _glcm_offsets(cfg.glcm_distance)
    pad = max(max(abs(dr), abs(dc)) for dr, dc in offsets)
    h, w = shape
    wp = w + 2 * pad
    qp = np.full((h + 2 * pad, wp), -1, np.int16 if levels < 1 << 14 else np.int64)
    qp[pad : pad + h, pad : pad + w][rr, cc] = vals
    base = (rr + pad) * wp + (cc + pad)
    steps = np.array([dr * wp + dc for dr, dc in offsets])
    other = qp.ravel()[base[None, :] + steps[:, None]]  # (angles, pixels)
    valid = other >= 0
    n_pairs = valid.sum(axis=1)
    if not n_pairs.any():
        return None, None, entropy
    # Histogram of |level difference| per angle (differences are < levels).
    absdiff = np.abs(other - vals.astype(other.dtype))
    code = absdiff + (np.arange(len(offsets)) * levels)[:, None]
    counts = np.bincount(code[valid], minlength=len(offsets) * levels).reshape(len(offsets), levels)
    k2 = np.arange(levels, dtype=np.float64) ** 2
    keep = n_pairs > 0
    n_keep = int(keep.sum())
    contrast = float(((counts @ k2)[keep] / n_pairs[keep]).sum() / n_keep)
    homogeneity = float(((counts @ (1.0 / (1.0 + k2)))[keep] / n_pairs[keep]).sum() / n_keep)
    return contrast, homogeneity, entropy
