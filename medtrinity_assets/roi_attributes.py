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
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops

from medtrinity_assets.registry import canonical_modality

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
    intensity_words: dict[str, list[str]] = field(
        default_factory=lambda: {"default": ["brighter", "darker", "similar"]}
    )
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


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luminance as float64 (0-255 for uint8 input)."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.shape[-1] == 3:
            arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        else:
            arr = arr[..., 0]
    return arr.astype(np.float64, copy=False)


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


def max_feret(mask: np.ndarray, spacing: tuple[float, float] | None = None) -> tuple[float, float | None]:
    """Maximum Feret diameter (px, mm): the largest distance between the centres of two ROI
    pixels (from the convex hull of the boundary pixels) plus one pixel's length along that
    direction, so a run of n pixels measures n and a digital disc of radius r about 2r."""
    m = np.asarray(mask, bool)
    if not m.any():
        return 0.0, None
    sr = sc = None
    if spacing is not None:
        sr, sc = float(spacing[0]), float(spacing[1])
        if not (sr > 0 and sc > 0 and math.isfinite(sr) and math.isfinite(sc)):
            sr = sc = None
    boundary = m & ~ndimage.binary_erosion(m)
    pts = np.stack(np.nonzero(boundary), 1).astype(np.float64)  # (row, col)
    if len(pts) == 1:
        return 1.0, (None if sr is None else (sr + sc) / 2.0)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # collinear points: use them all
        hull = pts
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    px = float(dist[i, j]) + 1.0
    if sr is None:
        return px, None
    scaled = diff * np.array([sr, sc])
    dmm = np.sqrt((scaled**2).sum(-1))
    i, j = np.unravel_index(int(np.argmax(dmm)), dmm.shape)
    u = diff[i, j] / max(float(dist[i, j]), 1e-12)
    step_mm = math.hypot(u[0] * sr, u[1] * sc)
    return px, float(dmm[i, j]) + step_mm


