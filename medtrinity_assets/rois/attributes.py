"""Measured attributes of a region of interest: position, size, intensity, texture, shape, relations.

Every word the captioner later writes about an ROI comes from a number measured here, and
every threshold that turns a number into a word lives in ``roi_config.yaml`` (loaded into
:class:`RoiConfig`), never in code. Work is done on the ROI's bounding-box crop (padded by the
ring width), so the cost of one ROI grows with its size, not with the image's.

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

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from medtrinity_assets.core.images import to_grey
from medtrinity_assets.core.tables import ROI_ATTRIBUTES
from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.core.vocabulary import intensity_words as vocabulary_intensity_words

DEFAULT_CONFIG_PATH = Path(__file__).with_name("roi_config.yaml")

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_AXIS_OF = {"L": "lr", "R": "lr", "A": "ap", "P": "ap", "S": "si", "I": "si"}
_WORD_OF = {"L": "left", "R": "right", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}
_CENTRE_WORD = {"lr": "midline", "ap": "central", "si": "central"}


@dataclass(frozen=True)
class RoiConfig:
    """Thresholds and parameters of the ROI stage (see ``roi_config.yaml`` for each meaning)."""

    # geometry
    min_area_px: int = 4
    predicted_min_area_px: int = 16
    connectivity_8: bool = True
    # position
    lower_third: float = 1 / 3
    upper_third: float = 2 / 3
    # intensity
    ring_width_px: int = 5
    iso_contrast_max: float = 0.08
    # overrides of the vocabulary's [brighter, darker, similar] words, by canonical modality
    intensity_words: dict[str, list[str]] = field(default_factory=dict)
    # texture
    texture_levels: int = 32
    glcm_distance: int = 1
    homogeneity_min: float = 0.5
    entropy_max_homogeneous: float = 3.0
    contrast_max_smooth: float = 4.0
    texture_min_area_px: int = 16
    # shape
    irregular_solidity_max: float = 0.75
    lobulated_solidity_max: float = 0.9
    round_circularity_min: float = 0.8
    round_axis_ratio_min: float = 0.8
    shape_min_area_px: int = 16
    # relations
    inside_fraction: float = 0.9
    max_relations: int = 5
    diagonal_ratio: float = 0.5
    # classical fallback
    classical_modalities: tuple[str, ...] = (
        "microscopy",
        "histopathology",
        "nuclear medicine",
        "pet",
        "dermoscopy",
    )
    classical_smooth_sigma: float = 1.0
    classical_opening_radius: int = 1

    # YAML section/key -> dataclass field
    _YAML_MAP = {
        ("geometry", "min_area_px"): "min_area_px",
        ("geometry", "predicted_min_area_px"): "predicted_min_area_px",
        ("geometry", "connectivity_8"): "connectivity_8",
        ("position", "lower_third"): "lower_third",
        ("position", "upper_third"): "upper_third",
        ("intensity", "ring_width_px"): "ring_width_px",
        ("intensity", "iso_contrast_max"): "iso_contrast_max",
        ("intensity", "words"): "intensity_words",
        ("texture", "levels"): "texture_levels",
        ("texture", "glcm_distance"): "glcm_distance",
        ("texture", "homogeneity_min"): "homogeneity_min",
        ("texture", "entropy_max_homogeneous"): "entropy_max_homogeneous",
        ("texture", "contrast_max_smooth"): "contrast_max_smooth",
        ("texture", "min_area_px"): "texture_min_area_px",
        ("shape", "irregular_solidity_max"): "irregular_solidity_max",
        ("shape", "lobulated_solidity_max"): "lobulated_solidity_max",
        ("shape", "round_circularity_min"): "round_circularity_min",
        ("shape", "round_axis_ratio_min"): "round_axis_ratio_min",
        ("shape", "min_area_px"): "shape_min_area_px",
        ("relations", "inside_fraction"): "inside_fraction",
        ("relations", "max_relations"): "max_relations",
        ("relations", "diagonal_ratio"): "diagonal_ratio",
        ("classical", "modalities"): "classical_modalities",
        ("classical", "smooth_sigma"): "classical_smooth_sigma",
        ("classical", "opening_radius"): "classical_opening_radius",
    }

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> RoiConfig:
        """Read a YAML file (default: the packaged ``roi_config.yaml``), then apply overrides.

        Overrides use the dataclass field names (``RoiConfig.load(ring_width_px=3)``).
        Unknown sections or keys raise ``ValueError`` naming them.
        """
        path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path.name}: expected a mapping of sections")
        values: dict[str, Any] = {}
        for section, body in raw.items():
            if not isinstance(body, dict):
                raise ValueError(f"{path.name}: section '{section}' must be a mapping")
            for key, value in body.items():
                name = cls._YAML_MAP.get((section, key))
                if name is None:
                    raise ValueError(f"{path.name}: unknown key '{section}.{key}'")
                values[name] = value
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown RoiConfig fields: {sorted(unknown)}")
        if "classical_modalities" in values:
            values["classical_modalities"] = tuple(
                canonical_modality(m) for m in values["classical_modalities"]
            )
        if "intensity_words" in values:
            words = {
                canonical_modality(k) if k != "default" else k: list(v)
                for k, v in values["intensity_words"].items()
            }
            for k, v in words.items():
                if len(v) != 3:
                    raise ValueError(f"intensity words for '{k}' must be [brighter, darker, similar]")
            values["intensity_words"] = words
        cfg = cls(**values)
        if not 0 < cfg.lower_third < cfg.upper_third < 1:
            raise ValueError("position thirds must satisfy 0 < lower_third < upper_third < 1")
        return cfg

    def with_overrides(self, **overrides: Any) -> RoiConfig:
        return replace(self, **overrides)


_DEFAULT: RoiConfig | None = None


def default_config() -> RoiConfig:
    """The packaged configuration (read once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RoiConfig.load()
    return _DEFAULT


# --------------------------------------------------------------------------------------
# helpers


def _third(value: float, cfg: RoiConfig, words: tuple[str, str, str]) -> str:
    if value < cfg.lower_third:
        return words[0]
    if value > cfg.upper_third:
        return words[2]
    return words[1]


def patient_terms(
    cx_norm: float, cy_norm: float, display_right: str | None, display_down: str | None, cfg: RoiConfig
) -> dict[str, str | None]:
    """Patient-axis terms from the image thirds and the display orientation.

    ``display_right='L'`` means +x points to the patient's left, so a centroid in the right
    third of the image is on the patient's left. An axis not shown in the image stays null.
    """
    out: dict[str, str | None] = {"patient_lr": None, "patient_ap": None, "patient_si": None}
    for letter, pos in ((display_right, cx_norm), (display_down, cy_norm)):
        if not letter:
            continue
        letter = str(letter).strip().upper()[:1]
        if letter not in _AXIS_OF:
            continue
        axis = _AXIS_OF[letter]
        # Low coordinate -> the opposite direction of the letter, high -> the letter.
        term = _third(pos, cfg, (_WORD_OF[_OPPOSITE[letter]], _CENTRE_WORD[axis], _WORD_OF[letter]))
        out[f"patient_{axis}"] = term
    return out


def _boundary(m: np.ndarray) -> np.ndarray:
    """ROI pixels with a 4-neighbour outside the ROI (pixels beyond the array count as outside):
    ``m & ~binary_erosion(m)`` with the cross structure, by slicing."""
    p = np.zeros((m.shape[0] + 2, m.shape[1] + 2), bool)
    p[1:-1, 1:-1] = m
    inner = p[:-2, 1:-1] & p[2:, 1:-1]
    inner &= p[1:-1, :-2]
    inner &= p[1:-1, 2:]
    return m & ~inner


def _dilate_cross(m: np.ndarray, iterations: int) -> np.ndarray:
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


def _hull(pts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Convex hull vertices of ``pts`` (counter-clockwise) and whether Qhull succeeded; for
    collinear (or single) points all of them are returned with ``False``."""
    if len(pts) < 3:
        return pts, False
    try:
        return pts[ConvexHull(pts).vertices], True
    except (QhullError, ValueError):  # collinear points: use them all
        return pts, False


def _feret(hull: np.ndarray, sr: float | None, sc: float | None) -> tuple[float, float | None]:
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


def _valid_spacing(spacing: Any) -> tuple[float | None, float | None]:
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
    sr, sc = _valid_spacing(spacing)
    pts = np.stack(np.nonzero(_boundary(m)), 1).astype(np.float64)  # (row, col)
    return _feret(_hull(pts)[0], sr, sc)


_DIAMOND_NORMALS = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


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
    return _texture_of_pixels(q[rr, cc], rr, cc, q.shape, cfg)


def _texture_of_pixels(
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


def intensity_word(contrast: float | None, modality: str | None, cfg: RoiConfig) -> str | None:
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
    _grey: np.ndarray | None = None,
    _range: tuple[float, float] | None = None,
    _window: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """Measure one ROI; returns the columns of :data:`~medtrinity_assets.core.tables.ROI_ATTRIBUTES` (nulls where unknown).

    ``whole_image=True`` skips the ring (there are no surroundings) and the shape words (the
    frame's shape says nothing). ``_grey``/``_range`` let a caller pass the grey image and its
    intensity range once for many ROIs; ``_window=(r0, r1, c0, c1)`` says that ``mask`` is
    only the crop of the image at that window (saves building a full-size mask per ROI).
    """
    cfg = config or default_config()
    grey = _grey if _grey is not None else to_grey(image)
    m = np.asarray(mask, bool)
    h, w = grey.shape
    out: dict[str, Any] = dict.fromkeys(ROI_ATTRIBUTES)
    wr0, wc0 = (_window[0], _window[2]) if _window is not None else (0, 0)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        out.update(area_px=0, area_fraction=0.0)
        return out
    cols = np.flatnonzero(m.any(axis=0))
    pad = cfg.ring_width_px + 1
    br0, br1 = int(rows[0]) + wr0, int(rows[-1]) + 1 + wr0
    bc0, bc1 = int(cols[0]) + wc0, int(cols[-1]) + 1 + wc0
    r0, r1 = max(br0 - pad, 0), min(br1 + pad, h)
    c0, c1 = max(bc0 - pad, 0), min(bc1 + pad, w)
    mc = np.zeros((r1 - r0, c1 - c0), bool)
    mc[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0] = m[br0 - wr0 : br1 - wr0, bc0 - wc0 : bc1 - wc0]
    gc = grey[r0:r1, c0:c1]

    rr, cc = np.nonzero(mc)
    area = int(rr.size)
    # (sum / n is what ndarray.mean computes, without its per-call overhead)
    cy = (rr.sum() / area + r0 + 0.5) / h
    cx = (cc.sum() / area + c0 + 0.5) / w
    out["centroid_norm"] = [float(cx), float(cy)]
    out["horizontal"] = _third(cx, cfg, ("left", "centre", "right"))
    out["vertical"] = _third(cy, cfg, ("upper", "middle", "lower"))
    out.update(patient_terms(cx, cy, display_right, display_down, cfg))
    out["patient_side"] = out["patient_lr"]
    out["area_px"] = area
    out["area_fraction"] = area / float(h * w)

    sp = tuple(spacing) if spacing is not None and len(spacing) >= 2 else None
    sr, sc = _valid_spacing(sp)
    # One hull of the pixel centres (from the boundary pixels) serves the Feret diameter and
    # the convex area of the solidity.
    br, bcol = np.nonzero(_boundary(mc))
    hull, hull_ok = _hull(np.stack((br, bcol), 1).astype(np.float64))
    out["longest_diameter_px"], out["longest_diameter_mm"] = _feret(hull, sr, sc)

    vals = gc[mc]
    roi_mean = float(vals.sum() / vals.size)
    out["roi_mean"] = roi_mean
    if not whole_image:
        ring = _dilate_cross(mc, cfg.ring_width_px)
        ring &= ~mc
        ring_vals = gc[ring]
        if ring_vals.size:
            ring_mean = float(ring_vals.sum() / ring_vals.size)
            out["ring_mean"] = ring_mean
            denom = roi_mean + ring_mean
            contrast = (roi_mean - ring_mean) / denom if denom > 1e-9 else 0.0
            out["intensity_contrast"] = float(contrast)
            out["intensity_word"] = intensity_word(contrast, modality, cfg)

    if area >= cfg.texture_min_area_px:
        lo, hi = _range if _range is not None else (float(grey.min()), float(grey.max()))
        q = quantise(vals, lo, hi, cfg.texture_levels)  # the ROI's pixels, as rr, cc
        g_contrast, g_hom, entropy = _texture_of_pixels(q, rr, cc, mc.shape, cfg)
        out["glcm_contrast"], out["glcm_homogeneity"], out["entropy"] = g_contrast, g_hom, entropy
        if g_hom is not None and entropy is not None:
            homogeneous = g_hom >= cfg.homogeneity_min and entropy <= cfg.entropy_max_homogeneous
            out["texture_homogeneity_word"] = "homogeneous" if homogeneous else "heterogeneous"
        if g_contrast is not None:
            out["texture_smoothness_word"] = "smooth" if g_contrast <= cfg.contrast_max_smooth else "coarse"
    elif area > 0:
        out["entropy"] = 0.0 if np.ptp(vals) == 0 else None

    if not whole_image and area >= cfg.shape_min_area_px:
        # What regionprops gives for the single region of ``mc``: Crofton perimeter, solidity
        # (area over the convex area) and the axis lengths of the inertia ellipse.
        perim = crofton_perimeter(mc)
        circ = min(1.0, 4 * math.pi * area / perim**2) if perim > 0 else None
        solidity = area / convex_area(hull, hull_ok)
        major, minor = axis_lengths(rr, cc)
        ratio = minor / major if major > 0 else None
        out["circularity"], out["solidity"], out["axis_ratio"] = circ, solidity, ratio
        out["shape_word"] = shape_word(circ, solidity, ratio, cfg)
    return out


# --------------------------------------------------------------------------------------
# per-image relations


def _direction(dx: float, dy: float, cfg: RoiConfig) -> str:
    """Image-frame relation of A to B given B->A centroid offset (dx right, dy down)."""
    horiz = "left of" if dx < 0 else "right of"
    vert = "above" if dy < 0 else "below"
    ax, ay = abs(dx), abs(dy)
    if ax == 0 and ay == 0:
        return "overlapping"
    if ax >= ay:
        return f"{vert} and {horiz}" if ay >= cfg.diagonal_ratio * ax and ay > 0 else horiz
    return f"{vert} and {horiz}" if ax >= cfg.diagonal_ratio * ay and ax > 0 else vert


def relations(
    roi_ids: list[str],
    centroids: np.ndarray,
    bboxes: np.ndarray,
    config: RoiConfig | None = None,
    labels: list[str] | None = None,
) -> list[str]:
    """For each ROI a JSON list of its relations to its nearest other ROIs.

    ``centroids``: ``(n, 2)`` normalised (x, y); ``bboxes``: ``(n, 4)`` normalised xyxy.
    Each item: ``{"other": roi_id, "relation": "left of" | "above" | "above and left of" |
    ... | "overlapping", "distance_norm": centroid distance in image widths/heights,
    "overlaps": bool (bounding boxes intersect), "other_label": the other ROI's label when
    ``labels`` is given}``. The relation reads "this ROI is <relation> the other".
    """
    cfg = config or default_config()
    n = len(roi_ids)
    if n < 2:
        return ["[]"] * n
    c = np.asarray(centroids, np.float64)
    b = np.asarray(bboxes, np.float64)
    d = c[:, None, :] - c[None, :, :]  # i relative to j
    dist = np.sqrt((d**2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    ix0 = np.maximum(b[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(b[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(b[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(b[:, None, 3], b[None, :, 3])
    overlap = (ix1 > ix0) & (iy1 > iy0)
    k = min(cfg.max_relations, n - 1)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
    out = []
    for i in range(n):
        items = []
        for j in nearest[i]:
            item = {
                "other": roi_ids[j],
                "relation": _direction(float(d[i, j, 0]), float(d[i, j, 1]), cfg),
                "distance_norm": round(float(dist[i, j]), 4),
                "overlaps": bool(overlap[i, j]),
            }
            if labels is not None:
                item["other_label"] = labels[j]
            items.append(item)
        out.append(json.dumps(items))
    return out


def inside_labels(
    roi_masks: list[tuple[np.ndarray, tuple[int, int, int, int]]],
    roi_label_values: list[int | None],
    label_map: np.ndarray | None,
    label_names: dict[int, str],
    config: RoiConfig | None = None,
) -> list[str | None]:
    """Name of another label whose (hole-filled) mask holds >= ``inside_fraction`` of each ROI.

    ``roi_masks`` are ``(crop_mask, (r0, r1, c0, c1))`` pairs. Only computed when the label
    map holds at least two label values; holes are filled so that a lesion labelled inside an
    organ (whose own pixels carry the lesion's value) counts as inside that organ.

    The hole-filled mask of a value is ``ndimage.binary_fill_holes(label_map == value)``,
    computed only for values whose bounding box meets some ROI, and only over that bounding
    box: a hole lies inside the box, and background that touches the box's edge touches the
    image's edge (through the outside of the box), so the result is the same. The holes are
    the 4-connected background components that do not touch the box's edge.
    """
    cfg = config or default_config()
    n = len(roi_masks)
    if label_map is None or n == 0:
        return [None] * n
    lm = np.asarray(label_map)
    boxes: dict[int, tuple[int, int, int, int]] = {}
    if lm.size and np.issubdtype(lm.dtype, np.integer) and lm.min() >= 0 and lm.max() <= 1 << 20:
        for i, sl in enumerate(ndimage.find_objects(lm.astype(np.intp, copy=False))):
            if sl is not None:
                boxes[i + 1] = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
    else:
        h, w = lm.shape
        boxes = {int(v): (0, h, 0, w) for v in np.unique(lm) if v != 0}
    if len(boxes) < 2:
        return [None] * n
    cross = ndimage.generate_binary_structure(2, 1)
    filled: dict[int, np.ndarray] = {}

    def filled_in_box(v: int) -> np.ndarray:
        if v not in filled:
            b0, b1, b2, b3 = boxes[v]
            lab, k = ndimage.label(lm[b0:b1, b2:b3] != v, structure=cross)
            fill = np.ones(k + 1, bool)  # label 0 is the value's own pixels
            for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
                fill[edge] = False
            fill[0] = True
            filled[v] = fill[lab]
        return filled[v]

    out: list[str | None] = []
    for (crop, (r0, r1, c0, c1)), own in zip(roi_masks, roi_label_values, strict=True):
        area = int(crop.sum())
        best, best_frac = None, 0.0
        if area:
            for v, (b0, b1, b2, b3) in boxes.items():
                if v == own:
                    continue
                o0, o1, o2, o3 = max(r0, b0), min(r1, b1), max(c0, b2), min(c1, b3)
                if o0 >= o1 or o2 >= o3:
                    continue  # no overlap: frac would be 0
                sub = crop[o0 - r0 : o1 - r0, o2 - c0 : o3 - c0]
                if float(np.count_nonzero(sub)) / area < cfg.inside_fraction:
                    continue  # even all of the ROI within the box would be too little
                f = filled_in_box(v)[o0 - b0 : o1 - b0, o2 - b2 : o3 - b2]
                hit = int(np.count_nonzero(f & sub))
                frac = float(hit) / area
                if frac >= cfg.inside_fraction and frac > best_frac:
                    best, best_frac = v, frac
        out.append(label_names.get(best, f"label_{best}") if best is not None else None)
    return out
