"""Stage 1: ingest one source into ``source_manifest`` and ``preprocessed_images``.

Per task (a file, a DICOM series, a NIfTI volume, a CSV row), in a process pool with results
consumed in input order: decode safely (``medtrinity_assets.imaging``), cut volumes into 2D
slices (every slice with a labelled ROI plus every ``stride``-th informative slice), map
intensities to 8 bit (CT: Hounsfield window by organ; grey modalities: percentiles; colour
kept for colour modalities), orient slices to the display convention where the patient axes
are known, resize (longest side <= ``max_side``, square pixels), encode PNG and hash it
(sha256 + 64-bit DCT pHash). The main process then removes exact and near duplicates in
order, writes the content-addressed PNGs and masks and the two Parquet tables.

Bad input never stops a source: it becomes one ``quarantined`` manifest row whose ``reason``
starts with a prefix of :data:`medtrinity_assets.imaging.REASONS`.
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from medtrinity_assets import storage
from medtrinity_assets.imaging import dicom as dicom_reader
from medtrinity_assets.imaging import folder as folder_reader
from medtrinity_assets.imaging import nifti as nifti_reader
from medtrinity_assets.imaging import table as table_reader
from medtrinity_assets.imaging.common import (
    InputRejected,
    SourceRootMissing,
    Volume,
    check_root,
    direction_letter,
    list_files,
)
from medtrinity_assets.registry import SourceSpec, canonical_modality

__all__ = [
    "IMAGES_SCHEMA",
    "MANIFEST_SCHEMA",
    "ORGAN_WINDOWS",
    "IngestResult",
    "SourceRootMissing",
    "ct_window",
    "hamming",
    "ingest_source",
    "phash",
]

#: CT windows (center, width) in Hounsfield units by organ keyword; first match wins.
ORGAN_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "head": (40.0, 80.0),
    "stroke": (40.0, 40.0),
    "temporal bone": (600.0, 2800.0),
    "bone": (400.0, 1800.0),
    "spine": (400.0, 1800.0),
    "tibia": (400.0, 1800.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "chest": (50.0, 350.0),
    "neck": (40.0, 350.0),
    "abdomen": (40.0, 400.0),
    "pancreas": (40.0, 400.0),
    "kidney": (40.0, 400.0),
}
DEFAULT_CT_WINDOW = (40.0, 400.0)
NEAR_DUP_MIN_CORR = 0.97  # Pearson correlation of 16x16 thumbnails a near duplicate must reach as well
PLANE_DISPLAY = {"axial": ("L", "P"), "coronal": ("L", "I"), "sagittal": ("P", "I")}
_GROUP = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}

MANIFEST_SCHEMA: dict[str, Any] = {
    "record_id": pl.Utf8,
    "source": pl.Utf8,
    "relpath": pl.Utf8,
    "status": pl.Utf8,
    "reason": pl.Utf8,
    "duplicate_of": pl.Utf8,
    "modality": pl.Utf8,
    "organ": pl.Utf8,
    "labels": pl.List(pl.Utf8),
    "split": pl.Utf8,
    "width": pl.Int32,
    "height": pl.Int32,
    "depth": pl.Int32,
    "slice_axis": pl.Utf8,
    "slice_index": pl.Int32,
    "body_part": pl.Utf8,
    "description": pl.Utf8,
    "label": pl.Utf8,
    "report": pl.Utf8,
    "question": pl.Utf8,
    "answer": pl.Utf8,
    "synthetic": pl.Boolean,
}
IMAGES_SCHEMA: dict[str, Any] = {
    "record_id": pl.Utf8,
    "source": pl.Utf8,
    "image_path": pl.Utf8,
    "sha256": pl.Utf8,
    "phash": pl.Utf8,
    "width": pl.Int32,
    "height": pl.Int32,
    "channels": pl.Int8,
    "window": pl.Utf8,
    "original_spacing": pl.List(pl.Float64),
    "display_right": pl.Utf8,
    "display_down": pl.Utf8,
    "mask_path": pl.Utf8,
    "mask_labels": pl.List(pl.Int32),
    "mask_label_names": pl.List(pl.Utf8),
    "boxes": pl.List(pl.List(pl.Float64)),
    "box_labels": pl.List(pl.Utf8),
    "box_clipped": pl.List(pl.Boolean),
}


@dataclass
class IngestResult:
    manifest: pl.DataFrame
    images: pl.DataFrame
    quarantine_counts: dict[str, int]
    counts: dict[str, int]


# --------------------------------------------------------------------------------------
# intensity, geometry, hashing (pure functions)


def ct_window(organ: str, spec_window: Any = None) -> tuple[float, float]:
    """(center, width) in HU: the registry's window when given, else by organ keyword."""
    if spec_window is not None and spec_window.center is not None and spec_window.width is not None:
        return float(spec_window.center), float(spec_window.width)
    organ_l = (organ or "").lower()
    for key, win in ORGAN_WINDOWS.items():
        if key in organ_l:
            return win
    return DEFAULT_CT_WINDOW


