"""Cutting a volume into 2D slices ready for models: which slices, oriented how, at what size.

A volume is cut along its native axis (or the registry's plane); every slice with a labelled
ROI is kept, plus every ``stride``-th informative one (normalised std above ``min_std``).
Slices are turned to the display convention where the patient axes are known (axial: right=L,
down=P; coronal: L, I; sagittal: P, I), resampled to square pixels, and fitted in ``max_side``.
"""

from __future__ import annotations

import io
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from medtrinity_assets.ingest.burned_in import needs_scan, redact
from medtrinity_assets.ingest.intensity import Intensity
from medtrinity_assets.ingest.readers.base import (
    InputRejected,
    Volume,
    cut_axis,
    direction_letter,
    label_values,
)
from medtrinity_assets.ingest.registry import SourceSpec

PLANE_DISPLAY = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}
_GROUP = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


#: Pillow's PNG settings of the files ingestion writes: zlib's run-length strategy (``Z_RLE``) after
#: PNG's per-row filters. Against Pillow's default (``Z_FILTERED``, level 6), on 512-pixel photographs,
#: CT/MR/radiograph slices and label masks it encodes 1.7 to 4 times faster for files of the same
#: size or smaller (within 3%); the loss is on images with long repeated patterns (a synthetic
#: colour ultrasound frame: 1.5 times the bytes). Encoding is most of ingestion's work per slice.
PNG_OPTIONS = {"compress_level": 6, "compress_type": zlib.Z_RLE}


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG bytes of ``arr`` (see :data:`PNG_OPTIONS`)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **PNG_OPTIONS)
    return buf.getvalue()


def output_size(
    h: int, w: int, row_mm: float | None, col_mm: float | None, max_side: int
) -> tuple[int, int, list[float] | None]:
    """Output (h, w) with square pixels (when spacing is known) and longest side <= max_side."""
    ph, pw = float(h), float(w)
    if row_mm and col_mm and abs(row_mm / col_mm - 1.0) > 0.01:
        p = min(row_mm, col_mm)
        ph, pw = h * row_mm / p, w * col_mm / p
    s = min(1.0, max_side / max(ph, pw))
    oh, ow = max(1, int(round(ph * s))), max(1, int(round(pw * s)))
    spacing = [h * row_mm / oh, w * col_mm / ow] if row_mm and col_mm else None
    return oh, ow, spacing


def resize_image(arr: np.ndarray, oh: int, ow: int) -> np.ndarray:
    if arr.shape[:2] == (oh, ow):
        return arr
    shrink = oh <= arr.shape[0] and ow <= arr.shape[1]
    method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((ow, oh), method))


