"""Independent evidence for the quality checks: what a region's own mask says, recomputed from its
RLE (never read from the attribute table the description was written from), and what the metadata,
ontologies and retrieved passages allow a description to name.

- :func:`region_facts`: the image thirds the mask lies in (the third holding most of it, else its
  centroid's; none along an axis it spans most of), its area fraction and bounding box.
- :func:`nesting`: which regions of one image lie within which (hole-filled outlines), and which
  border which (the ring of pixels around a region), by label.
- :func:`batch_evidence`: both for a batch, reading each mask once, one image at a time.
- :func:`metadata_text`: everything the source states about the image, for the ontology checks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.wording import label_text
from medtrinity_assets.rois.config import default_config
from medtrinity_assets.rois.rle import rle_counts_from_crop, rle_decode, rle_parse

MAJORITY_SHARE = 0.5  # a region lies in the image third that holds more than this share of it (else where its centroid is)

# The words' definitions are the ROI stage's (``roi_config.yaml``: the thirds' cuts, ``position.max_span``,
# ``relations.inside_fraction``, ``relations.bordered_share``): a user who redefines a word there has the
# checks read it the same way. The numbers are still recomputed here from the masks, never read from the
# attribute table the description was written from.


@dataclass(frozen=True)
class RegionFacts:
    """What the region's mask says (``whole``: no region was localised)."""

    whole: bool
    horizontal: str | None = None  # left | centre | right
    vertical: str | None = None  # upper | middle | lower
    area_fraction: float | None = None
    bbox_norm: tuple[float, float, float, float] | None = None


def _third(value: float, words: tuple[str, str, str]) -> str:
    cfg = default_config()
    return words[0] if value < cfg.lower_third else words[2] if value > cfg.upper_third else words[1]


def _placed(counts: tuple[float, float, float], centre: float, span: float, words: tuple[str, str, str]) -> str | None:
    """The third of an axis a region lies in, from the share of it in each third (``counts``): the
    third holding more than :data:`MAJORITY_SHARE` of it, else the third of its ``centre``; none when
    its box spans more than ``position.max_span`` of the axis."""
    if span > default_config().position_max_span:
        return None
    best, total = max(range(3), key=counts.__getitem__), sum(counts)
    return words[best] if 0 < total and MAJORITY_SHARE * total < counts[best] else _third(centre, words)


def third_cuts(size: int) -> tuple[int, int]:
    """``(a, b)``: pixels ``0..a-1`` of an axis of ``size`` pixels have their centre in its first third,
    ``b..size-1`` in its last."""
    cfg = default_config()
    return _cuts(size, cfg.lower_third, cfg.upper_third)


@lru_cache(maxsize=256)
def _cuts(size: int, lower: float, upper: float) -> tuple[int, int]:
    centres = (np.arange(size) + 0.5) / size
    return int(np.count_nonzero(centres < lower)), int(np.count_nonzero(centres <= upper))


def _split(below: tuple[int, int], n: int) -> tuple[int, int, int]:
    """Pixels per third from the pixels below each cut."""
    return below[0], below[1] - below[0], n - below[1]


def decode(item: CaptionInput) -> np.ndarray | None:
    """The region's full-size mask, or None without a readable RLE."""
    if not item.mask_rle:
        return None
    try:
        mask = rle_decode(item.mask_rle)
    except (ValueError, KeyError, TypeError):
        return None
    return mask if mask.any() else None


