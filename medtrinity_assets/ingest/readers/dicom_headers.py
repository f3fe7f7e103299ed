"""DICOM header scan: cheap header reads (in worker processes), grouping files into series tasks,
matching SEG objects to the images they segment, and the identifying values of every header."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrinity_assets.ingest.burned_in import TEXT_MODALITY_CODES
from medtrinity_assets.ingest.readers.base import InputRejected, Rejected, Task, describe_error, os_reason
from medtrinity_assets.ingest.readers.files import FoundFile
from medtrinity_assets.privacy.dicom import dicom_identifier_values

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class DicomHeader:
    relpath: str
    path: str
    reason: str | None = None
    series_uid: str = ""
    sop_uid: str = ""
    is_seg: bool = False
    rows: int = 0
    cols: int = 0
    frames: int = 1
    iop: tuple[float, ...] | None = None
    ipp: tuple[float, float, float] | None = None
    instance_number: int = 0
    seg_refs: list[str] = field(default_factory=list)
    size: int = 0  # bytes on disk: of two copies of one instance, the larger is the complete one
    text_likely: bool = False  # its modality or header says the pixels often carry burned-in text
    #: identifying values of the header (names, IDs, dates, UIDs): in memory only, for redaction
    identifiers: set[str] = field(default_factory=set)


def read_dataset(path: str | Path, header_only: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(str(path), force=False, stop_before_pixels=header_only)
        except InvalidDicomError:
            raise InputRejected("not_dicom", "no DICOM preamble or file meta header") from None
        except (EOFError, OSError, ValueError, KeyError, TypeError, _struct_error()) as exc:
            raise InputRejected("truncated", f"header unreadable ({type(exc).__name__})") from None
    for w in caught:
        if "end of file" in str(w.message).lower() or "truncat" in str(w.message).lower():
            raise InputRejected("truncated", "file ends before the end of its data")
    return ds


def _struct_error():
    import struct

    return struct.error


def floats_of(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def functional_group(ds: Any, seq: str, inner: str, attr: str, frame: int | None = None) -> Any:
    """An attribute from the functional groups of an enhanced (multi-frame) object.

    With ``frame``: that frame's per-frame group, then the shared group. Without: the shared
    group, then the first frame's per-frame group (Enhanced CT/MR often keep orientation and
    pixel measures per frame only, even when every frame has the same values).
    """
    shared = []
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        shared.append(ds.SharedFunctionalGroupsSequence[0])
    per_frame = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        pf = ds.PerFrameFunctionalGroupsSequence
        i = 0 if frame is None else frame
        if 0 <= i < len(pf):
            per_frame.append(pf[i])
    groups = shared + per_frame if frame is None else per_frame + shared
    for g in groups:
        if inner in g and len(g[inner].value):
            item = g[inner].value[0]
            if attr in item:
                return item[attr].value
    return None


def image_orientation(ds: Any, frame: int | None = None) -> tuple[float, ...] | None:
    """ImageOrientationPatient: top level, else functional groups (see :func:`functional_group`)."""
    iop = floats_of(ds.get("ImageOrientationPatient"), 6)
    if iop is None:
        iop = floats_of(functional_group(ds, "", "PlaneOrientationSequence", "ImageOrientationPatient", frame) or (), 6)
    return iop


def image_position(ds: Any, frame: int | None = None) -> tuple[float, ...] | None:
    """ImagePositionPatient: top level, else functional groups (see :func:`functional_group`)."""
    ipp = floats_of(ds.get("ImagePositionPatient"), 3)
    if ipp is None:
        ipp = floats_of(functional_group(ds, "", "PlanePositionSequence", "ImagePositionPatient", frame) or (), 3)
    return ipp


_PO_LETTERS = {"L": "L", "R": "R", "A": "A", "P": "P", "H": "S", "F": "I"}


def patient_orientation(ds: Any) -> tuple[str, str] | None:
    """PatientOrientation (0020,0020) as our direction letters for +column and +row.

    Projection radiographs carry it instead of ImageOrientationPatient (e.g. ``R\\F``: image
    right points to the patient's right, image down to the feet). A compound value (``AR``)
    is reduced to its first, dominant letter; anything else unreadable gives None.
    """
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    out = []
    for v in value:
        letter = _PO_LETTERS.get(str(v).strip().upper()[:1])
        if letter is None:
            return None
        out.append(letter)
    return out[0], out[1]


def _seg_references(ds: Any) -> list[str]:
    refs: list[str] = []
    for item in ds.get("PerFrameFunctionalGroupsSequence", []) or []:
        for der in item.get("DerivationImageSequence", []) or []:
            for src in der.get("SourceImageSequence", []) or []:
                uid = src.get("ReferencedSOPInstanceUID")
                if uid:
                    refs.append(str(uid))
    for ser in ds.get("ReferencedSeriesSequence", []) or []:
        for inst in ser.get("ReferencedInstanceSequence", []) or []:
            uid = inst.get("ReferencedSOPInstanceUID")
            if uid:
                refs.append(str(uid))
    return refs


def scan_header(relpath: str, path: str, max_pixels: int) -> DicomHeader:
    """Cheap header read for grouping; bad files come back with ``reason`` set."""
    h = DicomHeader(relpath, path)
    try:
        h.size = os.path.getsize(path)
        ds = read_dataset(path, header_only=True)
        h.identifiers = dicom_identifier_values(ds)
        h.sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        h.series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        h.is_seg = str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"
        h.text_likely = (str(ds.get("Modality", "") or "").upper() in TEXT_MODALITY_CODES
                         or str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES")
        h.rows, h.cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        try:
            h.frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            h.frames = 1
        if not h.rows or not h.cols:
            raise InputRejected("undecodable", "no image pixel data (not an image object)")
        if h.rows * h.cols * h.frames > max_pixels:
            raise InputRejected("too_many_pixels", f"{h.rows}x{h.cols}x{h.frames} > max_pixels {max_pixels}")
        h.iop = image_orientation(ds)
        h.ipp = image_position(ds)  # type: ignore[assignment]
        try:
            h.instance_number = int(ds.get("InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            h.instance_number = 0
        if h.is_seg:
            h.seg_refs = _seg_references(ds)
    except InputRejected as exc:
        h.reason = exc.reason
    except OSError as exc:  # vanished or unreadable since the listing: this file only
        h.reason = os_reason(exc)
    except Exception as exc:  # noqa: BLE001 - a malformed header fails alone
        h.reason = f"undecodable: {describe_error(exc)}"
    return h


@dataclass
class DicomTask(Task):
    """One unit of decode work: a single file, or a series of single-frame files, plus SEGs."""

    files: list[tuple[str, str, str]] = field(default_factory=list)  # (relpath, path, sop_uid) along the normal
    segs: list[tuple[str, str]] = field(default_factory=list)
    positions: list[tuple[float, float, float] | None] = field(default_factory=list)
    pixels: int = 0  # rows x columns x frames of its files, from their headers
    text_likely: bool = False  # its pixels are likely scanned for burned-in text (OCR)

    @property
    def cost(self) -> float:
        """Pixels to decode, many times more when they are likely read by OCR (an ultrasound frame's
        text scan takes about fifty times its decode, resize and write)."""
        return float(self.pixels) * (OCR_COST_FACTOR if self.text_likely else 1.0)


#: how many times a task's plain pixel work its burned-in text scan costs (its work-order weight)
OCR_COST_FACTOR = 32.0


#: A series step larger than this multiple of its smallest step counts as a gap.
SERIES_GAP_FACTOR = 1.5


def _series_members(images: list[DicomHeader]) -> list[list[DicomHeader]]:
    """Single files and series: single-frame files of one series, size and orientation, sorted
    along the slice normal, one file per position (see :func:`group_headers`)."""
    groups: dict[tuple, list[DicomHeader]] = {}
    members: list[list[DicomHeader]] = []
    for h in images:
        if h.frames == 1 and h.series_uid and h.iop is not None and h.ipp is not None:
            key = (h.series_uid, h.rows, h.cols, tuple(round(v, 3) for v in h.iop))
            groups.setdefault(key, []).append(h)
        else:
            members.append([h])
    for group in groups.values():
        if len(group) == 1:
            members.append(group)
            continue
        normal = np.cross(np.asarray(group[0].iop[:3]), np.asarray(group[0].iop[3:]))
        pos = [float(np.dot(normal, h.ipp)) for h in group]  # type: ignore[arg-type]
        order = sorted(
            range(len(group)),
            key=lambda i: (pos[i], group[i].instance_number, -group[i].size, group[i].relpath),
        )
        # Distinct positions only; repeated positions (several acquisitions, or a second copy of
        # one instance) become single images. Of files at one position the larger joins the
        # series, so a truncated copy never displaces a complete one (and is quarantined alone).
        seen: set[float] = set()
        series: list[DicomHeader] = []
        for i in order:
            key = round(pos[i], 3)
            if key in seen:
                members.append([group[i]])
            else:
                seen.add(key)
                series.append(group[i])
        members.append(series)
    return members


def _attach_segs(tasks: list[DicomTask], segs: list[DicomHeader]) -> list[Task]:
    """Give each SEG to the task holding most of the images it references; the others are
    rejected (``seg_without_source``)."""
    rejected: list[Task] = []
    by_uid = {uid: i for i, t in enumerate(tasks) for (_, _, uid) in t.files if uid}
    for s in segs:
        hits: dict[int, int] = {}
        for uid in s.seg_refs:
            if uid in by_uid:
                hits[by_uid[uid]] = hits.get(by_uid[uid], 0) + 1
        if not hits:
            why = "seg_without_source: the images it segments are not in the source"
            rejected.append(Rejected(s.relpath, reason=why))
            continue
        best = sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        tasks[best].segs.append((s.relpath, s.path))
    return rejected


def group_headers(headers: list[DicomHeader], max_pixels: int, burned_in_text: str = "auto") -> list[Task]:
    """Group scanned headers into tasks: a task per single file or series (SEGs attached to the
    images they segment), and a :class:`Rejected` per unreadable file or oversized series.
    ``burned_in_text``: the source's policy (``auto``, ``scan``, ``none``), which decides whether a
    task's pixels will be read by OCR and so what it costs (:attr:`DicomTask.cost`)."""
    out: list[Task] = [Rejected(h.relpath, reason=h.reason) for h in headers if h.reason is not None]
    images = [h for h in headers if h.reason is None and not h.is_seg]
    segs = [h for h in headers if h.reason is None and h.is_seg]
    tasks: list[DicomTask] = []
    for m in _series_members(images):
        if sum(h.rows * h.cols * h.frames for h in m) > max_pixels:
            why = f"too_many_pixels: series of {len(m)} files > max_pixels {max_pixels}"
            out.append(Rejected(m[0].relpath, reason=why))
            continue
        files = [(h.relpath, h.path, h.sop_uid) for h in m]
        tasks.append(DicomTask(m[0].relpath, files=files, positions=[h.ipp for h in m],
                               pixels=sum(h.rows * h.cols * h.frames for h in m),
                               text_likely=_scanned(burned_in_text, any(h.text_likely for h in m))))
    out += _attach_segs(tasks, segs)
    tasks.sort(key=lambda t: t.relpath)
    return [*tasks, *out]


def _scanned(policy: str, text_likely: bool) -> bool:
    """Whether a task's pixels will be scanned for text under the source's policy (as
    :func:`~medtrinity_assets.ingest.burned_in.needs_scan` decides per image)."""
    return policy == "scan" or (policy != "none" and text_likely)


def is_dicomdir(relpath: str) -> bool:
    """Whether a file is a DICOMDIR index (not an image; skipped unless it cannot be looked at)."""
    return relpath.upper().endswith("DICOMDIR")


def list_dicom(files: list[FoundFile]) -> list[FoundFile]:
    return [f for f in files if f.path is None or not is_dicomdir(f.relpath)]