def resize_mask(mask: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Nearest-neighbour resize by pixel-centre sampling (labels never blend)."""
    h, w = mask.shape
    if (h, w) == (oh, ow):
        return mask
    ri = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(np.int64), h - 1)
    ci = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(np.int64), w - 1)
    return mask[ri][:, ci]


def choose_axis(vol: Volume, axis_cfg: str) -> int:
    """The array axis to cut along: ``auto`` keeps the native one; a named plane picks its normal."""
    return cut_axis(vol.axes_lps if vol.data.ndim == 3 else None, vol.native_axis, axis_cfg)


def slice_axis_name(vol: Volume, axis: int) -> str | None:
    """``axial|coronal|sagittal`` for a spatial volume, ``frame`` for frames, None for a 2D image."""
    if vol.kind == "volume":
        if vol.axes_lps is None:
            return "frame"
        return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(vol.axes_lps[axis])))]
    return "frame" if vol.kind == "frames" else None


# --------------------------------------------------------------------------------------
# orientation


@dataclass
class Orientation:
    """How stored slices are turned for display, the patient directions of +x / +y after it,
    and the (row, column) spacing in mm of the turned slice."""

    transpose: bool = False
    flip_r: bool = False
    flip_c: bool = False
    right: str | None = None
    down: str | None = None
    row_mm: float | None = None
    col_mm: float | None = None
    plane: str | None = None  # axial | coronal | sagittal | oblique (the header's geometry)

    def apply(self, a: np.ndarray) -> np.ndarray:
        if self.transpose:
            a = np.swapaxes(a, 0, 1)
        if self.flip_r:
            a = a[::-1]
        if self.flip_c:
            a = a[:, ::-1]
        return a


def _group(letter: str | None) -> int:
    return _GROUP.get(letter or "", -1)


def _align(o: Orientation, drow: np.ndarray, dcol: np.ndarray, plane: str) -> tuple[np.ndarray, np.ndarray]:
    """Transpose and flip so that +x and +y point to the plane's display directions."""
    want_r, want_d = PLANE_DISPLAY[plane]
    if _group(direction_letter(drow)) == _GROUP[want_r] and _group(direction_letter(dcol)) != _GROUP[want_r]:
        o.transpose = True
        drow, dcol = dcol, drow
        o.row_mm, o.col_mm = o.col_mm, o.row_mm
    if direction_letter(dcol) != want_r and _group(direction_letter(dcol)) == _GROUP[want_r]:
        o.flip_c, dcol = True, -dcol
    if direction_letter(drow) != want_d and _group(direction_letter(drow)) == _GROUP[want_d]:
        o.flip_r, drow = True, -drow
    return drow, dcol


def _projection(o: Orientation, right: str, down: str) -> None:
    """A projection radiograph's PatientOrientation turned to the radiological convention:
    the patient's left on the viewer's right, the feet down (a lateral view keeps its columns)."""
    if right == "R":
        o.flip_c, right = True, "L"
    if down == "S":
        o.flip_r, down = True, "I"
    o.right, o.down = right, down


#: a slice whose normal is more than 30 degrees from every patient axis is oblique (a head CT with
#: a 22 degree gantry tilt is still axial; a shoulder MR 35 degrees off sagittal is not sagittal)
OBLIQUE_COS = float(np.cos(np.radians(30)))


def plan_orientation(vol: Volume, axis: int, plane: str | None) -> Orientation:
    """The display orientation of the slices cut along ``axis`` (rows along the first in-plane
    axis, columns along the second): volume slices and 2D slices with a known plane are turned
    to the plane's display convention (:data:`PLANE_DISPLAY`), projection radiographs to the
    radiological one, so every image is shown upright as its header says."""
    in_plane = [a for a in range(3) if a != axis]
    o = Orientation(row_mm=vol.spacing[in_plane[0]], col_mm=vol.spacing[in_plane[1]])
    axes = vol.axes_lps
    if axes is not None:
        drow, dcol = axes[in_plane[0]].copy(), axes[in_plane[1]].copy()
        if vol.kind == "image":
            plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(axes[axis])))]
        reorient = vol.kind == "image" or (vol.kind == "volume" and (vol.reorient or axis != vol.native_axis))
        if reorient and plane in PLANE_DISPLAY:
            drow, dcol = _align(o, drow, dcol, plane)
        o.right, o.down = direction_letter(dcol), direction_letter(drow)
        o.plane = "oblique" if float(np.abs(axes[axis]).max()) < OBLIQUE_COS else plane
    elif vol.patient_orientation is not None:
        _projection(o, *vol.patient_orientation)
    elif vol.projection_xray:
        o.right, o.down = "L", "I"  # radiological display convention when the header says nothing
    return o


# --------------------------------------------------------------------------------------
# slices


@dataclass
class Slice2D:
    """One kept slice, encoded: the 8-bit image, its PNG, its mask and its boxes."""

    index: int
    relpath: str
    height: int  # before resizing
    width: int
    image: np.ndarray
    png: bytes
    spacing: list[float] | None
    mask_png: bytes | None = None
    mask_labels: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    box_clipped: list[bool] = field(default_factory=list)
    text_scanned: bool = False
    text_boxes: int = 0  # burned-in text boxes blacked out


@dataclass
class SlicePlan:
    """Everything a volume's slices share: the view cut along the axis, intensity mapping,
    orientation, plane name, and which file each slice came from."""

    view: np.ndarray
    mask_view: np.ndarray | None
    intensity: Intensity
    orientation: Orientation
    slice_axis: str | None
    relpaths: list[str] | None
    skipped: Counter = field(default_factory=Counter)  # slices left out, by reason
    scan_text: bool = False  # black out burned-in text (see medtrinity_assets.ingest.burned_in)


def plan_slices(vol: Volume, spec: SourceSpec) -> SlicePlan:
    axis = choose_axis(vol, spec.slicing.axis)
    view = np.moveaxis(vol.data, axis, 0) if axis else vol.data
    mview = None
    if vol.mask is not None:
        if vol.mask.shape != vol.data.shape[:3]:
            raise InputRejected("mask_shape_mismatch", f"mask {vol.mask.shape} vs image {vol.data.shape[:3]}")
        mview = np.moveaxis(vol.mask, axis, 0) if axis else vol.mask
    intensity = Intensity(vol, spec, view, axis)
    intensity.calibrate()
    plane = slice_axis_name(vol, axis)
    n = view.shape[0]
    rels = vol.slice_relpaths if (vol.slice_relpaths and axis == 0 and len(vol.slice_relpaths) == n) else None
    scan = needs_scan(vol.meta, vol.modality, spec.burned_in_text)
    return SlicePlan(view, mview, intensity, plan_orientation(vol, axis, plane), plane, rels, scan_text=scan)


