"""Measured attributes of a region of interest: position, size, intensity, texture and shape,
and the words they give.

Every word the captioner later writes about an ROI comes from a number measured here, and
every threshold that turns a number into a word lives in ``roi_config.yaml`` (loaded into
:class:`~medtrinity_assets.rois.config.RoiConfig`), never in code. Work is done on the ROI's
bounding-box crop (padded by the ring width), so the cost of one ROI grows with its size, not
with the image's.

Conventions
-----------
- ``image`` is a 2D grey array or an ``(H, W, 3|4)`` colour array; intensities are measured on
  the grey (luminance) image on the 0-255 scale when the input is uint8.
- ``mask`` is a boolean ``(H, W)`` array of the ROI.
- Pixel ``(row, col)`` covers ``[col, col+1) x [row, row+1)``; centroids are pixel centres
  (``col + 0.5``) divided by the width / height, so they lie in 0-1.
- ``spacing`` is ``(row_mm, col_mm)`` of one pixel of this image, or ``None``.
- ``display_right`` / ``display_down`` are the patient direction letters (L/R/A/P/S/I) that
  +x / +y point to, or ``None`` when the orientation is unknown.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from medtrinity_assets.core.images import to_grey
from medtrinity_assets.core.tables import ROI_ATTRIBUTES
from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.core.vocabulary import intensity_words as vocabulary_intensity_words
from medtrinity_assets.rois.config import RoiConfig, default_config
from medtrinity_assets.rois.geometry import (
    axis_lengths,
    boundary_pixels,
    convex_area,
    convex_hull,
    crofton_perimeter,
    dilate_cross,
    feret_from_hull,
    valid_spacing,
)
from medtrinity_assets.rois.texture import quantise, texture_of_pixels

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_AXIS_OF = {"L": "lr", "R": "lr", "A": "ap", "P": "ap", "S": "si", "I": "si"}
_WORD_OF = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}
_CENTRE_WORD = {"lr": "midline", "ap": "central", "si": "central"}


# --------------------------------------------------------------------------------------
# words


def patient_terms(
    cx_norm: float, cy_norm: float, display_right: str | None, display_down: str | None, cfg: RoiConfig,
    thirds: tuple[int | None, int | None] | None = None,
) -> dict[str, str | None]:
    """Patient-axis terms from the image thirds and the display orientation.

    ``display_right='L'`` means +x points to the patient's left, so a region in the right
    third of the image is on the patient's left. An axis not shown in the image stays null.
    ``thirds`` (0, 1, 2 per axis, from :func:`region_thirds`) overrides the centroid's thirds; an
    axis with no third (a region across most of the image) has no patient term.
    """
    out: dict[str, str | None] = {"patient_lr": None, "patient_ap": None, "patient_si": None}
    if thirds is None:
        thirds = (_third_index(cx_norm, cfg), _third_index(cy_norm, cfg))
    for letter, k in ((display_right, thirds[0]), (display_down, thirds[1])):
        if not letter or k is None:
            continue
        letter = str(letter).strip().upper()[:1]
        if letter not in _AXIS_OF:
            continue
        axis = _AXIS_OF[letter]
        # Low coordinate -> the opposite direction of the letter, high -> the letter.
        out[f"patient_{axis}"] = (_WORD_OF[_OPPOSITE[letter]], _CENTRE_WORD[axis], _WORD_OF[letter])[k]
    return out


def _third_index(value: float, cfg: RoiConfig) -> int:
    return 0 if value < cfg.lower_third else 2 if value > cfg.upper_third else 1


#: a region lies in the image third that holds more than this share of its pixels (else where its centroid is)
MAJORITY_SHARE = 0.5


def region_thirds(
    rr: np.ndarray, cc: np.ndarray, origin: tuple[int, int], shape: tuple[int, int], centroid: tuple[float, float],
    cfg: RoiConfig,
) -> tuple[int | None, int | None]:
    """The (horizontal, vertical) third (0, 1, 2) of the region of pixels ``(rr, cc)`` (of a crop whose
    top-left pixel is ``origin`` in an image of ``shape``): per axis, the third that holds more than
    :data:`MAJORITY_SHARE` of the pixels (by pixel centre), else the third of the ``centroid``; None on
    an axis along which the region's box spans more than ``position.max_span`` of the image (a region
    over most of the image lies in no third). A region whose centroid sits just inside a cut is placed
    where it mostly is."""
    out: list[int | None] = []
    for coords, offset, size, centre in ((cc, origin[1], shape[1], centroid[0]), (rr, origin[0], shape[0], centroid[1])):
        if (int(coords.max()) - int(coords.min()) + 1) > cfg.position_max_span * size:
            out.append(None)
            continue
        low, high = third_bounds(size, cfg.lower_third, cfg.upper_third)
        before, after = int(np.count_nonzero(coords < low - offset)), int(np.count_nonzero(coords >= high - offset))
        counts = (before, coords.size - before - after, after)
        best = max(range(3), key=counts.__getitem__)
        out.append(best if counts[best] > MAJORITY_SHARE * coords.size else _third_index(centre, cfg))
    return out[0], out[1]


@lru_cache(maxsize=256)
def third_bounds(size: int, lower: float, upper: float) -> tuple[int, int]:
    """``(a, b)``: pixels ``0..a-1`` of an axis of ``size`` pixels have their centre before ``lower``
    (its first third), ``b..size-1`` after ``upper`` (a pixel centre exactly on a cut is in the middle)."""
    centres = (np.arange(size) + 0.5) / size
    return int(np.count_nonzero(centres < lower)), int(np.count_nonzero(centres <= upper))


def intensity_word(contrast: float | None, modality: str | None, cfg: RoiConfig) -> str | None:
    """The modality's brighter / darker / similar word for an ROI-to-ring contrast."""
    if contrast is None or not math.isfinite(contrast):
        return None
    mod = canonical_modality(modality or "")
    brighter, darker, similar = cfg.intensity_words.get(mod) or vocabulary_intensity_words(mod)
    if contrast > cfg.iso_contrast_max:
        return brighter
    if contrast < -cfg.iso_contrast_max:
        return darker
    return similar