def _grey32(image: np.ndarray) -> np.ndarray:
    """32x32 grey thumbnail (box filter) as float64."""
    im = Image.fromarray(image)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im.resize((32, 32), Image.Resampling.BOX), np.float64)


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``: ``D @ x`` equals
    ``scipy.fft.dct(x, norm="ortho")[:keep]`` (kept in numpy so that pool workers need no scipy)."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


_DCT_32_8 = _dct_rows(32, 8)


def _phash_bits(grey32: np.ndarray) -> int:
    # the 8x8 lowest 2D DCT-II frequencies; rounding drops float noise (a flat image has AC 0)
    coeffs = np.round((_DCT_32_8 @ grey32 @ _DCT_32_8.T).ravel(), 6)
    med = np.partition(coeffs[1:], 31)[31:33].mean()  # median of the 63 AC coefficients
    value = 0
    for b in (coeffs > med).tolist():
        value = (value << 1) | b
    return value


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash: DCT of a 32x32 grey thumbnail, 8x8 low frequencies vs their median."""
    return _phash_bits(_grey32(image))


def hamming(a: int | str, b: int | str) -> int:
    a = int(a, 16) if isinstance(a, str) else a
    b = int(b, 16) if isinstance(b, str) else b
    return (a ^ b).bit_count()


def _thumb16(grey32: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail (2x2 means of the 32x32 one) for the near-duplicate check."""
    return np.rint(grey32.reshape(16, 2, 16, 2).mean(axis=(1, 3))).astype(np.uint8)


def _thumb_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails (1.0 when both are flat and equal)."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    if den == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(x @ y) / den


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
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


def _plane(direction: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(direction)))]


def choose_axis(vol: Volume, axis_cfg: str) -> int:
    """The array axis to cut along: ``auto`` keeps the native one; a named plane picks its normal."""
    if vol.axes_lps is None or axis_cfg == "auto" or vol.data.ndim != 3:
        return vol.native_axis
    target = {"sagittal": 0, "coronal": 1, "axial": 2}[axis_cfg]
    return int(np.argmax(np.abs(vol.axes_lps[:, target])))


# --------------------------------------------------------------------------------------
# one task -> candidate records (runs in a worker)


@dataclass
class Candidate:
    manifest: dict[str, Any]
    image: dict[str, Any]
    png: bytes
    mask_png: bytes | None
    phash: int
    thumb: np.ndarray


@dataclass
class TaskResult:
    candidates: list[Candidate] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)  # non-fatal findings, counted in metadata