def quantise(grey: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """Map ``grey`` onto ``0..levels-1`` over the range [lo, hi]."""
    scale = levels / (hi - lo) if hi > lo else 0.0
    q = np.floor((grey - lo) * scale)
    return np.clip(q, 0, levels - 1).astype(np.int32)


def texture_stats(
    q: np.ndarray, mask: np.ndarray, cfg: RoiConfig
) -> tuple[float | None, float | None, float | None]:
    """Masked GLCM contrast and homogeneity, and Shannon entropy (bits) of quantised ``q``.

    Pixels outside the mask get a reserved level 0 (ROI levels are shifted to 1..L), and the
    GLCM rows/columns of level 0 are dropped, so only pairs with both pixels in the ROI count.
    """
    levels = cfg.texture_levels
    vals = q[mask]
    if vals.size == 0:
        return None, None, None
    hist = np.bincount(vals, minlength=levels).astype(np.float64)
    p = hist[hist > 0] / vals.size
    entropy = float(-(p * np.log2(p)).sum())
    shifted = np.where(mask, q + 1, 0).astype(np.uint8 if levels < 255 else np.uint16)
    angles = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = graycomatrix(shifted, [cfg.glcm_distance], angles, levels=levels + 1, symmetric=True, normed=False)
    glcm = glcm[1:, 1:, :, :].astype(np.float64)
    totals = glcm.sum(axis=(0, 1))
    if not (totals > 0).any():
        return None, None, entropy
    keep = totals[0] > 0
    glcm = glcm[:, :, :, keep]
    contrast = float(graycoprops(glcm, "contrast").mean())
    homogeneity = float(graycoprops(glcm, "homogeneity").mean())
    return contrast, homogeneity, entropy


def intensity_word(contrast: float | None, modality: str | None, cfg: RoiConfig) -> str | None:
    if contrast is None or not math.isfinite(contrast):
        return None
    mod = canonical_modality(modality or "")
    brighter, darker, similar = cfg.intensity_words.get(mod) or cfg.intensity_words.get(
        "default", ["brighter", "darker", "similar"]
    )
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

ATTRIBUTE_SCHEMA: dict[str, str] = {
    "centroid_norm": "list[float]",
    "horizontal": "str",
    "vertical": "str",
    "patient_lr": "str",
    "patient_ap": "str",
    "patient_si": "str",
    "patient_side": "str",
    "area_px": "int",
    "area_fraction": "float",
    "longest_diameter_px": "float",
    "longest_diameter_mm": "float",
    "roi_mean": "float",
    "ring_mean": "float",
    "intensity_contrast": "float",
    "intensity_word": "str",
    "glcm_contrast": "float",
    "glcm_homogeneity": "float",
    "entropy": "float",
    "texture_homogeneity_word": "str",
    "texture_smoothness_word": "str",
    "circularity": "float",
    "solidity": "float",
    "axis_ratio": "float",
    "shape_word": "str",
}


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
    """Measure one ROI; returns the columns of :data:`ATTRIBUTE_SCHEMA` (nulls where unknown).

    ``whole_image=True`` skips the ring (there are no surroundings) and the shape words (the
    frame's shape says nothing). ``_grey``/``_range`` let a caller pass the grey image and its
    intensity range once for many ROIs; ``_window=(r0, r1, c0, c1)`` says that ``mask`` is
    only the crop of the image at that window (saves building a full-size mask per ROI).
    """
    cfg = config or default_config()
    grey = _grey if _grey is not None else to_grey(image)
    m = np.asarray(mask, bool)
    h, w = grey.shape
    out: dict[str, Any] = dict.fromkeys(ATTRIBUTE_SCHEMA)
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
    cy = (rr.mean() + r0 + 0.5) / h
    cx = (cc.mean() + c0 + 0.5) / w
    out["centroid_norm"] = [float(cx), float(cy)]
    out["horizontal"] = _third(cx, cfg, ("left", "centre", "right"))
    out["vertical"] = _third(cy, cfg, ("upper", "middle", "lower"))
    out.update(patient_terms(cx, cy, display_right, display_down, cfg))
    out["patient_side"] = out["patient_lr"]
    out["area_px"] = area
    out["area_fraction"] = area / float(h * w)

    sp = tuple(spacing) if spacing is not None and len(spacing) >= 2 else None
    feret_px, feret_mm = max_feret(mc, sp)
    out["longest_diameter_px"] = feret_px
    out["longest_diameter_mm"] = feret_mm

    vals = gc[mc]
    roi_mean = float(vals.mean())
    out["roi_mean"] = roi_mean
    if not whole_image:
        ring = ndimage.binary_dilation(mc, iterations=cfg.ring_width_px) & ~mc
        if ring.any():
            ring_mean = float(gc[ring].mean())
            out["ring_mean"] = ring_mean
            denom = roi_mean + ring_mean
            contrast = (roi_mean - ring_mean) / denom if denom > 1e-9 else 0.0
            out["intensity_contrast"] = float(contrast)
            out["intensity_word"] = intensity_word(contrast, modality, cfg)

    if area >= cfg.texture_min_area_px:
        lo, hi = _range if _range is not None else (float(grey.min()), float(grey.max()))
        q = quantise(gc, lo, hi, cfg.texture_levels)
        g_contrast, g_hom, entropy = texture_stats(q, mc, cfg)
        out["glcm_contrast"], out["glcm_homogeneity"], out["entropy"] = g_contrast, g_hom, entropy
        if g_hom is not None and entropy is not None:
            homogeneous = g_hom >= cfg.homogeneity_min and entropy <= cfg.entropy_max_homogeneous
            out["texture_homogeneity_word"] = "homogeneous" if homogeneous else "heterogeneous"
        if g_contrast is not None:
            out["texture_smoothness_word"] = "smooth" if g_contrast <= cfg.contrast_max_smooth else "coarse"
    elif area > 0:
        out["entropy"] = 0.0 if np.ptp(vals) == 0 else None

    if not whole_image and area >= cfg.shape_min_area_px:
        props = regionprops(mc.astype(np.uint8))[0]
        perim = float(props.perimeter_crofton)
        circ = min(1.0, 4 * math.pi * area / perim**2) if perim > 0 else None
        solidity = float(props.solidity)
        major = float(props.axis_major_length)
        ratio = float(props.axis_minor_length) / major if major > 0 else None
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
    """
    cfg = config or default_config()
    n = len(roi_masks)
    if label_map is None or n == 0:
        return [None] * n
    values = [int(v) for v in np.unique(label_map) if v != 0]
    if len(values) < 2:
        return [None] * n
    filled = {v: ndimage.binary_fill_holes(label_map == v) for v in values}
    out: list[str | None] = []
    for (crop, (r0, r1, c0, c1)), own in zip(roi_masks, roi_label_values, strict=True):
        area = int(crop.sum())
        best, best_frac = None, 0.0
        if area:
            for v in values:
                if v == own:
                    continue
                frac = float((filled[v][r0:r1, c0:c1] & crop).sum()) / area
                if frac >= cfg.inside_fraction and frac > best_frac:
                    best, best_frac = v, frac
        out.append(label_names.get(best, f"label_{best}") if best is not None else None)
    return out