def shape_word(
    circularity: float | None, solidity: float | None, axis_ratio: float | None, cfg: RoiConfig
) -> str | None:
    """irregular / lobulated (by solidity), else round / oval (by circularity and axis ratio)."""
    if circularity is None or solidity is None:
        return None
    if solidity < cfg.irregular_solidity_max:
        return "irregular"
    if solidity < cfg.lobulated_solidity_max:
        return "lobulated"
    if circularity >= cfg.round_circularity_min and (axis_ratio or 0.0) >= cfg.round_axis_ratio_min:
        return "round"
    return "oval"



# --------------------------------------------------------------------------------------
# per-ROI measurement


def measure_roi(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    spacing: tuple[float, float] | list[float] | None = None,
    display_right: str | None = None,
    display_down: str | None = None,
    modality: str | None = None,
    config: RoiConfig | None = None,
    whole_image: bool = False,
    outline: bool = True,
    _grey: np.ndarray | None = None,
    _range: tuple[float, float] | None = None,
    _window: tuple[int, int, int, int] | None = None,
    surround: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure one ROI; returns the columns of :data:`~medtrinity_assets.core.tables.ROI_ATTRIBUTES` (nulls where unknown).

    ``whole_image=True`` skips the ring (there are no surroundings) and the shape words (the
    frame's shape says nothing); ``outline=False`` skips the shape words too (a region whose edge is
    a threshold's, not a drawn outline: ``shape.named_for_classical``). ``_grey``/``_range`` let a caller pass the grey image and its
    intensity range once for many ROIs; ``_window=(r0, r1, c0, c1)`` says that ``mask`` is
    only the crop of the image at that window (saves building a full-size mask per ROI).
    ``surround`` (a full-size boolean mask) limits the ring to what may count as the ROI's
    surroundings: the image's foreground, or the tissue that holds the ROI (see
    :func:`foreground_mask`); no intensity word is given when too little of the ring is left.
    """
    cfg = config or default_config()
    grey = _grey if _grey is not None else to_grey(image)
    out: dict[str, Any] = dict.fromkeys(ROI_ATTRIBUTES)
    cropped = _padded_crop(np.asarray(mask, bool), _window, grey.shape, cfg.ring_gap_px + cfg.ring_width_px + 1)
    if cropped is None:
        out.update(area_px=0, area_fraction=0.0)
        return out
    mc, (r0, r1, c0, c1) = cropped
    gc = grey[r0:r1, c0:c1]
    rr, cc = np.nonzero(mc)
    area = int(rr.size)
    out.update(_position_and_size(rr, cc, (r0, c0), grey.shape, display_right, display_down, cfg))

    # One hull of the pixel centres (from the boundary pixels) serves the Feret diameter and
    # the convex area of the solidity.
    edge = boundary_pixels(mc)
    br, bcol = np.nonzero(edge)
    hull, hull_ok = convex_hull(np.stack((br, bcol), 1).astype(np.float64))
    sr, sc = valid_spacing(_spacing_pair(spacing))
    out["longest_diameter_px"], out["longest_diameter_mm"] = feret_from_hull(hull, sr, sc)

    vals = gc[mc]
    roi_mean = float(vals.sum() / vals.size)
    out["roi_mean"] = roi_mean
    if not whole_image:
        allowed = surround[r0:r1, c0:c1] if surround is not None else None
        out.update(_ring_contrast(gc, mc, roi_mean, modality, cfg, allowed))

    if area >= cfg.texture_min_area_px:
        lo, hi = _range if _range is not None else (float(grey.min()), float(grey.max()))
        out.update(_texture_terms(*_texture_pixels(gc, mc, edge, (vals, rr, cc), cfg), mc.shape, (lo, hi), cfg))
    elif area > 0:
        out["entropy"] = 0.0 if np.ptp(vals) == 0 else None

    if outline and not whole_image and area >= cfg.shape_min_area_px:
        out.update(_shape_terms(mc, rr, cc, hull, hull_ok, cfg))
    return out


def _texture_pixels(
    gc: np.ndarray, mc: np.ndarray, edge: np.ndarray, pixels: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: RoiConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, rows, cols)`` of the pixels whose texture is measured: the region's interior (without
    its ``edge`` pixels) when that keeps at least ``texture_min_area_px`` pixels, else all ``pixels``.
    Edge pixels mix the region with what is outside it (partial volume, a mask a pixel too wide): a
    few of them make a uniform disc read "coarse" or "heterogeneous"."""
    inner = mc & ~edge
    ir, ic = np.nonzero(inner)
    if ir.size < cfg.texture_min_area_px:
        return pixels
    return gc[ir, ic], ir, ic


def foreground_mask(grey: np.ndarray) -> np.ndarray:
    """The image's foreground: every pixel but a flat background that reaches the image's border
    with about the border's intensity (air around a body, the black outside a fundus or an
    ultrasound fan, the white of a slide). Tissue touching the border is textured, not flat, so
    it stays foreground; an image without such a background is all foreground."""
    h, w = grey.shape
    span = max(float(grey.max()) - float(grey.min()), 1e-9)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    level = float(np.median(border))
    near, n = ndimage.label(np.abs(grey - level) <= 0.1 * span)
    at_edge = np.zeros(n + 1, bool)  # which components reach the border (a lookup, not np.isin's sort)
    at_edge[np.concatenate([near[0], near[-1], near[:, 0], near[:, -1]])] = True
    at_edge[0] = False
    background = at_edge[near]
    share = float(background.mean())
    if share < 0.02 or share > 0.98 or float(grey[background].std()) > 0.04 * span:
        return np.ones((h, w), bool)
    return ~background


def _padded_crop(
    m: np.ndarray, window: tuple[int, int, int, int] | None, shape: tuple[int, int], pad: int
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The ROI's bounding box grown by ``pad`` pixels (clipped to the image of ``shape``) as a
    boolean crop, with its ``(r0, r1, c0, c1)`` in the image; ``None`` for an empty mask.

    ``m`` is the full-size mask, or with ``window=(r0, r1, c0, c1)`` its crop at that window.
    """
    h, w = shape
    wr0, wc0 = (window[0], window[2]) if window is not None else (0, 0)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    br0, br1 = int(rows[0]) + wr0, int(rows[-1]) + 1 + wr0
    bc0, bc1 = int(cols[0]) + wc0, int(cols[-1]) + 1 + wc0
    r0, r1 = max(br0 - pad, 0), min(br1 + pad, h)
    c0, c1 = max(bc0 - pad, 0), min(bc1 + pad, w)
    mc = np.zeros((r1 - r0, c1 - c0), bool)
    mc[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0] = m[br0 - wr0 : br1 - wr0, bc0 - wc0 : bc1 - wc0]
    return mc, (r0, r1, c0, c1)


def _position_and_size(
    rr: np.ndarray,
    cc: np.ndarray,
    origin: tuple[int, int],
    shape: tuple[int, int],
    display_right: str | None,
    display_down: str | None,
    cfg: RoiConfig,
) -> dict[str, Any]:
    """Centroid, image-thirds (:func:`region_thirds`) and patient-axis words, area and area fraction of
    the ROI pixels ``(rr, cc)`` of a crop whose top-left pixel is ``origin`` in an image of ``shape``."""
    (r0, c0), (h, w) = origin, shape
    area = int(rr.size)
    # (sum / n is what ndarray.mean computes, without its per-call overhead)
    cy = (rr.sum() / area + r0 + 0.5) / h
    cx = (cc.sum() / area + c0 + 0.5) / w
    out: dict[str, Any] = {"centroid_norm": [float(cx), float(cy)]}
    h_third, v_third = region_thirds(rr, cc, origin, shape, (cx, cy), cfg)
    out["horizontal"] = None if h_third is None else ("left", "centre", "right")[h_third]
    out["vertical"] = None if v_third is None else ("upper", "middle", "lower")[v_third]
    out.update(patient_terms(cx, cy, display_right, display_down, cfg, (h_third, v_third)))
    out["patient_side"] = out["patient_lr"]
    out["area_px"] = area
    out["area_fraction"] = area / float(h * w)
    return out


def _spacing_pair(spacing: tuple[float, float] | list[float] | None) -> tuple[float, ...] | None:
    """``spacing`` as a tuple when it has at least two entries, else ``None``."""
    return tuple(spacing) if spacing is not None and len(spacing) >= 2 else None


#: a ring restricted to the allowed surroundings must keep this share of its pixels to be used
MIN_RING_SHARE = 0.25


def _ring_contrast(
    gc: np.ndarray,
    mc: np.ndarray,
    roi_mean: float,
    modality: str | None,
    cfg: RoiConfig,
    allowed: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean of the ring of ``ring_width_px`` around the ROI, ``ring_gap_px`` away from it (the pixels
    next to its edge mix it with its surroundings and pull the ring's mean toward its own), within the
    ``allowed`` pixels; right next to it where too little of the ring further out is allowed (a ribbon
    at the body's edge). Then the ROI's contrast to it and its intensity word; nothing when the ring is
    empty (the ROI fills the image) or mostly outside the allowed surroundings (background, other tissue)."""
    for gap in dict.fromkeys((cfg.ring_gap_px, 0)):
        ring_vals = _ring_values(gc, mc, cfg.ring_width_px, gap, allowed)
        if ring_vals is not None:
            break
    else:
        return {}
    ring_mean = float(ring_vals.sum() / ring_vals.size)
    denom = roi_mean + ring_mean
    contrast = (roi_mean - ring_mean) / denom if denom > 1e-9 else 0.0
    return {
        "ring_mean": ring_mean,
        "intensity_contrast": float(contrast),
        "intensity_word": intensity_word(contrast, modality, cfg),
    }


def _ring_values(gc: np.ndarray, mc: np.ndarray, width: int, gap: int, allowed: np.ndarray | None) -> np.ndarray | None:
    """The grey values of the ring ``width`` pixels wide, ``gap`` pixels out from ``mc``, within ``allowed``;
    None when that leaves nothing or under :data:`MIN_RING_SHARE` of the ring."""
    ring = dilate_cross(mc, gap + width)
    ring &= ~(dilate_cross(mc, gap) if gap else mc)
    full = int(ring.sum())
    if allowed is not None:
        ring &= allowed
    values = gc[ring]
    return values if values.size and values.size >= MIN_RING_SHARE * full else None


def _texture_terms(
    vals: np.ndarray,
    rr: np.ndarray,
    cc: np.ndarray,
    shape: tuple[int, int],
    value_range: tuple[float, float],
    cfg: RoiConfig,
) -> dict[str, Any]:
    """GLCM contrast and homogeneity, entropy and the texture words of the ROI pixels
    ``(rr, cc)`` with grey values ``vals``, quantised over the image's ``value_range``."""
    q = quantise(vals, value_range[0], value_range[1], cfg.texture_levels)  # the ROI's pixels, as rr, cc
    g_contrast, g_hom, entropy = texture_of_pixels(q, rr, cc, shape, cfg)
    out: dict[str, Any] = {"glcm_contrast": g_contrast, "glcm_homogeneity": g_hom, "entropy": entropy}
    if g_hom is not None and entropy is not None:
        homogeneous = g_hom >= cfg.homogeneity_min and entropy <= cfg.entropy_max_homogeneous
        homogeneous = homogeneous and not two_levels(vals, value_range)
        out["texture_homogeneity_word"] = "homogeneous" if homogeneous else "heterogeneous"
    if g_contrast is not None:
        out["texture_smoothness_word"] = "smooth" if g_contrast <= cfg.contrast_max_smooth else "coarse"
    return out


def two_levels(vals: np.ndarray, value_range: tuple[float, float]) -> bool:
    """Whether a region's grey values form two distinct levels (two overlapping discs of different
    brightness, a bright rim round a dark core): each side of their Otsu threshold holds at least
    15% of the pixels, and the sides' means are 3 pooled standard deviations and 8% of the image's
    range apart. Locally smooth, such a region is still not homogeneous."""
    v = np.asarray(vals, np.float64)
    if v.size < 32 or float(v.max()) - float(v.min()) < 1e-9:
        return False
    from skimage.filters import threshold_otsu

    t = threshold_otsu(v)
    lo, hi = v[v <= t], v[v > t]
    if min(lo.size, hi.size) < 0.15 * v.size:
        return False
    gap = float(hi.mean() - lo.mean())
    pooled = float(np.sqrt((lo.var() * lo.size + hi.var() * hi.size) / v.size))
    return gap >= 3 * pooled and gap >= 0.08 * (value_range[1] - value_range[0])


def _holes_filled(mc: np.ndarray, most: float) -> np.ndarray | None:
    """``mc`` with its holes filled when they hold at most ``most`` pixels in all (holes: background
    4-components that reach no side of the crop), else None (and None when it has none). A ribbon's
    many islands together are most of its shape (a cortex ribbon round white matter is no oval).
    A hole leaves a gap in its row: a region with none (a disc, an ellipse) is not labelled."""
    counts = mc.sum(axis=1)
    first, last = mc.argmax(axis=1), mc.shape[1] - 1 - mc[:, ::-1].argmax(axis=1)
    if not np.any((counts < last - first + 1) & (counts > 0)):
        return None
    background, n = ndimage.label(~mc)
    if n <= 1:
        return None
    holes = np.ones(n + 1, bool)
    holes[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = False
    holes[0] = False
    filled = holes[background]
    return mc | filled if filled.any() and filled.sum() <= most else None


def _shape_terms(
    mc: np.ndarray, rr: np.ndarray, cc: np.ndarray, hull: np.ndarray, hull_ok: bool, cfg: RoiConfig
) -> dict[str, Any]:
    """Circularity, solidity, axis ratio and shape word of the ROI ``mc`` (pixels ``(rr, cc)``)."""
    # What regionprops gives for the single region of ``mc``: Crofton perimeter, solidity
    # (area over the convex area) and the axis lengths of the inertia ellipse; of its outline, so
    # with its small holes filled (a speck's edge is no part of the outline; the hull is the same).
    filled = _holes_filled(mc, cfg.fill_hole_max_share * rr.size)
    if filled is not None:
        mc = filled
        rr, cc = np.nonzero(mc)
    area = int(rr.size)
    perim = crofton_perimeter(mc)
    circ = min(1.0, 4 * math.pi * area / perim**2) if perim > 0 else None
    solidity = area / convex_area(hull, hull_ok)
    major, minor = axis_lengths(rr, cc)
    ratio = minor / major if major > 0 else None
    return {
        "circularity": circ,
        "solidity": solidity,
        "axis_ratio": ratio,
        "shape_word": shape_word(circ, solidity, ratio, cfg),
    }
