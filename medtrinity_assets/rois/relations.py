"""Per-image relations between ROIs: where each ROI lies relative to its nearest others, and the
label whose region holds it."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from medtrinity_assets.rois.config import RoiConfig, default_config


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


Crop = tuple[np.ndarray, tuple[int, int, int, int]]  # (mask crop, (r0, r1, c0, c1))


def containment(crops: list[Crop | None], config: RoiConfig | None = None) -> dict[tuple[int, int], str]:
    """Which regions nest: ``{(i, j): "lies within"}`` when at least ``inside_fraction`` of region
    ``i`` lies inside region ``j``'s outline (its mask with holes filled), and ``{(j, i):
    "encloses"}`` with it. ``crops[k]`` is None for a region without a mask."""
    cfg = config or default_config()
    out: dict[tuple[int, int], str] = {}
    filled: dict[int, np.ndarray] = {}
    for i, a in enumerate(crops):
        for j, b in enumerate(crops):
            if i == j or a is None or b is None:
                continue
            (ca, (a0, a1, a2, a3)), (cb, (b0, b1, b2, b3)) = a, b
            o0, o1, o2, o3 = max(a0, b0), min(a1, b1), max(a2, b2), min(a3, b3)
            if o0 >= o1 or o2 >= o3 or ca.sum() >= cb.sum():
                continue
            if j not in filled:
                filled[j] = ndimage.binary_fill_holes(cb)
            inside = filled[j][o0 - b0 : o1 - b0, o2 - b2 : o3 - b2] & ca[o0 - a0 : o1 - a0, o2 - a2 : o3 - a2]
            if inside.sum() >= cfg.inside_fraction * ca.sum():
                out[(i, j)], out[(j, i)] = "lies within", "encloses"
    return out


_EIGHT = np.ones((3, 3), bool)


def bordering(
    crops: list[Crop | None], config: RoiConfig | None = None, skip: Iterable[tuple[int, int]] = ()
) -> dict[tuple[int, int], str]:
    """Which regions wrap others without holding them: ``{(i, j): "bordered by"}`` when region ``j``
    covers at least ``bordered_share`` of the pixels just outside region ``i``'s edge (its 8-neighbour
    ring), and ``{(j, i): "borders"}`` with it unless ``j`` is bordered by ``i`` too. Pairs in ``skip``
    (nested ones) are left out."""
    cfg = config or default_config()
    skipped = set(skip)
    out: dict[tuple[int, int], str] = {}
    for i, a in enumerate(crops):
        if a is None:
            continue
        near = [(j, b) for j, b in enumerate(crops) if b is not None and j != i and (i, j) not in skipped
                and _meet(a[1], b[1])]
        if not near:
            continue
        ring, (r0, c0) = _ring(a)
        size = int(ring.sum())
        for j, b in near:
            if size and _covered(ring, (r0, c0), b) >= cfg.bordered_share * size:
                out[(i, j)] = "bordered by"
                out.setdefault((j, i), "borders")
    return out


def _meet(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether window ``b`` meets window ``a`` grown by one pixel (``(r0, r1, c0, c1)``, ends excluded)."""
    return a[0] - 1 < b[1] and b[0] < a[1] + 1 and a[2] - 1 < b[3] and b[2] < a[3] + 1


def _ring(crop: Crop) -> tuple[np.ndarray, tuple[int, int]]:
    """The 8-neighbour ring just outside a region's mask, over the mask's window grown by one pixel
    (its top-left corner may lie outside the image: what is there is never covered)."""
    mask, (r0, _r1, c0, _c1) = crop
    grown = np.pad(mask, 1)
    return ndimage.binary_dilation(grown, _EIGHT) & ~grown, (r0 - 1, c0 - 1)


def _covered(ring: np.ndarray, at: tuple[int, int], other: Crop) -> int:
    """How many ring pixels (``ring`` placed with its corner at ``at``) the ``other`` region covers."""
    mask, (b0, b1, b2, b3) = other
    r0, c0 = at
    o0, o1, o2, o3 = max(r0, b0), min(r0 + ring.shape[0], b1), max(c0, b2), min(c0 + ring.shape[1], b3)
    if o0 >= o1 or o2 >= o3:
        return 0
    return int(np.count_nonzero(ring[o0 - r0 : o1 - r0, o2 - c0 : o3 - c0] & mask[o0 - b0 : o1 - b0, o2 - b2 : o3 - b2]))