def _boxes(vol: Volume, h: int, w: int, oh: int, ow: int) -> tuple[list[list[float]], list[bool]]:
    """The volume's boxes scaled to the output size and clipped to it (clipping recorded)."""
    boxes, clipped = [], []
    sx, sy = ow / w, oh / h
    for x0, y0, x1, y1 in vol.boxes:
        b = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        c = [max(0.0, b[0]), max(0.0, b[1]), min(float(ow), b[2]), min(float(oh), b[3])]
        boxes.append([round(v, 3) for v in c])
        clipped.append(c != b)
    return boxes, clipped


def _encode(plan: SlicePlan, vol: Volume, k: int, norm: np.ndarray, msl: np.ndarray | None, max_side: int) -> Slice2D:
    o = plan.orientation
    img = np.ascontiguousarray(o.apply(plan.intensity.to_u8(k, norm)))
    h, w = img.shape[:2]
    oh, ow, spacing = output_size(h, w, o.row_mm, o.col_mm, max_side)
    text_boxes = 0
    if plan.scan_text:  # at the resolution the text was drawn for: shrunk, a 9-px date is misread
        img, text_boxes = redact(img)
    img = np.ascontiguousarray(resize_image(img, oh, ow))
    relpath = plan.relpaths[k] if plan.relpaths else vol.relpath
    out = Slice2D(k, relpath, h, w, img, encode_png(img), spacing)
    out.text_scanned, out.text_boxes = plan.scan_text, text_boxes
    if msl is not None:
        m = resize_mask(np.ascontiguousarray(o.apply(msl)), oh, ow)
        out.mask_labels = [int(v) for v in label_values(m) if v > 0]
        if out.mask_labels:
            m = m.astype(np.uint16 if max(out.mask_labels) > 255 else np.uint8)
            out.mask_png = encode_png(np.ascontiguousarray(m))
    if vol.boxes:
        out.boxes, out.box_clipped = _boxes(vol, h, w, oh, ow)
    return out


def _probe(norm: np.ndarray) -> np.ndarray:
    return _grey(norm[::2, ::2])


def _grey(norm: np.ndarray) -> np.ndarray:
    return norm if norm.ndim == 2 else norm.mean(axis=2)


def _foreground(plan: SlicePlan, vol: Volume) -> np.ndarray:
    """Per slice, the share of pixels above a tenth of the intensity range (volumes only), on the
    pixels :func:`_probe` keeps (mapped alone: a quarter of the work)."""
    if vol.kind == "image":
        return np.ones(plan.view.shape[0])
    return np.array([float((_grey(plan.intensity.normalised(k, step=2)) > 0.1).mean()) for k in range(plan.view.shape[0])])


def _skip_reason(vol: Volume, norm: np.ndarray, has_roi: bool, share: float, cfg) -> str | None:
    """Why a slice of a volume is left out: its foreground is a small ``share`` of the fullest
    slice's (the edge of a volume, even with a label on it), or it has no label and too little
    contrast to show anything."""
    if vol.kind == "image":
        return None
    if share < cfg.min_foreground:
        return "little_foreground"
    if not has_roi and float(_probe(norm).std()) < cfg.min_std:
        return "low_contrast"
    return None


def iter_slices(plan: SlicePlan, vol: Volume, spec: SourceSpec) -> Iterator[Slice2D]:
    """The kept slices of a planned volume; ``plan.skipped`` counts the others by reason."""
    cfg = spec.slicing
    informative = 0
    foreground = _foreground(plan, vol)
    fullest = max(float(foreground.max()), 1e-9)
    for k in range(plan.view.shape[0]):
        msl = plan.mask_view[k] if plan.mask_view is not None else None
        has_roi = bool(msl is not None and msl.any())
        norm = plan.intensity.normalised(k)
        why = _skip_reason(vol, norm, has_roi, float(foreground[k]) / fullest, cfg)
        if why is not None:
            plan.skipped[why] += 1
            continue
        if vol.kind != "image" and not has_roi:
            informative += 1
            if (informative - 1) % cfg.stride:
                plan.skipped["stride"] += 1
                continue
        yield _encode(plan, vol, k, norm, msl if has_roi else None, spec.max_side)
