"""Images with planted lesions of known truth, for the fidelity benchmark and its tests.

Each image is a grey 2D slice-like picture: a dark background (air), a body with a lobed outline,
a few overlapping tissue regions with smooth texture and a bright rim, and 1-3 planted lesions.
A lesion has a known shape class (``disc``, ``ellipse``, ``irregular``), area, position and
polarity: its intensity is the mean of the tissue ring around it (``RING_PX`` wide) times
``1 + polarity * contrast``. Multiplicative (speckle) noise is applied last, to everything.

The truth of every lesion is kept: its mask, centroid and image thirds (by the centroid, with the
ROI stage's 1/3 and 2/3 cut points), area fraction, polarity and contrast, shape class, and the
solidity and axis ratio of its mask. :func:`write_planted` writes an ``image_folder`` source
(``images/x.png``, with or without ``masks/x.png`` whose value 1 is every lesion) and, beside it,
the truth (``<root>_truth/lesions/x.png`` with lesion ``k`` as value ``k``, and ``truth.json``).
:func:`match_roi` says which truth region a pipeline ROI found.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SHAPES = ("disc", "ellipse", "irregular")
RING_PX = 5  # the ring the polarity is defined against (the ROI stage measures 5 px too)
AREA_RANGE = (0.001, 0.03)  # lesion area as a share of the image (log-uniform)
CONTRAST_RANGE = (0.3, 0.6)
IRREGULAR_MIN_PX = 150  # below this a lobed outline is lost to the pixel grid: disc or ellipse instead
IRREGULAR_MAX_SOLIDITY = 0.88
IOU_MIN = 0.3  # a ROI matches the truth region it overlaps with at least this IoU ...
CENTROID_MAX_AREA_RATIO = 4.0  # ... or whose centroid it holds, being at most this times its area


@dataclass
class PlantedLesion:
    """One planted lesion and its truth."""

    mask: np.ndarray = field(repr=False)
    shape: str
    polarity: int  # +1 brighter than its surroundings, -1 darker
    contrast: float  # lesion level = ring mean * (1 + polarity * contrast)
    area_px: int
    area_fraction: float
    centroid: tuple[float, float]  # (x, y), 0-1
    horizontal: str  # left | central | right
    vertical: str  # upper | middle | lower
    solidity: float
    axis_ratio: float

    def summary(self) -> dict:
        """The truth without the mask (JSON-ready)."""
        d = asdict(self)
        d.pop("mask")
        return d


@dataclass
class PlantedImage:
    """A rendered image (uint8), its body mask and its lesions."""

    name: str
    image: np.ndarray = field(repr=False)
    body: np.ndarray = field(repr=False)
    lesions: list[PlantedLesion]

    def label_map(self) -> np.ndarray:
        """Lesion ``k`` (1-based) as value ``k``; 0 elsewhere."""
        out = np.zeros(self.image.shape, np.uint8)
        for k, lesion in enumerate(self.lesions, start=1):
            out[lesion.mask] = k
        return out


def third(value: float, words: tuple[str, str, str]) -> str:
    """The third of a 0-1 coordinate (the ROI stage's cut points)."""
    if value < 1 / 3:
        return words[0]
    return words[2] if value > 2 / 3 else words[1]


def ring(mask: np.ndarray, width: int = RING_PX) -> np.ndarray:
    """The pixels within ``width`` (cross-shaped steps) around ``mask``, outside it."""
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field_ / max(float(field_.std()), 1e-9)


def _body(rng: np.random.Generator, size: int) -> np.ndarray:
    """A body outline: an off-centre ellipse whose radius wobbles at low angular frequencies."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cy, cx = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    ay, ax = rng.uniform(0.36, 0.46, 2) * size
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + sum(rng.uniform(0, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= wobble**2


def _tissue(rng: np.random.Generator, body: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Tissue intensities (0-1, air about 0.03): a base level, 2-4 overlapping regions with blurred
    edges, smooth texture and a bright rim along the outline (``depth``: distance to the outline)."""
    size = body.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    level = np.full(body.shape, rng.uniform(0.33, 0.42))
    inside = np.argwhere(depth > size // 8)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = inside[rng.integers(len(inside))]
        ry, rx = rng.uniform(0.08, 0.22, 2) * size
        region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        level += rng.choice([-1, 1]) * rng.uniform(0.06, 0.14) * ndimage.gaussian_filter(region.astype(float), 2.5)
    level += 0.025 * _smooth_noise(rng, body.shape, size / 40)
    rim = body & (depth <= int(rng.integers(3, 7)))
    level[rim] = rng.uniform(0.6, 0.7)
    return np.where(body, np.clip(level, 0.12, 0.75), 0.03)


def _lesion_shape(rng: np.random.Generator, shape: str, area_px: float) -> np.ndarray:
    """A boolean footprint (odd square crop) of the shape class with about ``area_px`` pixels."""
    r = np.sqrt(area_px / np.pi)
    half = int(np.ceil(2.2 * r)) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    if shape == "disc":
        return yy**2 + xx**2 <= r * r
    angle = rng.uniform(0, np.pi)
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    if shape == "ellipse":
        ratio = rng.uniform(0.35, 0.6)
        a = r / np.sqrt(ratio)
        return (u / a) ** 2 + (v / (a * ratio)) ** 2 <= 1
    theta = np.arctan2(v, u)
    lobes = int(rng.integers(3, 6))
    wob = 1 + rng.uniform(0.3, 0.42) * np.cos(lobes * theta) + rng.uniform(0.0, 0.12) * np.cos(
        (lobes + 2) * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) <= r * 0.9 * wob


def shape_stats(mask: np.ndarray) -> tuple[float, float]:
    """Solidity (area / convex hull area) and axis ratio (minor / major of the inertia ellipse)."""
    from skimage.morphology import convex_hull_image

    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        return 0.0, 0.0
    crop = mask[rr.min() : rr.max() + 1, cc.min() : cc.max() + 1]
    solidity = float(rr.size) / max(int(convex_hull_image(crop).sum()), 1)
    if rr.size < 3:
        return solidity, 1.0
    evals = np.linalg.eigvalsh(np.cov(np.stack([rr, cc]).astype(float)))
    return solidity, float(np.sqrt(max(evals[0], 0.0) / max(evals[1], 1e-9)))


def _pick_shape(rng: np.random.Generator, area_px: float) -> tuple[str, np.ndarray]:
    """A shape class and its footprint; an irregular one is redrawn until its outline is lobed."""
    shape = SHAPES[int(rng.integers(3))]
    if shape == "irregular" and area_px < IRREGULAR_MIN_PX:
        shape = SHAPES[int(rng.integers(2))]
    for _ in range(6):
        foot = _lesion_shape(rng, shape, area_px)
        if shape != "irregular" or shape_stats(foot)[0] <= IRREGULAR_MAX_SOLIDITY:
            return shape, foot
    return "ellipse", _lesion_shape(rng, "ellipse", area_px)


def _place(rng: np.random.Generator, foot: np.ndarray, allowed: np.ndarray) -> np.ndarray | None:
    """The footprint at a random spot where all of it (grown by a ring and a margin) is allowed."""
    size = allowed.shape[0]
    grown = ndimage.binary_dilation(np.pad(foot, RING_PX + 3), iterations=RING_PX + 3)
    h = grown.shape[0]
    if h >= size:
        return None
    for _ in range(60):
        r0, c0 = rng.integers(0, size - h, 2)
        if allowed[r0 : r0 + h, c0 : c0 + h][grown].all():
            out = np.zeros(allowed.shape, bool)
            p = RING_PX + 3
            out[r0 + p : r0 + p + foot.shape[0], c0 + p : c0 + p + foot.shape[1]] = foot
            return out
    return None


def _lesion(rng: np.random.Generator, level: np.ndarray, body: np.ndarray, room: np.ndarray) -> PlantedLesion | None:
    """Plant one lesion into ``level`` (in place) within ``room``; None when it did not fit."""
    size = level.shape[0]
    lo, hi = np.log(AREA_RANGE[0]), np.log(AREA_RANGE[1])
    area = float(np.exp(rng.uniform(lo, hi))) * size * size
    shape, foot = _pick_shape(rng, area)
    mask = _place(rng, foot, room)
    if mask is None:
        return None
    polarity = int(rng.choice([-1, 1]))
    contrast = float(rng.uniform(*CONTRAST_RANGE))
    around = ring(mask) & body
    value = float(level[around].mean()) * (1 + polarity * contrast)
    alpha = ndimage.gaussian_filter(mask.astype(float), 0.6)
    level[:] = level * (1 - alpha) + value * alpha
    return _truth(mask, shape, polarity, contrast)


def _truth(mask: np.ndarray, shape: str, polarity: int, contrast: float) -> PlantedLesion:
    """The truth record of a placed lesion mask."""
    h, w = mask.shape
    rr, cc = np.nonzero(mask)
    cx, cy = float(cc.mean() + 0.5) / w, float(rr.mean() + 0.5) / h
    solidity, ratio = shape_stats(mask)
    return PlantedLesion(
        mask=mask, shape=shape, polarity=polarity, contrast=round(contrast, 4), area_px=int(rr.size),
        area_fraction=float(rr.size) / (h * w), centroid=(round(cx, 5), round(cy, 5)),
        horizontal=third(cx, ("left", "central", "right")), vertical=third(cy, ("upper", "middle", "lower")),
        solidity=round(solidity, 4), axis_ratio=round(ratio, 4),
    )


def render_planted(rng: np.random.Generator, name: str, size: int, n_lesions: int) -> PlantedImage:
    """One image with up to ``n_lesions`` planted lesions (at least one) and speckle noise."""
    body = _body(rng, size)
    depth = ndimage.distance_transform_edt(body)
    level = _tissue(rng, body, depth)
    lesions: list[PlantedLesion] = []
    room = depth > 10  # clear of the rim
    for _ in range(4 * n_lesions):
        if len(lesions) == n_lesions:
            break
        lesion = _lesion(rng, level, body, room)
        if lesion is not None:
            lesions.append(lesion)
            room &= ndimage.distance_transform_edt(~lesion.mask) > 2 * RING_PX + 2
    speckle = rng.uniform(0.08, 0.16) * _smooth_noise(rng, body.shape, 0.7)
    grey = level * (1 + speckle) + 0.01 * rng.standard_normal(body.shape)
    image = (np.clip(grey, 0, 1) * 255).round().astype(np.uint8)
    return PlantedImage(name=name, image=image, body=body, lesions=lesions)


def generate_planted(
    n: int, seed: int = 0, *, size_range: tuple[int, int] = (192, 256), prefix: str = "planted"
) -> list[PlantedImage]:
    """``n`` planted images (sizes drawn from ``size_range``, 1-3 lesions each), seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = int(rng.integers(size_range[0], size_range[1] + 1))
        out.append(render_planted(rng, f"{prefix}_{i:04d}", size, int(rng.integers(1, 4))))
    return out


def write_planted(images: list[PlantedImage], root: str | Path, *, with_masks: bool) -> Path:
    """Write an ``image_folder`` source at ``root`` (``images/``, and ``masks/`` when asked) and
    its truth at ``<root>_truth/`` (``lesions/x.png`` with lesion k as value k, ``truth.json``);
    returns the truth folder."""
    root = Path(root)
    truth = root.with_name(root.name + "_truth")
    for sub in (root / "images", truth / "lesions", *([root / "masks"] if with_masks else [])):
        sub.mkdir(parents=True, exist_ok=True)
    for item in images:
        Image.fromarray(item.image).save(root / "images" / f"{item.name}.png")
        labels = item.label_map()
        Image.fromarray(labels).save(truth / "lesions" / f"{item.name}.png")
        if with_masks:
            Image.fromarray((labels > 0).astype(np.uint8)).save(root / "masks" / f"{item.name}.png")
    table = {item.name: [lesion.summary() for lesion in item.lesions] for item in images}
    (truth / "truth.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    return truth


def match_roi(mask: np.ndarray, centroid: list[float] | None, truths: list[np.ndarray]) -> int | None:
    """The index of the truth mask a ROI mask matches, or None (a noise ROI): the truth region of
    largest IoU when that IoU is at least :data:`IOU_MIN`, else the truth region that holds the ROI's
    ``centroid`` (``[x, y]``, 0-1) when the ROI overlaps it and is at most
    :data:`CENTROID_MAX_AREA_RATIO` times its area (a body outline, or a rim whose centre happens to
    fall on a lesion, has found nothing)."""
    best, best_iou = None, 0.0
    for k, truth in enumerate(truths):
        inter = int((mask & truth).sum())
        if inter:
            iou = inter / int((mask | truth).sum())
            if iou > best_iou:
                best, best_iou = k, iou
    if best is not None and best_iou >= IOU_MIN:
        return best
    if centroid is not None:
        h, w = mask.shape
        r, c = min(int(centroid[1] * h), h - 1), min(int(centroid[0] * w), w - 1)
        area = int(mask.sum())
        for k, truth in enumerate(truths):
            if truth[r, c] and (mask & truth).any() and area <= CENTROID_MAX_AREA_RATIO * int(truth.sum()):
                return k
    return None
