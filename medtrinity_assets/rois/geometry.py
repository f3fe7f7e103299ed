"""Geometry of an ROI's pixels: boundary, dilation, convex hull, Feret diameter, convex area,
axis lengths and Crofton perimeter, each equal to what ``scipy.ndimage`` / ``skimage.measure``
give for the same mask, computed directly on the ROI's crop.

Pixel ``(row, col)`` covers ``[col, col+1) x [row, row+1)``; ``spacing`` is ``(row_mm, col_mm)``
of one pixel, or ``None``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull, QhullError


def boundary_pixels(m: np.ndarray) -> np.ndarray:
    """ROI pixels with a 4-neighbour outside the ROI (pixels beyond the array count as outside):
    ``m & ~binary_erosion(m)`` with the cross structure, by slicing."""
    p = np.zeros((m.shape[0] + 2, m.shape[1] + 2), bool)
    p[1:-1, 1:-1] = m
    inner = p[:-2, 1:-1] & p[2:, 1:-1]
    inner &= p[1:-1, :-2]
    inner &= p[1:-1, 2:]
    return m & ~inner


def dilate_cross(m: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_dilation(m, iterations=n)`` (cross structure, zero border) by slicing."""
    d = m
    for _ in range(iterations):
        g = d.copy()
        g[1:] |= d[:-1]
        g[:-1] |= d[1:]
        g[:, 1:] |= d[:, :-1]
        g[:, :-1] |= d[:, 1:]
        d = g
    return d