class Pixels:
    """A region's mask in an image of ``shape``: its runs of pixels (``[start, end)`` in column-major
    order, as the RLE stores them), from which its size, sums and box are counted without listing a
    pixel; ``rows`` and ``cols`` are listed when first asked for (the containment checks only)."""

    __slots__ = ("starts", "ends", "shape", "size", "_rows", "_cols", "_box", "_sums")

    def __init__(self, starts: np.ndarray, ends: np.ndarray, shape: tuple[int, int]) -> None:
        self.starts, self.ends, self.shape = starts, ends, shape
        self.size = int((ends - starts).sum())
        self._rows: np.ndarray | None = None
        self._cols: np.ndarray | None = None
        self._box: tuple[int, int, int, int] | None = None
        self._sums: tuple[int, int] | None = None

    @classmethod
    def of_counts(cls, counts: np.ndarray, shape: tuple[int, int]) -> Pixels | None:
        """The pixels of checked, one-dimensional run lengths (COCO: zeros first), or None when no
        run holds a pixel."""
        ends, lengths = np.cumsum(counts)[1::2], counts[1::2]
        keep = lengths > 0
        return cls(ends[keep] - lengths[keep], ends[keep], shape) if keep.any() else None

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> Pixels | None:
        """The pixels of a full-size mask (its run lengths as the ROI stage encodes them)."""
        h, w = mask.shape
        return cls.of_counts(np.asarray(rle_counts_from_crop(mask, 0, 0, h, w), dtype=np.int64), (h, w))

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._list()
        return self._rows  # type: ignore[return-value]

    @property
    def cols(self) -> np.ndarray:
        if self._cols is None:
            self._list()
        return self._cols  # type: ignore[return-value]

    def _list(self) -> None:
        lengths = self.ends - self.starts
        flat = np.arange(self.size, dtype=np.int64) + np.repeat(self.starts - (np.cumsum(lengths) - lengths), lengths)
        self._rows, self._cols = flat % self.shape[0], flat // self.shape[0]

    def sums(self) -> tuple[int, int]:
        """``(sum of rows, sum of columns)`` of the pixels, counted run by run: the pixels below a flat
        index ``m = q * h + r`` have columns summing to ``h * q * (q - 1) / 2 + r * q`` and rows to
        ``q * h * (h - 1) / 2 + r * (r - 1) / 2``. Counted once (the facts and the directions both ask)."""
        if self._sums is not None:
            return self._sums
        h = self.shape[0]

        def below(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            q, r = np.divmod(m, h)
            return q * (h * (h - 1) // 2) + r * (r - 1) // 2, h * (q * (q - 1) // 2) + r * q

        (rows_end, cols_end), (rows_start, cols_start) = below(self.ends), below(self.starts)
        self._sums = int((rows_end - rows_start).sum()), int((cols_end - cols_start).sum())  # per run: no overflow
        return self._sums

    def box(self) -> tuple[int, int, int, int]:
        """``(first row, first column, last row, last column)`` of the pixels: a run that goes on into
        the next column covers that column's first row and its own column's last. Counted once (the
        facts and the containment checks both ask)."""
        if self._box is None:
            h = self.shape[0]
            first_col, last_col = self.starts // h, (self.ends - 1) // h
            wraps = last_col > first_col
            top = np.where(wraps, 0, self.starts % h).min()
            bottom = np.where(wraps, h - 1, (self.ends - 1) % h).max()
            self._box = int(top), int(first_col[0]), int(bottom), int(last_col[-1])
        return self._box


def pixels(item: CaptionInput) -> Pixels | None:
    """The pixels of :func:`decode`'s mask (None where it gives None), read off the run lengths
    without drawing the full-size mask (an unusual RLE is decoded as :func:`decode` does)."""
    if not item.mask_rle:
        return None
    try:
        h, w, counts = rle_parse(item.mask_rle)
    except (ValueError, KeyError, TypeError):
        return None
    if counts.ndim != 1 or h <= 0 or w <= 0:
        mask = decode(item)
        return None if mask is None else Pixels.of_mask(mask)
    return Pixels.of_counts(counts, (h, w))


def region_facts(item: CaptionInput) -> RegionFacts | None:
    """Facts of the region from its mask; None when there is neither a mask nor a whole image."""
    if item.origin == "whole_image":
        return RegionFacts(whole=True)
    return _pixel_facts(item, pixels(item))


def _pixel_facts(item: CaptionInput, px: Pixels | None) -> RegionFacts | None:
    """Facts from the region's pixels, else from the annotation's own box (a box without a mask)."""
    if px is None and item.origin == "box" and item.bbox_norm and len(item.bbox_norm) == 4:
        return _box_facts(tuple(float(v) for v in item.bbox_norm))
    if px is None:
        return None
    return _all_facts([px])[0]


def _facts(px: Pixels, below_columns: tuple[int, int], below_rows: tuple[int, int]) -> RegionFacts:
    """Facts from the region's pixel counts: how many lie before each third's cut, along each axis."""
    (h, w), n = px.shape, px.size
    row_sum, col_sum = px.sums()
    top, left, bottom, right = px.box()
    return RegionFacts(
        whole=False,
        horizontal=_placed(_split(below_columns, n), (col_sum / n + 0.5) / w, (right - left + 1) / w,
                           ("left", "centre", "right")),
        vertical=_placed(_split(below_rows, n), (row_sum / n + 0.5) / h, (bottom - top + 1) / h,
                         ("upper", "middle", "lower")),
        area_fraction=n / (h * w),
        bbox_norm=(left / w, top / h, (right + 1) / w, (bottom + 1) / h),
    )


def _all_facts(regions: list[Pixels]) -> list[RegionFacts]:
    """The facts of regions' pixels, their runs counted in one pass over all of them (a region's sums
    and box are kept on it, as :class:`Pixels` counts them): how many pixels lie before each third's
    cut along each axis, as the pixels below a flat index ``m = q * h + k`` in the first ``r`` rows
    number ``q * r + min(k, r)``."""
    lengths = np.array([px.starts.size for px in regions])
    first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    last = first + lengths - 1
    starts = np.concatenate([px.starts for px in regions])
    ends = np.concatenate([px.ends for px in regions])
    shapes = [px.shape for px in regions]
    h = np.repeat(np.array([s[0] for s in shapes], dtype=np.int64), lengths)

    def per_region(per_run: np.ndarray) -> list[int]:
        return np.add.reduceat(per_run, first).tolist()

    def below(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, r = np.divmod(m, h)
        return q * (h * (h - 1) // 2) + r * (r - 1) // 2, h * (q * (q - 1) // 2) + r * q

    def cut(axis: int, k: int) -> np.ndarray:
        return np.repeat(np.array([third_cuts(s[axis])[k] for s in shapes], dtype=np.int64), lengths)

    def before_row(r: np.ndarray) -> list[int]:
        (qe, ke), (qs, ks) = np.divmod(ends, h), np.divmod(starts, h)
        return per_region(qe * r + np.minimum(ke, r) - (qs * r + np.minimum(ks, r)))

    (rows_end, cols_end), (rows_start, cols_start) = below(ends), below(starts)
    row_sums, col_sums = per_region(rows_end - rows_start), per_region(cols_end - cols_start)
    columns = [per_region(np.clip(np.minimum(ends, cut(1, k) * h) - starts, 0, None)) for k in (0, 1)]
    rows = [before_row(cut(0, k)) for k in (0, 1)]
    first_col, last_col = starts // h, (ends - 1) // h
    wraps = last_col > first_col
    tops = np.minimum.reduceat(np.where(wraps, 0, starts % h), first).tolist()
    bottoms = np.maximum.reduceat(np.where(wraps, h - 1, (ends - 1) % h), first).tolist()
    lefts, rights = first_col[first].tolist(), last_col[last].tolist()
    out = []
    for k, px in enumerate(regions):
        px._sums = (row_sums[k], col_sums[k])
        px._box = (tops[k], lefts[k], bottoms[k], rights[k])
        out.append(_facts(px, (columns[0][k], columns[1][k]), (rows[0][k], rows[1][k])))
    return out


def _box_facts(box: tuple[float, ...]) -> RegionFacts:
    x0, y0, x1, y1 = box
    return RegionFacts(
        whole=False,
        horizontal=_placed(_overlaps(x0, x1), (x0 + x1) / 2, x1 - x0, ("left", "centre", "right")),
        vertical=_placed(_overlaps(y0, y1), (y0 + y1) / 2, y1 - y0, ("upper", "middle", "lower")),
        area_fraction=max(x1 - x0, 0.0) * max(y1 - y0, 0.0),
        bbox_norm=(x0, y0, x1, y1),
    )


def _overlaps(a: float, b: float) -> tuple[float, float, float]:
    """How much of the span ``[a, b]`` (normalised) lies in each third."""
    cfg = default_config()
    cuts = ((0.0, cfg.lower_third), (cfg.lower_third, cfg.upper_third), (cfg.upper_third, 1.0))
    left, centre, right = (max(0.0, min(b, hi) - max(a, lo)) for lo, hi in cuts)
    return left, centre, right


Nesting = dict[tuple[str, str], set[tuple[str, str]]]


def nesting(items: Iterable[CaptionInput]) -> Nesting:
    """``{(record_id, roi_id): {("lies within" | "encloses" | "bordered by" | "borders" | a direction |
    "named" | "one of two" | "one of several", other label)}}`` recomputed from the masks of each image's
    regions (a region's outline has its holes filled; directions from centroids, a box's from its middle;
    "named": the image has a region of that label; "one of ...": so many localised regions of the image
    have the region's own label)."""
    return batch_evidence(items)[1]


def batch_evidence(
    items: Iterable[CaptionInput], bordering: Container[str] | None = None
) -> tuple[dict[int, RegionFacts | None], Nesting]:
    """:func:`region_facts` of every item (by ``id(item)``) and :func:`nesting`, reading each mask
    once: the facts of all regions from their runs at once, then the pixels of one image at a time
    (its regions' listed pixels, which containment needs, let go before the next). ``bordering``: the
    record ids whose bordering is wanted (None: all); the others get containment only (rings cost a
    third of the evidence, and few descriptions speak of bordering)."""
    by_record: dict[str, dict[int, CaptionInput]] = defaultdict(dict)
    for item in items:
        by_record[item.record_id][id(item)] = item
    facts: dict[int, RegionFacts | None] = {}
    out: Nesting = defaultdict(set)
    read = {record_id: [(item, pixels(item) if item.origin != "whole_image" else None) for item in regions.values()]
            for record_id, regions in by_record.items()}
    masked = [(item, px) for found in read.values() for item, px in found if px is not None]
    facts.update(zip((id(item) for item, _ in masked), _all_facts([px for _, px in masked]) if masked else [], strict=True))
    del masked
    for record_id, regions in by_record.items():
        found = read.pop(record_id)  # its pixels go with it
        for item, px in found:
            if px is None:
                facts[id(item)] = RegionFacts(whole=True) if item.origin == "whole_image" else _pixel_facts(item, None)
        wanted = bordering is None or record_id in bordering
        _nest([(item, px) for item, px in found if px is not None], out, wanted)
        _directions([(item, c) for item, px in found if (c := _centre(item, px)) is not None], out)
        _counts([item for item in regions.values() if item.origin != "whole_image"], out)
    return facts, dict(out)


def _counts(localised: list[CaptionInput], out: Nesting) -> None:
    """Add ``("one of two" | "one of several", its label)`` to each region whose label one or more other
    localised regions of its image share."""
    labels = [label_text(item.label).lower() for item in localised]
    for item, label in zip(localised, labels, strict=True):
        n = labels.count(label)
        if n > 1:
            out[(item.record_id, str(item.roi_id))].add(("one of two" if n == 2 else "one of several", label))


def _centre(item: CaptionInput, px: Pixels | None) -> tuple[float, float] | None:
    """The region's centroid in image widths and heights: its mask's pixel centres, a box's middle
    (a box has no mask), none for a whole image or an unreadable mask."""
    if px is not None:
        rows, cols = px.sums()
        return (cols / px.size + 0.5) / px.shape[1], (rows / px.size + 0.5) / px.shape[0]
    box = item.bbox_norm
    if item.origin == "box" and box and len(box) == 4:
        return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return None


def _directions(regions: list[tuple[CaptionInput, tuple[float, float]]], out: Nesting) -> None:
    """Add where in the image each region lies relative to every other region of its image, from
    their centroids: ``("left of" | "right of" | "above" | "below" | "above and left of" ..., other
    label)`` (a region "above and left of" another also lies "left of" it), and ``("named", other
    label)`` for every other region."""
    for a, (ax, ay) in regions:
        key = (a.record_id, str(a.roi_id))
        for b, (bx, by) in regions:
            if a is b:
                continue
            other = label_text(b.label).lower()
            side = "left of" if ax < bx else "right of" if ax > bx else None
            level = "above" if ay < by else "below" if ay > by else None
            out[key].update((word, other) for word in ("named", side, level) if word)
            if side and level:
                out[key].add((f"{level} and {side}", other))


def _nest(regions: list[tuple[CaptionInput, Pixels]], out: Nesting, bordering: bool = True) -> None:
    """Add the containments among one image's regions: a region lies within another, larger one when
    ``relations.inside_fraction`` of its pixels are inside the other's hole-filled outline. The outline lies in
    the other's box, so a region with too little of its box there is not looked at pixel by pixel.
    Then the bordering of the pairs that do not nest (:func:`_border`)."""
    sizes = [px.size for _, px in regions]
    boxes = [px.box() for _, px in regions]
    share = default_config().inside_fraction
    filled: dict[int, tuple[int, int, np.ndarray]] = {}
    nested: set[tuple[int, int]] = set()
    for i, (a, pa) in enumerate(regions):
        for j, (b, pb) in enumerate(regions):
            if i == j or pa.shape != pb.shape or sizes[i] >= sizes[j]:
                continue
            if _overlap(boxes[i], boxes[j]) < share * sizes[i]:
                continue
            if j not in filled:
                filled[j] = _filled_outline(pb, boxes[j])
            if _count_inside(pa, *filled[j]) >= share * sizes[i]:
                out[(a.record_id, str(a.roi_id))].add(("lies within", label_text(b.label).lower()))
                out[(b.record_id, str(b.roi_id))].add(("encloses", label_text(a.label).lower()))
                nested |= {(i, j), (j, i)}
    if bordering:
        _border(regions, boxes, nested, out)


def _border(
    regions: list[tuple[CaptionInput, Pixels]], boxes: list[tuple[int, int, int, int]], nested: set[tuple[int, int]],
    out: Nesting,
) -> None:
    """Add the bordering among one image's regions that do not nest: a region is bordered by another
    that covers ``relations.bordered_share`` of the ring of pixels just outside its edge; both then border
    each other. Only regions whose boxes, grown by a pixel, meet are looked at pixel by pixel."""
    rings: dict[int, tuple[int, int, np.ndarray, int]] = {}
    share = default_config().bordered_share
    for i, (a, pa) in enumerate(regions):
        grown = (boxes[i][0] - 1, boxes[i][1] - 1, boxes[i][2] + 1, boxes[i][3] + 1)
        for j, (b, pb) in enumerate(regions):
            if i == j or (i, j) in nested or pa.shape != pb.shape or not _overlap(grown, boxes[j]):
                continue
            if i not in rings:
                rings[i] = _ring(pa, boxes[i])
            r0, c0, ring, size = rings[i]
            if size and _count_inside(pb, r0, c0, ring) >= share * size:
                this, other = label_text(a.label).lower(), label_text(b.label).lower()
                out[(a.record_id, str(a.roi_id))] |= {("bordered by", other), ("borders", other)}
                out[(b.record_id, str(b.roi_id))].add(("borders", this))


def _ring(px: Pixels, box: tuple[int, int, int, int]) -> tuple[int, int, np.ndarray, int]:
    """The 8-neighbour ring just outside the region, on its box with a one-pixel margin, the image row
    and column of that crop's corner, and the ring's size (its pixels inside the image)."""
    r0, c0, crop = _on_box(px, box)
    ring = ndimage.binary_dilation(crop, np.ones((3, 3), bool)) & ~crop
    h, w = px.shape
    ring[: max(0, -r0)], ring[:, : max(0, -c0)] = False, False  # the margin outside the image is no ring
    ring[max(0, h - r0):], ring[:, max(0, w - c0):] = False, False
    return r0, c0, ring, int(ring.sum())


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """How many pixels two boxes (first row, first column, last row, last column) share."""
    rows = min(a[2], b[2]) - max(a[0], b[0]) + 1
    cols = min(a[3], b[3]) - max(a[1], b[1]) + 1
    return max(rows, 0) * max(cols, 0)


def _filled_outline(px: Pixels, box: tuple[int, int, int, int]) -> tuple[int, int, np.ndarray]:
    """The region's outline with its holes filled, on its bounding box (``box``) with a one-pixel
    margin, and the image row and column of that crop's corner. Filling the crop fills exactly what
    filling the whole image would: a hole never reaches past the box, and the margin joins all that
    lies outside it.

    The holes are the background components (4-connected, as ``binary_fill_holes`` reaches them)
    other than the one of the margin: one labelling pass instead of a dilation run to convergence."""
    r0, c0, crop = _on_box(px, box)
    background, parts = ndimage.label(~crop)
    return r0, c0, crop if parts == 1 else background != background[0, 0]


def _on_box(px: Pixels, box: tuple[int, int, int, int]) -> tuple[int, int, np.ndarray]:
    """The region drawn on its bounding box (``box``) with a one-pixel margin, and the image row and
    column of that crop's corner (the margin may lie outside the image)."""
    r0, c0 = box[0] - 1, box[1] - 1
    crop = np.zeros((box[2] - r0 + 2, box[3] - c0 + 2), bool)
    crop[px.rows - r0, px.cols - c0] = True
    return r0, c0, crop


def _count_inside(px: Pixels, r0: int, c0: int, filled: np.ndarray) -> int:
    """How many of the region's pixels lie in ``filled`` (placed at ``r0, c0``)."""
    rows, cols = px.rows - r0, px.cols - c0
    keep = (rows >= 0) & (rows < filled.shape[0]) & (cols >= 0) & (cols < filled.shape[1])
    return int(filled[rows[keep], cols[keep]].sum())


def metadata_text(item: CaptionInput) -> str:
    """Everything the source states about the image and region: organ, labels, terms, concepts,
    the coarse caption and the labels of the regions it is related to."""
    parts: list[Any] = [
        item.organ,
        label_text(item.label),
        label_text(item.inside_label),
        item.coarse_caption,
        *item.terms,
        *item.concepts,
        *(label_text(r.get("other_label")) for r in item.relations),
    ]
    return " . ".join(str(p) for p in parts if p)


def passages_text(item: CaptionInput) -> str:
    return " ".join(p.text for p in item.passages)
