"""The classical fallback segmenter. Its foreground polarity comes from the vocabulary: dark
nuclei in histology, the minority side of an Otsu threshold elsewhere (objects are usually
smaller than their background), and in nuclear medicine and PET (bright polarity) focal uptake:
spots clearly hotter than the tissue around them (:func:`hot_spots`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medtrinity_assets.core.images import to_grey
from medtrinity_assets.core.vocabulary import modality_by_key


def classical_segment(
    image: np.ndarray, modality: str = "", *, smooth_sigma: float = 1.0, opening_radius: int = 1
) -> np.ndarray:
    """A boolean mask of the smoothed grey image's foreground: for dark and minority polarity the
    Otsu threshold's side, opened and with its holes filled; for bright polarity (uptake)
    :func:`hot_spots`. Components are separated later by the ROI stage, which also drops those
    under ``predicted_min_area_px``."""
    from skimage.filters import threshold_otsu

    grey = to_grey(image)
    if smooth_sigma > 0:
        grey = ndimage.gaussian_filter(grey, smooth_sigma)
    if float(grey.max()) - float(grey.min()) < 1e-9:
        return np.zeros(grey.shape, bool)
    bright = grey > threshold_otsu(grey)
    entry = modality_by_key(modality or "")
    polarity = entry.classical if entry is not None else None
    if polarity == "bright":
        return hot_spots(grey, bright, opening_radius)
    fg = ~bright if polarity == "dark" or bright.mean() > 0.5 else bright
    return ndimage.binary_fill_holes(_opened(fg, opening_radius))


#: scales (pixels) of the local background a spot is compared with; a spot is found at the scale
#: that shows it best, so small and large spots both stand out
BACKGROUND_SIGMAS = (6.0, 12.0, 24.0)
#: a seed of a spot: at least this much brighter than its local background (relative)
SEED_CONTRAST = 0.15
#: a spot: its mean at least this much above the median of the ring around it (relative)
MIN_CONTRAST = 0.25
RING_PX = 3  # the ring a spot is compared with: the pixels up to 3 away (a square) that are in no seed
MIN_THICKNESS_PX = 2.5  # thinner (its deepest pixel nearer its edge): a line, not a spot
MAX_ELONGATION = 6.0  # area over the disc of its thickness: above, a ribbon (a rim, a vessel)
EDGE_BAND = 0.03  # share of the image's longest side: the outer band of the body (a rim, partial volume)


def hot_spots(grey: np.ndarray, body: np.ndarray, opening_radius: int = 1) -> np.ndarray:
    """Focal uptake in a smoothed grey scintigram whose ``body`` (counts above background) is given:
    seeds where the image is :data:`SEED_CONTRAST` above its local background (a normalised
    Gaussian average over the body, at each of :data:`BACKGROUND_SIGMAS`), opened; kept when the
    seed's mean is :data:`MIN_CONTRAST` above the median of the ring around it, it is a compact spot
    (not a line or a ribbon) and most of it lies deeper than the body's outer band (:data:`EDGE_BAND`);
    its edge is then drawn halfway between its mean and its ring's (a half-level contour, as a fixed
    share of the maximum draws a lesion in PET). A hot rim round a body, tissue that is merely
    brighter than the rest, and speckle are not uptake. Holes in kept spots are filled (a cold
    centre of a hot spot)."""
    g = grey - float(grey.min())
    seeds = _opened(body & (_local_contrast(g, body) > SEED_CONTRAST), opening_radius)
    labels, n = ndimage.label(seeds)
    if n == 0:
        return seeds
    level = _spot_levels(g, body, labels, n)
    smoother = ndimage.gaussian_filter(g, 1.0)  # an edge drawn on speckle is ragged: no outline word would hold
    spots, m = ndimage.label(_opened(seeds & (smoother > level[labels]), opening_radius))
    big = np.bincount(spots.ravel(), minlength=m + 1) >= np.pi * MIN_THICKNESS_PX**2  # not a crumb the edge cut off
    big[0] = False
    return ndimage.binary_fill_holes(big[spots])


def _local_contrast(g: np.ndarray, body: np.ndarray) -> np.ndarray:
    """``g`` over its local background minus one, the largest over the scales; the background is
    averaged over the body only, so the body's edge is not bright against the air around it."""
    weight = body.astype(np.float64)
    weighted = g * weight
    best = np.full(g.shape, -1.0)
    for sigma in BACKGROUND_SIGMAS:
        background = _background(weighted, weight, sigma)
        np.maximum(best, np.where(np.isfinite(background), g / np.fmax(background, 1e-9) - 1.0, -1.0), out=best)
    return best