def relations(
    roi_ids: list[str],
    centroids: np.ndarray,
    bboxes: np.ndarray,
    config: RoiConfig | None = None,
    labels: list[str] | None = None,
    nested: dict[tuple[int, int], str] | None = None,
) -> list[str]:
    """For each ROI a JSON list of its relations to its nearest other ROIs.

    ``centroids``: ``(n, 2)`` normalised (x, y); ``bboxes``: ``(n, 4)`` normalised xyxy.
    Each item: ``{"other": roi_id, "relation": "left of" | "above" | "above and left of" |
    ... | "overlapping", "distance_norm": centroid distance in image widths/heights,
    "overlaps": bool (bounding boxes intersect), "other_label": the other ROI's label when
    ``labels`` is given}``. The relation reads "this ROI is <relation> the other". Pairs in
    ``nested`` (see :func:`containment`, and :func:`bordering`) come first with their relation
    ("lies within", "encloses", "bordered by", "borders") instead of a direction.
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
    nested = nested or {}
    order = np.argsort(dist, axis=1, kind="stable")
    out = []
    for i in range(n):
        items = []
        first = [j for j in order[i] if (i, j) in nested]
        for j in (first + [j for j in order[i] if (i, j) not in nested and j != i])[:k]:
            item = {
                "other": roi_ids[j],
                "relation": nested.get((i, j)) or _direction(float(d[i, j, 0]), float(d[i, j, 1]), cfg),
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
    boxes = _label_boxes(lm)
    if len(boxes) < 2:
        return [None] * n
    filled = _FilledMasks(lm, boxes)
    out: list[str | None] = []
    for (crop, window), own in zip(roi_masks, roi_label_values, strict=True):
        best = _enclosing_value(crop, window, own, boxes, filled, cfg)
        out.append(label_names.get(best, f"label_{best}") if best is not None else None)
    return out


def _label_boxes(lm: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Bounding box ``(r0, r1, c0, c1)`` of each non-zero value of the label map (the whole map
    for each value when the map is not small non-negative integers)."""
    boxes: dict[int, tuple[int, int, int, int]] = {}
    if lm.size and np.issubdtype(lm.dtype, np.integer) and lm.min() >= 0 and lm.max() <= 1 << 20:
        for i, sl in enumerate(ndimage.find_objects(lm.astype(np.intp, copy=False))):
            if sl is not None:
                boxes[i + 1] = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
    else:
        h, w = lm.shape
        boxes = {int(v): (0, h, 0, w) for v in np.unique(lm) if v != 0}
    return boxes


_CROSS = ndimage.generate_binary_structure(2, 1)


class _FilledMasks:
    """The hole-filled mask of each label value over its bounding box, computed on first use."""

    def __init__(self, lm: np.ndarray, boxes: dict[int, tuple[int, int, int, int]]) -> None:
        self._lm = lm
        self._boxes = boxes
        self._filled: dict[int, np.ndarray] = {}

    def __call__(self, v: int) -> np.ndarray:
        if v not in self._filled:
            b0, b1, b2, b3 = self._boxes[v]
            lab, k = ndimage.label(self._lm[b0:b1, b2:b3] != v, structure=_CROSS)
            fill = np.ones(k + 1, bool)  # label 0 is the value's own pixels
            for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
                fill[edge] = False
            fill[0] = True
            self._filled[v] = fill[lab]
        return self._filled[v]


def _enclosing_value(
    crop: np.ndarray,
    window: tuple[int, int, int, int],
    own: int | None,
    boxes: dict[int, tuple[int, int, int, int]],
    filled: _FilledMasks,
    cfg: RoiConfig,
) -> int | None:
    """The label value other than ``own`` whose filled mask holds the largest fraction, and at
    least ``inside_fraction``, of the ROI ``crop`` placed at ``window``; ``None`` if none does."""
    r0, r1, c0, c1 = window
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
            f = filled(v)[o0 - b0 : o1 - b0, o2 - b2 : o3 - b2]
            hit = int(np.count_nonzero(f & sub))
            frac = float(hit) / area
            if frac >= cfg.inside_fraction and frac > best_frac:
                best, best_frac = v, frac
    return best
