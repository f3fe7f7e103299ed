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
from typing import Any

import numpy as np

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


