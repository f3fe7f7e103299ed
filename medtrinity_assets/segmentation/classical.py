"""The classical fallback segmenter: Otsu threshold of the smoothed grey image, opening, hole
filling. Its foreground polarity comes from the vocabulary (dark nuclei in histology, bright
uptake in nuclear medicine, otherwise the minority side)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medtrinity_assets.core.images import to_grey
from medtrinity_assets.core.vocabulary import modality_by_key


def classical_segment(
    image: np.ndarray, modality: str = "", *, smooth_sigma: float = 1.0, opening_radius: int = 1
) -> np.ndarray:
    """Otsu threshold of the smoothed grey image, opening, hole filling; a boolean mask. Uptake
    (bright polarity) gets only its small holes filled: a hot rim round a body encloses tissue, not
    uptake.

    Foreground polarity: dark for histopathology (haematoxylin-stained nuclei), bright for
    nuclear medicine / PET (uptake: the hottest of three Otsu classes, so the region is the
    uptake above the body's background activity, not the body's silhouette), otherwise the minority side of the threshold (objects
    are usually smaller than their background). Components are separated later by the ROI
    stage, which also drops those under ``predicted_min_area_px``.
    """
    from skimage.filters import threshold_otsu

    grey = to_grey(image)
    if smooth_sigma > 0:
        grey = ndimage.gaussian_filter(grey, smooth_sigma)
    if float(grey.max()) - float(grey.min()) < 1e-9:
        return np.zeros(grey.shape, bool)
    t = threshold_otsu(grey)
    bright = grey > t
    entry = modality_by_key(modality or "")
    polarity = entry.classical if entry is not None else None
    if polarity == "dark":
        fg = ~bright
    elif polarity == "bright":
        fg = _hot(grey, bright)
    else:
        fg = bright if bright.mean() <= 0.5 else ~bright
    r = int(opening_radius)
    if r > 0:
        y, x = np.ogrid[-r : r + 1, -r : r + 1]
        fg = ndimage.binary_opening(fg, structure=(x * x + y * y) <= r * r)
    if polarity == "bright":  # a hot rim round a body, or a ribcage, encloses tissue that took up no more
        return _fill_small_holes(fg, max(1, int(HOT_HOLE_MAX_SHARE * fg.size)))
    return ndimage.binary_fill_holes(fg)


#: holes in uptake filled up to this share of the image (a cold centre of a hot spot); larger ones
#: are tissue a hot ring encloses, not uptake
HOT_HOLE_MAX_SHARE = 0.002


def _fill_small_holes(fg: np.ndarray, max_area: int) -> np.ndarray:
    """``fg`` with its holes of at most ``max_area`` pixels filled."""
    holes = ndimage.binary_fill_holes(fg) & ~fg
    labels, n = ndimage.label(holes)
    if n == 0:
        return fg
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_area
    small[0] = False
    return fg | small[labels]


def _hot(grey: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """The hottest of three intensity classes (background, body, uptake); the bright side of the
    two-class threshold when three classes cannot be told apart."""
    from skimage.filters import threshold_multiotsu

    try:
        return grey > threshold_multiotsu(grey, classes=3)[1]
    except ValueError:
        return bright