def convex_hull(pts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Convex hull vertices of ``pts`` (counter-clockwise) and whether Qhull succeeded; for
    collinear (or single) points all of them are returned with ``False``."""
    if len(pts) < 3:
        return pts, False
    try:
        return pts[ConvexHull(pts).vertices], True
    except (QhullError, ValueError):  # collinear points: use them all
        return pts, False


def feret_from_hull(hull: np.ndarray, sr: float | None, sc: float | None) -> tuple[float, float | None]:
    """Max Feret diameter (px, mm) from the hull of the ROI's pixel centres (see ``max_feret``)."""
    if len(hull) == 1:
        return 1.0, (None if sr is None else (sr + sc) / 2.0)
    hr, hc = hull[:, 0], hull[:, 1]
    dr = hr[:, None] - hr[None, :]
    dc = hc[:, None] - hc[None, :]
    d2 = dr * dr + dc * dc  # integers: the largest d2 is the largest distance
    k = int(np.argmax(d2))
    px = math.sqrt(d2.flat[k]) + 1.0
    if sr is None:
        return px, None
    dmm = np.sqrt((dr * sr) ** 2 + (dc * sc) ** 2)
    k = int(np.argmax(dmm))
    dist = math.sqrt(d2.flat[k])
    ur, uc = dr.flat[k] / max(dist, 1e-12), dc.flat[k] / max(dist, 1e-12)
    step_mm = math.hypot(ur * sr, uc * sc)
    return px, float(dmm.flat[k]) + step_mm


def valid_spacing(spacing: Any) -> tuple[float | None, float | None]:
    """``spacing`` as ``(row_mm, col_mm)`` when both are positive and finite, else ``(None, None)``."""
    if spacing is None:
        return None, None
    sr, sc = float(spacing[0]), float(spacing[1])
    if not (sr > 0 and sc > 0 and math.isfinite(sr) and math.isfinite(sc)):
        return None, None
    return sr, sc


def max_feret(mask: np.ndarray, spacing: tuple[float, float] | None = None) -> tuple[float, float | None]:
    """Maximum Feret diameter (px, mm): the largest distance between the centres of two ROI
    pixels (from the convex hull of the boundary pixels) plus one pixel's length along that
    direction, so a run of n pixels measures n and a digital disc of radius r about 2r."""
    m = np.asarray(mask, bool)
    if not m.any():
        return 0.0, None
    sr, sc = valid_spacing(spacing)
    pts = np.stack(np.nonzero(boundary_pixels(m)), 1).astype(np.float64)  # (row, col)
    return feret_from_hull(convex_hull(pts)[0], sr, sc)


_DIAMOND_NORMALS = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def convex_pixel_count(m: np.ndarray) -> int:
    """``skimage.morphology.convex_hull_image(m).sum()`` for a non-empty mask (the same count, see
    :func:`convex_area`), from the hull of its boundary pixels: no image of the hull is drawn."""
    br, bc = np.nonzero(boundary_pixels(m))
    return convex_area(*convex_hull(np.stack((br, bc), 1).astype(np.float64)))


def convex_area(hull: np.ndarray, hull_ok: bool) -> int:
    """Number of pixels whose centre lies in (or on) the convex hull of the ROI's pixels, each
    pixel taken as the diamond of its four edge midpoints (what ``regionprops``'
    ``area_convex`` counts), from the hull of the pixel centres alone.

    ``hull``: the ``(row, col)`` pixel centres on the hull, counter-clockwise when ``hull_ok``
    (Qhull's order), else just points on one line (or one point). The hull with the pixel
    diamonds is the Minkowski sum ``P + D`` of the centre hull ``P`` with the diamond
    ``D = {|dr| + |dc| <= 1/2}``: a point ``x`` is in it iff ``n.x <= h_P(n) + h_D(n)`` for
    every edge normal ``n`` of ``P`` and of ``D``, with the support functions
    ``h_P(n) = max_v n.v`` and ``h_D(n) = max(|n_r|, |n_c|) / 2``. Centres and normals are
    integers, so the test is exact; the count runs row by row.
    """
    v = np.asarray(hull, np.float64)
    vr, vc = v[:, 0], v[:, 1]
    if hull_ok:
        e = np.empty_like(v)
        e[:-1] = v[1:] - v[:-1]
        e[-1] = v[0] - v[-1]
        sign = 1.0 if float(vr @ e[:, 1] - vc @ e[:, 0]) >= 0 else -1.0  # counter-clockwise
        normals = np.empty((len(v) + 4, 2))
        normals[:-4, 0] = sign * e[:, 1]  # outward normals of the edges: h_P at the edge's start
        normals[:-4, 1] = -sign * e[:, 0]
        normals[-4:] = _DIAMOND_NORMALS
        support = np.empty(len(normals))
        support[:-4] = normals[:-4, 0] * vr + normals[:-4, 1] * vc
        support[-4:] = (v @ _DIAMOND_NORMALS.T).max(axis=0)
    else:
        normals = _DIAMOND_NORMALS
        if len(v) >= 2:
            d = v[-1] - v[0]
            normals = np.concatenate([[[d[1], -d[0]], [-d[1], d[0]]], normals])
        support = (v @ normals.T).max(axis=0)
    a, b = normals[:, 0], normals[:, 1]
    # 2 (a r + b c) <= 2 h_P + max(|a|, |b|)  ->  2 b c <= t(r)
    bound = 2.0 * support + np.maximum(np.abs(a), np.abs(b))
    r = np.arange(vr.min(), vr.max() + 1.0)
    t = bound - np.multiply.outer(r, 2.0 * a)
    pos, neg = b > 0, b < 0
    hi = np.floor((t[:, pos] / (2.0 * b[pos])).min(axis=1, initial=vc.max()))
    lo = np.ceil((t[:, neg] / (2.0 * b[neg])).max(axis=1, initial=vc.min()))
    count = np.maximum(hi - lo + 1.0, 0.0)
    flat = b == 0
    if flat.any():
        count *= (t[:, flat] >= 0).all(axis=1)
    return int(count.sum())


def axis_lengths(rr: np.ndarray, cc: np.ndarray) -> tuple[float, float]:
    """Major and minor axis lengths (``4 * sqrt(eigenvalue)`` of the inertia tensor, as
    regionprops' ``axis_major_length`` / ``axis_minor_length``) of the pixels ``(rr, cc)``."""
    n = rr.size
    dr = rr - rr.sum() / n
    dc = cc - cc.sum() / n
    a = float(dc @ dc) / n  # inertia about the row axis: mu_cc / mu_00
    c = float(dr @ dr) / n
    b = float(dr @ dc) / n
    half = (a + c) / 2.0
    rad = math.hypot((a - c) / 2.0, b)
    return 4 * math.sqrt(max(half + rad, 0.0)), 4 * math.sqrt(max(half - rad, 0.0))


# Crofton perimeter with 4 directions (weights per 2x2 configuration code
# p[i, j] + 2 p[i-1, j] + 4 p[i, j-1] + 8 p[i-1, j-1]), as in skimage.measure.perimeter_crofton.
_S2 = np.sqrt(2)
_CROFTON_WEIGHTS = np.array(
    [
        0,
        np.pi / 4 * (1 + 1 / _S2),
        np.pi / (4 * _S2),
        np.pi / (2 * _S2),
        0,
        np.pi / 4 * (1 + 1 / _S2),
        0,
        np.pi / (4 * _S2),
        np.pi / 4,
        np.pi / 2,
        np.pi / (4 * _S2),
        np.pi / (4 * _S2),
        np.pi / 4,
        np.pi / 2,
        0,
        0,
    ]
)


def crofton_perimeter(m: np.ndarray) -> float:
    """Crofton perimeter (4 directions) of the pixels of ``m``, equal to
    ``skimage.measure.perimeter_crofton(m, 4)``."""
    p = np.zeros((m.shape[0] + 3, m.shape[1] + 3), np.uint8)
    p[2:-1, 2:-1] = m
    code = p[1:, 1:] + 2 * p[:-1, 1:] + 4 * p[1:, :-1] + 8 * p[:-1, :-1]
    hist = np.bincount(code.ravel(), minlength=16)
    return float(_CROFTON_WEIGHTS @ hist)