def _background(weighted: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian average of the body's values (``weighted``: the values times ``weight``, the body)
    at scale ``sigma``; NaN where the body is under 5% of the average. A wide one is taken on copies
    shrunk by block means and grown back: a background varies slowly, and the blur costs a fraction."""
    step = max(1, int(sigma // 3))
    if step == 1 or min(weight.shape) < 4 * step:
        share = ndimage.gaussian_filter(weight, sigma, truncate=3.0)
        total = ndimage.gaussian_filter(weighted, sigma, truncate=3.0)
        return np.where(share > 0.05, total / np.maximum(share, 1e-9), np.nan)

    def shrunk(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(_blocks(a, step).mean(axis=(1, 3)), sigma / step, truncate=3.0, mode="nearest")

    share = shrunk(weight)
    small = np.where(share > 0.05, shrunk(weighted) / np.maximum(share, 1e-9), np.nan)
    zoom = (weight.shape[0] / small.shape[0], weight.shape[1] / small.shape[1])
    return ndimage.zoom(small, zoom, order=1, mode="nearest", grid_mode=True)


def _spot_levels(g: np.ndarray, body: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per seed (index ``1..n`` of ``labels``), the level halfway between its mean and the median of
    the ring around it, where its edge is drawn, or infinity when it is not focal uptake; index 0
    (no seed) is infinity. The shape tests come first: only compact seeds get a ring."""
    seed = labels.ravel() > 0
    ids = labels.ravel()[seed]
    area = np.bincount(ids, minlength=n + 1).astype(np.float64)
    depth = ndimage.distance_transform_edt(np.pad(labels > 0, 1))[1:-1, 1:-1].ravel()[seed]
    thickness = np.zeros(n + 1)
    np.maximum.at(thickness, ids, depth)
    inner = _inner(body, EDGE_BAND * max(g.shape)).ravel()[seed]
    compact = (
        (thickness >= MIN_THICKNESS_PX)
        & (area <= MAX_ELONGATION * np.pi * thickness**2)
        & (np.bincount(ids, weights=inner, minlength=n + 1) >= 0.5 * area)
    )
    compact[0] = False
    ring = ndimage.maximum_filter(np.where(compact[labels], labels, 0), size=2 * RING_PX + 1)
    ring = np.where(body & (labels == 0), ring, 0)  # where two seeds are near, the higher label's
    around, counted = _medians(g, ring, n)
    inside = np.bincount(ids, weights=g.ravel()[seed], minlength=n + 1) / np.maximum(area, 1)
    focal = compact & (counted >= 8) & (inside >= around * (1.0 + MIN_CONTRAST))
    return np.where(focal, (inside + around) / 2, np.inf)


def _inner(body: np.ndarray, band: float) -> np.ndarray:
    """Where ``body`` is deeper than ``band`` pixels from its outline, measured on a copy halved in
    each direction (to a pixel: the band is a share of the image, not an edge)."""
    if min(body.shape) < 8:
        return ndimage.distance_transform_edt(body) > band
    deep = ndimage.distance_transform_edt(_blocks(body, 2).all(axis=(1, 3))) > band / 2
    out = np.zeros(body.shape, bool)
    out[: deep.shape[0] * 2, : deep.shape[1] * 2] = deep.repeat(2, axis=0).repeat(2, axis=1)
    return out


def _blocks(a: np.ndarray, step: int) -> np.ndarray:
    """``a`` as ``step`` x ``step`` blocks (axes 1 and 3 run within a block), its last rows and
    columns that make no whole block left out."""
    h, w = a.shape[0] // step, a.shape[1] // step
    return a[: h * step, : w * step].reshape(h, step, w, step)


def _medians(g: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The median of ``g`` and the pixel count over each label ``0..n`` of ``labels`` (label 0 and
    empty labels: NaN), by one sort of the labelled pixels."""
    where = labels.ravel() > 0
    ids, values = labels.ravel()[where], g.ravel()[where]
    order = np.lexsort((values, ids))
    ids, values = ids[order], values[order]
    counts = np.bincount(ids, minlength=n + 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    medians = np.full(n + 1, np.nan)
    has = counts > 0
    lo, hi = starts[has] + (counts[has] - 1) // 2, starts[has] + counts[has] // 2
    medians[has] = (values[lo] + values[hi]) / 2
    return medians, counts


def _opened(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` opened with a disc of ``radius`` (unchanged for radius 0)."""
    r = int(radius)
    if r <= 0:
        return mask
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return ndimage.binary_opening(mask, structure=(x * x + y * y) <= r * r)
