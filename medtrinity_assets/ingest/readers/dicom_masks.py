"""DICOM masks: SEG objects aligned with the slices they segment, and overlay planes (60xx) whose
closed outlines mark a labelled region."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from medtrinity_assets.ingest.readers.base import InputRejected
from medtrinity_assets.ingest.readers.dicom_headers import DicomTask, read_dataset
from medtrinity_assets.ingest.readers.dicom_pixels import decode_pixels


def seg_mask(
    task: DicomTask, files: list[tuple[str, str, str]], shape: tuple[int, int], first: Any, order: np.ndarray
) -> tuple[np.ndarray | None, dict[int, str]]:
    """Label map ``(n, rows, cols)`` from the task's SEG objects, aligned with the sorted slices."""
    n = len(order)
    uid_to_index: dict[str, int] = {}
    if len(files) > 1:
        uid_to_index = {uid: i for i, (_, _, uid) in enumerate(files) if uid}
    else:
        uid = files[0][2]
        if uid and n == 1:
            uid_to_index = {uid: 0}
    mask = np.zeros((n, *shape), np.uint16)
    names: dict[int, str] = {}
    for relpath, path in task.segs:
        seg = read_dataset(path, header_only=False)
        for item in seg.get("SegmentSequence", []) or []:
            num = int(item.get("SegmentNumber", 0) or 0)
            label = " ".join(str(item.get("SegmentLabel", "") or "").split())
            if num > 0 and label:
                names[num] = label.lower()  # scrubbed with the record (medtrinity_assets.ingest.records)
        frames = decode_pixels(seg)
        if frames.shape[1:3] != tuple(shape):
            raise InputRejected(
                "mask_shape_mismatch", f"SEG {relpath} frames {frames.shape[1:3]} vs images {tuple(shape)}"
            )
        fractional = str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL"
        maxv = float(seg.get("MaximumFractionalValue", 255) or 255)
        pf = seg.get("PerFrameFunctionalGroupsSequence", []) or []
        for f in range(frames.shape[0]):
            item = pf[f] if f < len(pf) else None
            target = None
            segnum = 1
            if item is not None:
                for der in item.get("DerivationImageSequence", []) or []:
                    for src in der.get("SourceImageSequence", []) or []:
                        target = uid_to_index.get(str(src.get("ReferencedSOPInstanceUID", "")), target)
                for si in item.get("SegmentIdentificationSequence", []) or []:
                    segnum = int(si.get("ReferencedSegmentNumber", 1) or 1)
            if target is None:
                continue
            plane = frames[f]
            on = plane > (0.5 * maxv) if fractional else plane > 0
            mask[target][on] = segnum
    if len(files) == 1 and not np.array_equal(order, np.arange(n)):
        mask = mask[order]
    if not mask.any():
        return None, names
    return mask, names


def closed_outline_regions(plane: np.ndarray, min_fill_ratio: float = 2.0, min_area: int = 64) -> np.ndarray:
    """The regions enclosed by the closed curves of a graphics plane, filled.

    Overlays mark a region by drawing its outline, beside annotation graphics. A drawn
    component is kept, filled, when it encloses an area of at least ``min_area`` pixels and
    ``min_fill_ratio`` times its own stroke area, and nothing else is drawn inside it: open
    strokes (text, arrows), small loops of letters and boxed labels (an orientation letter in a
    square) are annotations, not regions.
    """
    from scipy import ndimage

    plane = np.asarray(plane, bool)
    # Outlines are drawn with diagonal steps: strokes are 8-connected (holes 4-connected).
    labels, _ = ndimage.label(plane, structure=np.ones((3, 3), bool))
    keep = np.zeros(plane.shape, bool)
    for comp, sl in enumerate(ndimage.find_objects(labels), start=1):
        stroke = labels[sl] == comp
        filled = ndimage.binary_fill_holes(stroke)
        interior = filled & ~stroke
        area = int(filled.sum())
        if area < min_area or area < min_fill_ratio * int(stroke.sum()):
            continue
        if plane[sl][interior].any():
            continue
        keep[sl] |= filled
    return keep


def overlay_mask(ds: Any, shape: tuple[int, int], value: int) -> np.ndarray | None:
    """A single-frame image's overlay planes (60xx) as a label map of ``value`` (None if none).

    Used only when the registry declares label names: an overlay then marks the labelled ROI
    by its outline, which is filled; annotation text and other open strokes are left out.
    """
    out = np.zeros((1, *shape), np.uint8 if value <= 255 else np.uint16)
    for group in range(0x6000, 0x6020, 2):
        if (group, 0x3000) not in ds:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ov = np.asarray(ds.overlay_array(group)) > 0
            origin = ds.get((group, 0x0050))
            r0, c0 = (int(origin.value[0]) - 1, int(origin.value[1]) - 1) if origin is not None else (0, 0)
        except Exception:  # noqa: BLE001 - a malformed overlay is ignored, the image is kept
            continue
        if ov.ndim == 3:
            ov = ov[0]
        r0, c0 = max(r0, 0), max(c0, 0)
        h, w = min(ov.shape[0], shape[0] - r0), min(ov.shape[1], shape[1] - c0)
        if h > 0 and w > 0:
            out[0, r0 : r0 + h, c0 : c0 + w][closed_outline_regions(ov[:h, :w])] = value
    return out if out.any() else None