def _base_row(spec: SourceSpec, relpath: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(MANIFEST_SCHEMA)
    row.update(
        source=spec.name,
        relpath=relpath,
        modality=canonical_modality(spec.modality),
        organ=spec.organ,
        labels=[],
        split=spec.split,
        synthetic=spec.synthetic,
    )
    return row


def quarantine_row(spec: SourceSpec, relpath: str, reason: str, frame_key: str = "") -> dict[str, Any]:
    row = _base_row(spec, relpath)
    row.update(
        record_id=storage.record_id(spec.name, relpath, None, frame_key), status="quarantined", reason=reason
    )
    return row


class _Intensity:
    """Maps physical slices to uint8 (grey) or keeps colour."""

    def __init__(self, vol: Volume, spec: SourceSpec, view: np.ndarray, axis: int):
        self.vol, self.spec, self.view, self.axis = vol, spec, view, axis
        self.keep_colour = vol.colour and spec.keeps_colour
        slope = vol.slope if vol.slope is not None else np.ones(1)
        inter = vol.intercept if vol.intercept is not None else np.zeros(1)
        self.uniform = bool(np.all(slope == slope[0]) and np.all(inter == inter[0]))
        self.slope, self.inter = slope, inter
        if not self.uniform and axis != 0:
            n0 = vol.data.shape[0]
            phys = np.empty(vol.data.shape, np.float32)
            for k in range(n0):
                phys[k] = vol.data[k] * np.float32(slope[k]) + np.float32(inter[k])
            self.view = np.moveaxis(phys, axis, 0)
            self.slope, self.inter, self.uniform = np.ones(1), np.zeros(1), True
        self.lo = self.hi = 0.0
        self.window = ""

    def _sb(self, k: int) -> tuple[float, float]:
        if self.uniform:
            return float(self.slope[0]), float(self.inter[0])
        return float(self.slope[k]), float(self.inter[k])

    def _raw(self, k: int) -> np.ndarray:
        """Stored values of slice k; colour that a grey modality does not keep becomes luminance."""
        sl = self.view[k]
        if sl.ndim == 3 and not self.keep_colour:
            sl = (sl[..., 0] * 0.299 + sl[..., 1] * 0.587 + sl[..., 2] * 0.114).astype(np.float32)
        return sl

    def calibrate(self) -> None:
        """Global stats: NaN / constant checks, then the window or the percentiles.

        Works on stored values (min/max per slice, a strided sample for percentiles) and maps
        them through slope/intercept, so no float copy of the volume is made.
        """
        n = self.view.shape[0]
        total = int(np.prod(self.view.shape[:3], dtype=np.int64))
        step = max(1, int(math.ceil(math.sqrt(total / 250_000))))
        samples, vmin, vmax, any_finite = [], math.inf, -math.inf, False
        for k in range(n):
            raw = self._raw(k)
            s, b = self._sb(k)
            vals = raw
            if raw.dtype.kind == "f":
                finite = np.isfinite(raw)
                if not finite.all():
                    if not finite.any():
                        continue
                    vals = raw[finite]
            any_finite = True
            lo_k, hi_k = sorted((float(vals.min()) * s + b, float(vals.max()) * s + b))
            vmin, vmax = min(vmin, lo_k), max(vmax, hi_k)
            sub = raw[::step, ::step]
            if sub.dtype.kind == "f":
                sub = sub[np.isfinite(sub)]
            sub = sub.astype(np.float32).ravel()
            samples.append(sub * np.float32(s) + np.float32(b) if (s, b) != (1.0, 0.0) else sub)
        if not any_finite:
            raise InputRejected("nan_volume", "no finite voxel")
        if vmax <= vmin:
            raise InputRejected("constant_volume", "every voxel has the same value")
        if self.keep_colour:
            self.window = "colour"
            self.lo, self.hi = 0.0, 255.0 if vmax <= 255 else vmax
            return
        win = self.spec.window
        if self.vol.modality == "ct" or (
            win is not None and win.center is not None and win.width is not None
        ):
            c, w = ct_window(self.spec.organ, win)
            self.lo, self.hi = c - w / 2.0, c + w / 2.0
            self.window = f"{'ct' if self.vol.modality == 'ct' else 'window'}:{c:g}/{w:g}"
            return
        lp = win.low_percentile if win is not None else 0.5
        hp = win.high_percentile if win is not None else 99.5
        sample = np.concatenate(samples) if samples else np.array([vmin, vmax])
        lo, hi = (float(v) for v in np.percentile(sample, [lp, hp]))
        if hi <= lo:
            lo, hi = vmin, vmax
        self.lo, self.hi = lo, hi
        self.window = f"percentile:{lp:g}-{hp:g}"

    def normalised(self, k: int) -> np.ndarray:
        """Slice k on a 0-1 scale (grey) or 0-1 per channel (colour); NaN -> 0."""
        raw = self._raw(k)
        s, b = self._sb(k)
        span = self.hi - self.lo
        out = raw.astype(np.float32)
        out *= np.float32(s / span)
        out += np.float32((b - self.lo) / span)
        np.clip(out, 0.0, 1.0, out=out)
        if raw.dtype.kind == "f":
            np.nan_to_num(out, copy=False, nan=0.0)
        if self.vol.meta.get("invert"):
            np.subtract(np.float32(1.0), out, out=out)
        return out

    def to_u8(self, k: int, norm: np.ndarray) -> np.ndarray:
        if self.keep_colour and self.view.dtype == np.uint8:
            return np.ascontiguousarray(self.view[k])  # already 8-bit colour: untouched
        return (norm * 255.0 + 0.5).astype(np.uint8)


def slice_volume(vol: Volume, spec: SourceSpec) -> tuple[list[Candidate], int]:
    """Kept 2D slices of one volume/image as encoded candidates; returns (candidates, skipped)."""
    cfg = spec.slicing
    axis = choose_axis(vol, cfg.axis)
    view = np.moveaxis(vol.data, axis, 0) if axis else vol.data
    mview = None
    if vol.mask is not None:
        if vol.mask.shape != vol.data.shape[:3]:
            raise InputRejected("mask_shape_mismatch", f"mask {vol.mask.shape} vs image {vol.data.shape[:3]}")
        mview = np.moveaxis(vol.mask, axis, 0) if axis else vol.mask
    inten = _Intensity(vol, spec, view, axis)
    inten.calibrate()
    n = view.shape[0]
    in_plane = [a for a in range(3) if a != axis]
    axes = vol.axes_lps
    if vol.kind == "volume":
        slice_axis = _plane(axes[axis]) if axes is not None else "frame"
    elif vol.kind == "frames":
        slice_axis = "frame"
    else:
        slice_axis = None
    reorient = axes is not None and vol.kind == "volume" and (vol.reorient or axis != vol.native_axis)
    # in-plane geometry: rows along in_plane[0], cols along in_plane[1]
    transpose, flip_r, flip_c = False, False, False
    right = down = None
    row_mm, col_mm = vol.spacing[in_plane[0]], vol.spacing[in_plane[1]]
    if axes is not None:
        drow, dcol = axes[in_plane[0]].copy(), axes[in_plane[1]].copy()
        if reorient and slice_axis in PLANE_DISPLAY:
            want_r, want_d = PLANE_DISPLAY[slice_axis]
            if (
                _GROUP.get(direction_letter(drow) or "", -1) == _GROUP[want_r]
                and _GROUP.get(direction_letter(dcol) or "", -1) != _GROUP[want_r]
            ):
                transpose = True
                drow, dcol = dcol, drow
                row_mm, col_mm = col_mm, row_mm
            if (
                direction_letter(dcol) != want_r
                and _GROUP.get(direction_letter(dcol) or "", -1) == _GROUP[want_r]
            ):
                flip_c, dcol = True, -dcol
            if (
                direction_letter(drow) != want_d
                and _GROUP.get(direction_letter(drow) or "", -1) == _GROUP[want_d]
            ):
                flip_r, drow = True, -drow
        right, down = direction_letter(dcol), direction_letter(drow)
    elif vol.patient_orientation is not None:
        right, down = vol.patient_orientation
    elif vol.projection_xray:
        right, down = "L", "I"  # radiological display convention when the header says nothing

    def orient(a: np.ndarray) -> np.ndarray:
        if transpose:
            a = np.swapaxes(a, 0, 1)
        if flip_r:
            a = a[::-1]
        if flip_c:
            a = a[:, ::-1]
        return a

    depth = n
    rel_of = (
        vol.slice_relpaths if (vol.slice_relpaths and axis == 0 and len(vol.slice_relpaths) == n) else None
    )
    informative = 0
    skipped = 0
    out: list[Candidate] = []
    for k in range(n):
        msl = mview[k] if mview is not None else None
        has_roi = bool(msl is not None and msl.any())
        norm = inten.normalised(k)
        if vol.kind != "image" and not has_roi:
            probe = norm[::2, ::2] if norm.ndim == 2 else norm[::2, ::2].mean(axis=2)
            if float(probe.std()) < cfg.min_std:
                skipped += 1
                continue
            informative += 1
            if (informative - 1) % cfg.stride:
                skipped += 1
                continue
        img = orient(inten.to_u8(k, norm))
        h, w = img.shape[:2]
        oh, ow, spacing = output_size(h, w, row_mm, col_mm, spec.max_side)
        img = np.ascontiguousarray(resize_image(np.ascontiguousarray(img), oh, ow))
        png = _png(img)
        mask_png, mask_labels = None, []
        if has_roi:
            m = resize_mask(np.ascontiguousarray(orient(msl)), oh, ow)
            mask_labels = [int(v) for v in np.unique(m) if v > 0]
            if mask_labels:
                m = m.astype(np.uint16 if max(mask_labels) > 255 else np.uint8)
                mask_png = _png(np.ascontiguousarray(m))
        boxes, box_clipped = [], []
        if vol.boxes:
            sx, sy = ow / w, oh / h
            for x0, y0, x1, y1 in vol.boxes:
                b = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
                c = [max(0.0, b[0]), max(0.0, b[1]), min(float(ow), b[2]), min(float(oh), b[3])]
                boxes.append([round(v, 3) for v in c])
                box_clipped.append(c != b)
        # names from the registry, dataset.json or the SEG's segment labels; an unnamed value
        # stays null here (roi_set flags it) and is left out of the record's labels
        mask_names = [vol.label_names.get(v) for v in mask_labels]
        names = [n for n in mask_names if n]
        # box labels, then a table row's own labels ("a; b" when several rows named the image)
        for lab in [*vol.box_labels, *str(vol.meta.get("label") or "").split(";")]:
            lab = lab.strip()
            if lab and lab not in names:
                names.append(lab)
        relpath = rel_of[k] if rel_of else vol.relpath
        sidx = k if vol.kind != "image" else None
        frame = vol.frame_key or (slice_axis or "")
        rid = storage.record_id(spec.name, relpath, sidx, frame)
        row = _base_row(spec, relpath)
        row.update(
            record_id=rid,
            status="ok",
            modality=vol.modality,
            labels=names,
            split=vol.meta.get("split") or spec.split,
            width=w,
            height=h,
            depth=depth,
            slice_axis=slice_axis,
            slice_index=sidx,
            body_part=vol.meta.get("body_part") or None,
            description=vol.meta.get("description") or None,
            label=vol.meta.get("label") or None,
            report=vol.meta.get("report") or None,
            question=vol.meta.get("question") or None,
            answer=vol.meta.get("answer") or None,
        )
        g32 = _grey32(img)
        ph = _phash_bits(g32)
        image = {
            "record_id": rid,
            "source": spec.name,
            "sha256": storage.sha256_bytes(png),
            "phash": f"{ph:016x}",
            "width": ow,
            "height": oh,
            "channels": 3 if img.ndim == 3 else 1,
            "window": inten.window,
            "original_spacing": [round(v, 6) for v in spacing] if spacing else None,
            "display_right": right,
            "display_down": down,
            "mask_labels": mask_labels,
            "mask_label_names": mask_names,
            "boxes": boxes,
            "box_labels": list(vol.box_labels),
            "box_clipped": box_clipped,
        }
        out.append(Candidate(row, image, png, mask_png, ph, _thumb16(g32)))
    if not out:
        raise InputRejected("constant_volume", f"no informative slice among {n} (min_std {cfg.min_std})")
    return out, skipped


# --------------------------------------------------------------------------------------
# tasks per layout

_WORKER: dict[str, Any] = {}


def _init_worker(spec_json: str, root: str) -> None:
    _WORKER["spec"] = SourceSpec.model_validate_json(spec_json)
    _WORKER["root"] = Path(root)


def _load(spec: SourceSpec, root: Path, task: Any) -> Volume:
    mp_ = spec.max_pixels
    if isinstance(task, dicom_reader.DicomTask):
        return dicom_reader.load_task(task, spec.modality, dict(spec.labels), spec.keeps_colour)
    if isinstance(task, nifti_reader.NiftiTask):
        return nifti_reader.load_task(task, root, mp_, spec.modality, dict(spec.labels))
    if isinstance(task, folder_reader.ImageTask):
        return folder_reader.load_task(task, mp_, spec.modality, dict(spec.labels))
    if isinstance(task, table_reader.TableTask):
        return table_reader.load_task(task, mp_, spec.modality, dict(spec.labels))
    raise TypeError(f"unknown task {type(task).__name__}")


def _frame_key(task: Any) -> str:
    return getattr(task, "row_key", "") or ""


def process_task(task: Any, spec: SourceSpec | None = None, root: Path | None = None) -> TaskResult:
    """Decode and preprocess one task (in a worker; ``spec``/``root`` default to the worker's)."""
    spec = spec or _WORKER["spec"]
    root = root or _WORKER["root"]
    res = TaskResult()
    if isinstance(task, tuple) and task and task[0] == "rejected":
        _, relpath, reason = task
        res.quarantined.append(quarantine_row(spec, relpath, reason))
        return res
    relpath = getattr(task, "relpath", "?")
    try:
        vol = _load(spec, root, task)
        for rel, reason in vol.extra_rejections:
            res.quarantined.append(quarantine_row(spec, rel, reason))
        res.candidates, res.skipped = slice_volume(vol, spec)
        res.warnings = list(vol.warnings)
    except InputRejected as exc:
        res.quarantined.append(quarantine_row(spec, relpath, exc.reason, _frame_key(task)))
    except MemoryError:
        res.quarantined.append(
            quarantine_row(spec, relpath, "too_many_pixels: out of memory", _frame_key(task))
        )
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the source
        res.quarantined.append(
            quarantine_row(spec, relpath, f"undecodable: {type(exc).__name__}", _frame_key(task))
        )
    return res


def _scan_dicom(items: list[tuple[str, str]]) -> list[dicom_reader.DicomHeader]:
    """Header reads of a chunk of files (one round trip to a worker per chunk: a header read
    takes about a millisecond, about what sending one task to a worker costs)."""
    mp_ = _WORKER["spec"].max_pixels
    return [dicom_reader.scan_header(rel, path, mp_) for rel, path in items]


HEADER_CHUNK = 32


def _ordered(
    fn: Callable[[Any], Any], items: Iterable[Any], pool: ProcessPoolExecutor | None, window: int
) -> Iterator[Any]:
    """``map`` in input order with at most ``window`` tasks in flight (bounded memory)."""
    if pool is None:
        for item in items:
            yield fn(item)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def list_tasks(spec: SourceSpec, root: Path, pool: ProcessPoolExecutor | None) -> list[Any]:
    """Every task of a source in a deterministic order (rejected inputs as ``("rejected", ...)``)."""
    include = list(spec.include)
    rejected: list[tuple[str, str]] = []
    if spec.layout == "dicom":
        found = dicom_reader.list_dicom(list_files(root, include))
        rejected += [(f.relpath, f.reason or "path_escapes_root:") for f in found if f.path is None]
        items = [(f.relpath, str(f.path)) for f in found if f.path is not None]
        if pool is None:
            headers = [dicom_reader.scan_header(r, p, spec.max_pixels) for r, p in items]
        else:
            chunks = [items[i : i + HEADER_CHUNK] for i in range(0, len(items), HEADER_CHUNK)]
            headers = [h for chunk in _ordered(_scan_dicom, chunks, pool, 8) for h in chunk]
        tasks, rej = dicom_reader.group_headers(headers, spec.max_pixels)
        rejected += rej
    elif spec.layout == "nifti_msd":
        tasks, rej = nifti_reader.list_msd(root, include, spec.channels, name=spec.name)
        rejected += rej
    elif spec.layout == "image_folder":
        tasks, rej = folder_reader.list_folder(root, include, name=spec.name)
        rejected += rej
    elif spec.layout == "table":
        tasks, rej = table_reader.list_table(root, include)
        rejected += rej
    else:  # pragma: no cover - the registry validates the layout
        raise ValueError(f"unknown layout {spec.layout}")
    units: list[Any] = list(tasks) + [("rejected", r, why) for r, why in rejected]

    def key(u: Any) -> tuple[str, str]:
        return (u[1], "") if isinstance(u, tuple) else (u.relpath, _frame_key(u))

    units.sort(key=key)
    return units


# --------------------------------------------------------------------------------------
# the entry point


def _pool(workers: int, spec: SourceSpec, root: Path) -> ProcessPoolExecutor | None:
    if workers <= 1 or mp.current_process().daemon:  # a daemonic process may not have children
        return None
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload(["medtrinity_assets.preprocess", "medtrinity_assets.imaging.preload"])
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(spec.model_dump_json(), str(root)),
    )


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def ingest_source(
    spec: SourceSpec,
    out: str | Path,
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    near_duplicate_distance: int | None = 4,
) -> IngestResult:
    """Read one source, preprocess it and write its ``source_manifest`` and ``preprocessed_images``.

    Deterministic and idempotent: rows come in task order (sorted relative paths, then slices),
    PNGs are named by content. ``near_duplicate_distance``: largest pHash Hamming distance (with
    a thumbnail check) at which an image from another file/volume is a near duplicate; ``None``
    keeps only exact-duplicate removal. Slices, frames or channels of one file are never near
    duplicates of each other (only exact ones).
    """
    out = Path(out)
    root = check_root(spec.name, spec.resolved_root())
    workers = max(1, int(workers))
    _init_worker(spec.model_dump_json(), str(root))
    pool = _pool(workers, spec, root)
    manifest_rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    sha_kept: dict[str, str] = {}
    cap = 256
    ph_arr = np.zeros(cap, np.uint64)
    grp_arr = np.zeros(cap, np.int64)
    thumbs = np.zeros((cap, 16, 16), np.uint8)
    kept_ids: list[str] = []
    # durable writes (fsync) overlap with decoding: a few I/O threads in the main process
    writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="png-writer")
    writes: deque = deque()
    try:
        units = list_tasks(spec, root, pool)
        total = len(units)
        counts["tasks"] = total
        if progress:
            progress(0, total)
        window = 4 * workers  # tasks in flight: load balance vs results waiting in memory
        # Near-duplicate groups are files: the slices, frames or channels of one file are never
        # near duplicates of each other (only exact ones), e.g. T1 and T1gd of one 4D volume.
        file_group: dict[str, int] = {}
        for done, (i, res) in enumerate(enumerate(_ordered(process_task, units, pool, window)), start=1):
            unit = units[i]
            group = file_group.setdefault(unit[1] if isinstance(unit, tuple) else unit.relpath, len(file_group))
            manifest_rows.extend(res.quarantined)
            counts["slices_skipped"] += res.skipped
            for warning in res.warnings:
                counts[f"warning:{warning}"] += 1
            for cand in res.candidates:
                img = cand.image
                dup_of, why = sha_kept.get(img["sha256"]), "exact_duplicate: identical pixels"
                m = len(kept_ids)
                if dup_of is None and near_duplicate_distance is not None and m:
                    dist = np.bitwise_count(ph_arr[:m] ^ np.uint64(cand.phash))
                    hits = np.nonzero((dist <= near_duplicate_distance) & (grp_arr[:m] != group))[0]
                    for i in hits:
                        if _thumb_corr(thumbs[i], cand.thumb) >= NEAR_DUP_MIN_CORR:
                            dup_of, why = kept_ids[i], f"near_duplicate: phash distance {int(dist[i])}"
                            break
                row = cand.manifest
                if dup_of is not None:
                    row.update(status="duplicate", duplicate_of=dup_of, reason=why)
                    manifest_rows.append(row)
                    counts["duplicate"] += 1
                    continue
                rel = storage.content_path("", "images", img["sha256"]).as_posix()
                writes.append(writer.submit(storage.write_content_file, out / rel, cand.png))
                img["image_path"] = rel
                img["mask_path"] = None
                if cand.mask_png is not None:
                    msha = storage.sha256_bytes(cand.mask_png)
                    mrel = storage.content_path("", "masks", msha).as_posix()
                    writes.append(writer.submit(storage.write_content_file, out / mrel, cand.mask_png))
                    img["mask_path"] = mrel
                    counts["masks"] += 1
                while len(writes) > 64:  # bounded: PNG bytes waiting for the disk
                    counts["files_written"] += int(writes.popleft().result())
                manifest_rows.append(row)
                image_rows.append(img)
                sha_kept[img["sha256"]] = row["record_id"]
                if m == cap:
                    cap *= 2
                    ph_arr = np.resize(ph_arr, cap)
                    grp_arr = np.resize(grp_arr, cap)
                    thumbs = np.resize(thumbs, (cap, 16, 16))
                ph_arr[m], grp_arr[m], thumbs[m] = cand.phash, group, cand.thumb
                kept_ids.append(row["record_id"])
            if progress:
                progress(done, total)
        while writes:
            counts["files_written"] += int(writes.popleft().result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)

    manifest = (
        pl.DataFrame(manifest_rows, schema=MANIFEST_SCHEMA)
        if manifest_rows
        else (pl.DataFrame(schema=MANIFEST_SCHEMA))
    )
    images = (
        pl.DataFrame(image_rows, schema=IMAGES_SCHEMA) if image_rows else pl.DataFrame(schema=IMAGES_SCHEMA)
    )
    if spec.layout == "dicom" and manifest.height:
        # A folder or file named after the patient (or a UID) must not reach the tables either.
        renamed = dicom_reader.redact_manifest_paths(manifest["relpath"].drop_nulls().to_list(), root)
        if renamed:
            manifest = manifest.with_columns(pl.col("relpath").replace(renamed))
            counts["relpaths_redacted"] = len(renamed)
    ids = manifest["record_id"]
    if ids.n_unique() != manifest.height:
        dupes = manifest.filter(ids.is_duplicated())["relpath"].unique().to_list()[:5]
        raise RuntimeError(f"source '{spec.name}': record_id collision for {dupes}")
    storage.write_table(manifest, storage.table_path(out, "source_manifest", spec.name))
    storage.write_table(images, storage.table_path(out, "preprocessed_images", spec.name))
    qc = Counter(
        r.split(":", 1)[0] for r in manifest.filter(pl.col("status") == "quarantined")["reason"].to_list()
    )
    counts.update(
        records=manifest.height,
        ok=int((manifest["status"] == "ok").sum()),
        quarantined=int((manifest["status"] == "quarantined").sum()),
        images=images.height,
    )
    counts["duplicate"] = int((manifest["status"] == "duplicate").sum())
    return IngestResult(manifest, images, dict(sorted(qc.items())), dict(counts))
