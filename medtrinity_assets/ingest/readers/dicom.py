"""DICOM reader: single files, multi-file series, multi-frame objects and SEG label maps.

Headers are read with ``force=False`` (a file without a DICOM preamble/header is
``not_dicom``); the pixel budget (Rows x Columns x frames) is checked from the header before
any decode, and only a full pixel decode proves a file good (a truncated file's header reads
fine). Identifying attributes never leave the reader as values: the header scan gathers them in
memory (:class:`~.dicom_headers.DicomHeader.identifiers`) so that ingestion can redact paths and
scrub text, and UIDs serve only grouping and SEG matching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medtrinity_assets.core.vocabulary import header_modality
from medtrinity_assets.ingest.readers import register
from medtrinity_assets.ingest.readers.base import (
    InputRejected,
    MapOrdered,
    Reader,
    Rejected,
    ScanResult,
    Task,
    Volume,
)
from medtrinity_assets.ingest.readers.dicom_headers import (
    SERIES_GAP_FACTOR,
    DicomHeader,
    DicomTask,
    floats_of,
    functional_group,
    group_headers,
    image_orientation,
    is_dicomdir,
    list_dicom,
    patient_orientation,
    read_dataset,
    scan_header,
)
from medtrinity_assets.ingest.readers.dicom_masks import overlay_mask, seg_mask
from medtrinity_assets.ingest.readers.dicom_pixels import (
    declared_slice_mm,
    decode_pixels,
    describe,
    pixel_spacing,
    rescale_of,
)
from medtrinity_assets.ingest.readers.files import FoundFile, list_files
from medtrinity_assets.ingest.readers.folder_units import FolderWalk, walk_folders
from medtrinity_assets.ingest.readers.plan_memo import PlanMemo
from medtrinity_assets.ingest.shards import plan_shards

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.ingest.registry import SourceSpec
    from medtrinity_assets.ingest.shards import ShardPlan

#: header reads per round trip to a worker (a read takes about what sending a task costs)
HEADER_CHUNK = 32


def _not_dicomdir(relpath: str) -> bool:
    return not is_dicomdir(relpath)


def scan_header_chunk(items: list[tuple[str, str, int]]) -> list[DicomHeader]:
    """Header reads of a chunk of ``(relpath, path, max_pixels)`` (runs in a worker)."""
    return [scan_header(rel, path, max_pixels) for rel, path, max_pixels in items]


# --------------------------------------------------------------------------------------
# decode one task


@dataclass
class _Decoded:
    """The decodable files of a task, stacked, with their rescale and the rejected ones."""

    data: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    files: list[tuple[str, str, str]]
    first: Any
    rejected: list[Rejected] = field(default_factory=list)


def _decode_files(task: DicomTask) -> _Decoded:
    """Decode every file of a task; a bad file of a series is rejected alone, a bad single file
    rejects the task."""
    arrays, slopes, inters, kept, rejected, first = [], [], [], [], [], None
    for relpath, path, uid in task.files:
        try:
            ds = read_dataset(path, header_only=False)
            arr = decode_pixels(ds)
        except InputRejected as exc:
            if len(task.files) == 1:
                raise
            rejected.append(Rejected(relpath, reason=exc.reason))
            continue
        if first is None:
            first = ds
        elif arr.shape[1:] != arrays[0].shape[1:]:
            rejected.append(Rejected(relpath, reason="undecodable: slice shape differs from its series"))
            continue
        s, b = rescale_of(ds, arr.shape[0])
        arrays.append(arr)
        slopes.append(s)
        inters.append(b)
        kept.append((relpath, path, uid))
        if len(task.files) == 1:
            break
    if first is None:
        raise InputRejected("undecodable", "no decodable file in the series")
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return _Decoded(data, np.concatenate(slopes), np.concatenate(inters), kept, first, rejected)


@dataclass
class _Geometry:
    kind: str  # image | frames | volume
    axes: np.ndarray | None
    slice_mm: float | None
    order: np.ndarray
    series_gap: bool = False


def _frame_geometry(first: Any, iop: tuple[float, ...], normal: np.ndarray, n: int) -> tuple[str, np.ndarray, float | None]:
    """Enhanced multi-frame objects: one position per frame (per-frame groups); frames whose
    planes differ (a localizer) are not one volume."""
    positions = [floats_of(functional_group(first, "", "PlanePositionSequence", "ImagePositionPatient", i) or (), 3) for i in range(n)]
    same_plane = all(
        (o := image_orientation(first, i)) is not None and np.allclose(o, iop, atol=1e-3) for i in range(n)
    )
    if not same_plane or any(p is None for p in positions):
        return "frames", np.arange(n), None
    proj = np.array([float(np.dot(normal, p)) for p in positions])
    order = np.argsort(proj, kind="stable")
    if len(np.unique(np.round(proj, 3))) != n:
        return "frames", order, None
    d = np.diff(proj[order])
    return "volume", order, float(np.median(np.abs(d))) if len(d) else None


def _series_spacing(task: DicomTask, kept: list[tuple[str, str, str]], normal: np.ndarray) -> tuple[float | None, bool]:
    """Slice spacing of a multi-file series from its headers' positions, and whether it has gaps
    (missing slices: the volume is kept, its gap counted)."""
    pos_of = dict(zip([f[0] for f in task.files], task.positions or [None] * len(task.files), strict=True))
    projs = [float(np.dot(normal, pos_of[r])) if pos_of.get(r) is not None else np.nan for r, _, _ in kept]
    d = np.diff(np.asarray(projs))
    slice_mm = float(np.nanmedian(np.abs(d))) if len(d) and np.any(np.isfinite(d)) else None
    steps = np.abs(d[np.isfinite(d)])
    steps = steps[steps > 1e-6]
    return slice_mm, bool(len(steps) > 1 and steps.max() > SERIES_GAP_FACTOR * steps.min())


def _geometry(task: DicomTask, dec: _Decoded) -> _Geometry:
    n = dec.data.shape[0]
    iop = image_orientation(dec.first)
    geo = _Geometry("image" if n == 1 else "frames", None, None, np.arange(n))
    if iop is None:
        return geo
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(r, c)
    geo.axes = np.stack([normal, c, r])
    if len(dec.files) > 1:
        geo.kind = "volume"
        geo.slice_mm, geo.series_gap = _series_spacing(task, dec.files, normal)
    elif n > 1:
        geo.kind, geo.order, geo.slice_mm = _frame_geometry(dec.first, iop, normal, n)
        if geo.kind != "volume":
            geo.axes = None
    if geo.slice_mm is None and geo.kind == "volume":
        geo.slice_mm = declared_slice_mm(dec.first)
    return geo


def load_series(task: DicomTask, spec_modality: str, label_names: dict[int, str]) -> Iterator[Volume | Rejected]:
    """Decode one task into a Volume (a series stacked along the slice normal, SEG masks
    aligned); files of a series that fail alone come first, as :class:`Rejected`."""
    dec = _decode_files(task)
    yield from dec.rejected
    geo = _geometry(task, dec)
    data = dec.data if np.array_equal(geo.order, np.arange(len(geo.order))) else dec.data[geo.order]
    meta: dict[str, Any] = describe(dec.first)
    modality = header_modality(meta.pop("modality_code"), spec_modality)
    # MONOCHROME1: the lowest value is displayed white (common for CR/DX)
    meta["invert"] = data.ndim == 3 and str(dec.first.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    mask, names = None, dict(label_names)
    if task.segs:
        mask, seg_names = seg_mask(task, dec.files, data.shape[1:3], dec.first, geo.order)
        for k, v in seg_names.items():
            names.setdefault(k, v)
    if mask is None and names and len(dec.files) == 1 and data.shape[0] == 1:
        mask = overlay_mask(dec.first, data.shape[1:3], min(names))
    iop = image_orientation(dec.first)
    row_mm, col_mm = pixel_spacing(dec.first)
    yield Volume(
        relpath=task.relpath,
        data=data,
        modality=modality,
        kind=geo.kind,
        slope=dec.slope[geo.order],
        intercept=dec.intercept[geo.order],
        mask=mask,
        axes_lps=geo.axes if geo.kind != "frames" else None,
        spacing=(geo.slice_mm, row_mm, col_mm),
        slice_relpaths=[f[0] for f in dec.files] if len(dec.files) > 1 else None,
        label_names=names,
        projection_xray=(iop is None and modality == "x-ray"),
        patient_orientation=patient_orientation(dec.first) if iop is None else None,
        colour=data.ndim == 4,
        meta=meta,
        warnings=["series_gap"] if geo.series_gap else [],
    )


@register
class DicomReader(Reader):
    layout = "dicom"
    description = "DICOM files, series, multi-frame objects and SEG masks (compressed syntaxes decoded)"

    def shard_unit(self, relpath: str) -> str:
        return relpath.rsplit("/", 1)[0] if "/" in relpath else ""  # a folder: a series stays whole

    def shard_units(self, spec: SourceSpec, root: Path) -> list[tuple[str, int]]:
        """Files per folder, from the folders' listings (an unchanged folder without subfolders is not
        listed again: :mod:`.folder_units`); only ``DICOMDIR`` entries are looked at (an index is
        skipped, a link to one that cannot be followed is a rejected input)."""
        return self._walk(spec, root).units()

    def shard_plan(self, spec: SourceSpec, root: Path) -> ShardPlan:
        return plan_shards(self.shard_units(spec, root), spec.shard_size, self.shard_unit)

    def scan_shard(self, spec: SourceSpec, root: Path, map_ordered: MapOrdered, plan: ShardPlan, shard: int) -> ScanResult:
        """The tasks of one shard: only its folders are listed, only their files' headers read."""
        found = list_dicom(self._walk(spec, root, plan.keeps_unit(shard)).found)
        return self._scan_found(spec, found, map_ordered)

    def scan(self, spec: SourceSpec, root: Path, map_ordered: MapOrdered) -> ScanResult:
        return self._scan_found(spec, list_dicom(list_files(root, list(spec.include))), map_ordered)

    @staticmethod
    def _walk(spec: SourceSpec, root: Path, wanted: Callable[[str], bool] | None = None) -> FolderWalk:
        memo = PlanMemo(root, f"dicom_folders\0{sorted(spec.include)}")
        walk = walk_folders(root, list(spec.include), memo=memo, wanted=wanted, counts_file=_not_dicomdir)
        memo.save()
        return walk

    @staticmethod
    def _scan_found(spec: SourceSpec, found: list[FoundFile], map_ordered: MapOrdered) -> ScanResult:
        """Tasks from the listed files: their headers read (in chunks, through ``map_ordered``) and grouped."""
        tasks: list[Task] = [Rejected(f.relpath, reason=f.reason or "path_escapes_root:") for f in found if f.path is None]
        items = [(f.relpath, str(f.path), spec.max_pixels) for f in found if f.path is not None]
        chunks = [items[i : i + HEADER_CHUNK] for i in range(0, len(items), HEADER_CHUNK)]
        headers = [h for chunk in map_ordered(scan_header_chunk, chunks) for h in chunk]
        identifiers: set[str] = set()
        for h in headers:
            identifiers |= h.identifiers
            h.identifiers = set()
        return ScanResult(tasks + group_headers(headers, spec.max_pixels, spec.burned_in_text), identifiers)

    def read(self, task: Task, spec: SourceSpec, root: Path) -> Iterator[Volume | Rejected]:
        assert isinstance(task, DicomTask)
        yield from load_series(task, spec.modality, dict(spec.labels))
