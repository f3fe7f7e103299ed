"""DICOM reader: single files, multi-file series, multi-frame objects and SEG label maps.

Headers are read with ``force=False`` (a file without a DICOM preamble/header is
``not_dicom``); the pixel budget (Rows x Columns x frames) is checked from the header before
any decode, and only a full pixel decode proves a file good (a truncated file's header reads
fine). No identifying attribute leaves this module: descriptions are scrubbed, UIDs stay in
memory for grouping and SEG matching only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrinity_assets.imaging.common import FoundFile, InputRejected, Volume, scrub_text
from medtrinity_assets.imaging.identifiers import expand_person_name, matcher_for
from medtrinity_assets.registry import canonical_modality

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

#: Attributes whose values identify a patient, a clinician, a place or a study instance.
IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientNames",
        "OtherPatientIDsSequence",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "MedicalRecordLocator",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        "StationName",
        "DeviceSerialNumber",
        "RequestedProcedureID",
        "AdmissionID",
        "PerformedProcedureStepID",
        "ScheduledProcedureStepID",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "AcquisitionDateTime",
        "InstanceCreationDate",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "MediaStorageSOPInstanceUID",
        "FrameOfReferenceUID",
        "ReferencedSOPInstanceUID",
        "PatientComments",
        "AdditionalPatientHistory",
        "EthnicGroup",
        "MilitaryRank",
        "BranchOfService",
        "RegionOfResidence",
        "CountryOfResidence",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "PersonName",
        "VerifyingObserverName",
        "ContentCreatorName",
    }
)
_IDENTIFYING_VRS = {"PN", "DA", "DT"}


def dicom_identifier_values(ds: Any) -> set[str]:
    """Every identifying value of a dataset (recursing into sequences), as non-empty strings.

    Covers :data:`IDENTIFYING_KEYWORDS`, every person name (VR PN) and every date (DA/DT).
    A person name also contributes its name tokens whatever their length ("Li^Na" adds "Li"
    and "Na"; a code such as "CT1" is not a name), see
    :func:`~medtrinity_assets.imaging.identifiers.expand_person_name`.
    """
    out: set[str] = set()

    def add(value: Any, is_name: bool) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            for v in value:
                add(v, is_name)
            return
        text = str(value).strip()
        alnum = sum(ch.isalnum() for ch in text)
        if is_name and alnum >= 1:
            out.update(t for t in expand_person_name(text) if t.strip())
        elif alnum >= 2:
            out.add(text)

    def walk(d: Any) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
                continue
            if elem.keyword in IDENTIFYING_KEYWORDS or elem.VR in _IDENTIFYING_VRS:
                try:
                    add(elem.value, elem.VR == "PN")
                except Exception:  # noqa: BLE001 - a malformed value is simply skipped
                    continue

    walk(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        walk(meta)
    return out


def redact_identifying_path(relpath: str, values: Iterable[str]) -> str:
    """``relpath`` with every component that carries an identifying value replaced by a hash.

    Collections are often foldered by patient name or ID and files named by SOP Instance UID;
    such a component becomes ``~<sha1[:12]>`` (stable, so the file can still be matched by
    whoever holds the source). See :meth:`IdentifierMatcher.in_path_component`.
    """
    return matcher_for(values).redact_path(relpath)


def redact_manifest_paths(relpaths: Iterable[str], root: Path) -> dict[str, str]:
    """Map each relpath that carries an identifying value of the source to its redacted form.

    The values are gathered from every readable header among ``relpaths`` and applied to all
    of them: a non-DICOM or corrupt file in a folder named after the patient has no header of
    its own, but its path still carries the name.
    """
    rels = sorted({r for r in relpaths if r})
    values: set[str] = set()
    for rel in rels:
        try:
            ds = _read(root / rel, header_only=True)
        except (InputRejected, OSError):  # not a readable DICOM header: nothing to learn from
            continue
        values |= dicom_identifier_values(ds)
    matcher = matcher_for(values)
    out: dict[str, str] = {}
    for rel in rels:
        red = matcher.redact_path(rel)
        if red != rel:
            out[rel] = red
    return out


# --------------------------------------------------------------------------------------
# header scan (main process or pool)


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


def _read(path: str | Path, header_only: bool):
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


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _fg(ds: Any, seq: str, inner: str, attr: str, frame: int | None = None) -> Any:
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


def _orientation(ds: Any, frame: int | None = None) -> tuple[float, ...] | None:
    """ImageOrientationPatient: top level, else functional groups (see :func:`_fg`)."""
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    if iop is None:
        iop = _floats(_fg(ds, "", "PlaneOrientationSequence", "ImageOrientationPatient", frame) or (), 6)
    return iop


def _position(ds: Any, frame: int | None = None) -> tuple[float, ...] | None:
    """ImagePositionPatient: top level, else functional groups (see :func:`_fg`)."""
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    if ipp is None:
        ipp = _floats(_fg(ds, "", "PlanePositionSequence", "ImagePositionPatient", frame) or (), 3)
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
        ds = _read(path, header_only=True)
        h.sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        h.series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        h.is_seg = str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"
        h.rows, h.cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        try:
            h.frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            h.frames = 1
        if not h.rows or not h.cols:
            raise InputRejected("undecodable", "no image pixel data (not an image object)")
        if h.rows * h.cols * h.frames > max_pixels:
            raise InputRejected("too_many_pixels", f"{h.rows}x{h.cols}x{h.frames} > max_pixels {max_pixels}")
        h.iop = _orientation(ds)
        h.ipp = _position(ds)  # type: ignore[assignment]
        try:
            h.instance_number = int(ds.get("InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            h.instance_number = 0
        if h.is_seg:
            h.seg_refs = _seg_references(ds)
    except InputRejected as exc:
        h.reason = exc.reason
    return h


@dataclass
class DicomTask:
    """One unit of decode work: a single file, or a series of single-frame files, plus SEGs."""

    files: list[tuple[str, str, str]]  # (relpath, path, sop_uid) sorted along the normal
    segs: list[tuple[str, str]] = field(default_factory=list)
    positions: list[tuple[float, float, float] | None] = field(default_factory=list)

    @property
    def relpath(self) -> str:
        return self.files[0][0]


#: A series step larger than this multiple of its smallest step counts as a gap.
SERIES_GAP_FACTOR = 1.5


def group_headers(
    headers: list[DicomHeader], max_pixels: int
) -> tuple[list[DicomTask], list[tuple[str, str]]]:
    """Group scanned headers into tasks; returns ``(tasks, rejected (relpath, reason))``."""
    rejected: list[tuple[str, str]] = []
    images = [h for h in headers if h.reason is None and not h.is_seg]
    segs = [h for h in headers if h.reason is None and h.is_seg]
    rejected += [(h.relpath, h.reason) for h in headers if h.reason is not None]

    groups: dict[tuple, list[DicomHeader]] = {}
    singles: list[list[DicomHeader]] = []
    for h in images:
        if h.frames == 1 and h.series_uid and h.iop is not None and h.ipp is not None:
            key = (h.series_uid, h.rows, h.cols, tuple(round(v, 3) for v in h.iop))
            groups.setdefault(key, []).append(h)
        else:
            singles.append([h])
    members: list[list[DicomHeader]] = list(singles)
    for group in groups.values():
        if len(group) == 1:
            members.append(group)
            continue
        iop = np.asarray(group[0].iop)
        normal = np.cross(iop[:3], iop[3:])
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

    tasks: list[DicomTask] = []
    for m in members:
        total = sum(h.rows * h.cols * h.frames for h in m)
        if total > max_pixels:
            rejected.append(
                (m[0].relpath, f"too_many_pixels: series of {len(m)} files > max_pixels {max_pixels}")
            )
            continue
        tasks.append(DicomTask([(h.relpath, h.path, h.sop_uid) for h in m], positions=[h.ipp for h in m]))

    by_uid = {uid: i for i, t in enumerate(tasks) for (_, _, uid) in t.files if uid}
    for s in segs:
        hits: dict[int, int] = {}
        for uid in s.seg_refs:
            if uid in by_uid:
                hits[by_uid[uid]] = hits.get(by_uid[uid], 0) + 1
        if not hits:
            rejected.append((s.relpath, "seg_without_source: the images it segments are not in the source"))
            continue
        best = sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        tasks[best].segs.append((s.relpath, s.path))
    tasks.sort(key=lambda t: t.relpath)
    return tasks, rejected


# --------------------------------------------------------------------------------------
# decode (worker)


def _check_syntax(ds: Any) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise InputRejected("unsupported_transfer_syntax", f"{ts} ({getattr(ts, 'name', '')})") from None
    if not decoder.is_available:
        raise InputRejected("unsupported_transfer_syntax", f"{ts}: no decoder plugin installed")


def decode_pixels(ds: Any) -> np.ndarray:
    """Full pixel decode as ``(frames, rows, cols[, 3])``; raises InputRejected on failure."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputRejected("truncated", "pixel data element missing")
    _check_syntax(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = ds.pixel_array
        except (ValueError, EOFError) as exc:
            msg = str(exc).lower()
            if "less than expected" in msg or "end of" in msg or "insufficient" in msg or "truncat" in msg:
                raise InputRejected("truncated", "fewer pixel bytes than the header declares") from None
            raise InputRejected("undecodable", f"{type(exc).__name__} while decoding pixels") from None
        except NotImplementedError:
            raise InputRejected("unsupported_transfer_syntax", "no decoder for this encoding") from None
        except Exception as exc:  # noqa: BLE001 - decoder plugins raise anything
            raise InputRejected("undecodable", f"{type(exc).__name__} while decoding pixels") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        arr = _palette_to_rgb(arr, ds)
        samples = 3
    if frames == 1:
        arr = arr[None]
    if samples == 1 and arr.ndim == 4:
        arr = arr[..., 0]
    if samples not in (1, 3) or arr.ndim not in (3, 4):
        raise InputRejected("undecodable", f"unsupported pixel layout {samples} samples")
    return arr


def _palette_to_rgb(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR pixels are indices into the file's red/green/blue lookup tables: the image is
    what the tables give (8-bit RGB; 16-bit table entries keep their top byte), never the indices."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:  # noqa: BLE001 - malformed or missing tables
        raise InputRejected("undecodable", f"palette colour lookup tables unusable ({type(exc).__name__})") from None
    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else np.clip(rgb, 0, 255).astype(np.uint8)
    return rgb


def _rescale(ds: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    slope = np.ones(n, np.float64)
    inter = np.zeros(n, np.float64)
    top_s, top_i = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    for i in range(n):
        s = top_s if top_s is not None else _fg(ds, "", "PixelValueTransformationSequence", "RescaleSlope", i)
        b = (
            top_i
            if top_i is not None
            else _fg(ds, "", "PixelValueTransformationSequence", "RescaleIntercept", i)
        )
        try:
            slope[i] = float(s) if s not in (None, "") else 1.0
            inter[i] = float(b) if b not in (None, "") else 0.0
        except (TypeError, ValueError):
            pass
        if not np.isfinite(slope[i]) or slope[i] == 0:
            slope[i] = 1.0
    return slope, inter


def _spacing(ds: Any) -> tuple[float | None, float | None]:
    """(row, column) pixel spacing in mm: top level, else PixelMeasuresSequence (shared, then
    the first frame's), else ImagerPixelSpacing."""
    ps = _floats(ds.get("PixelSpacing") or _fg(ds, "", "PixelMeasuresSequence", "PixelSpacing") or (), 2)
    if ps is None:
        ps = _floats(ds.get("ImagerPixelSpacing") or (), 2)
    if ps is None or min(ps) <= 0:
        return None, None
    return ps[0], ps[1]


def _declared_slice_mm(ds: Any) -> float | None:
    """SpacingBetweenSlices, else SliceThickness: top level, else PixelMeasuresSequence."""
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(attr)
        if value in (None, ""):
            value = _fg(ds, "", "PixelMeasuresSequence", attr)
        try:
            mm = abs(float(value)) if value not in (None, "") else None
        except (TypeError, ValueError):
            mm = None
        if mm is not None and np.isfinite(mm) and mm > 0:
            return mm
    return None


def describe(ds: Any) -> dict[str, str]:
    """Non-identifying descriptive text (scrubbed) and the canonical modality of a dataset."""
    ids = matcher_for(dicom_identifier_values(ds))  # compiled once for the three fields
    parts = [scrub_text(str(ds.get(k, "") or ""), ids) for k in ("StudyDescription", "SeriesDescription")]
    parts = [p for i, p in enumerate(parts) if p and p not in parts[:i]]
    return {
        "description": " / ".join(parts),
        "body_part": scrub_text(str(ds.get("BodyPartExamined", "") or ""), ids).lower(),
        "modality_code": str(ds.get("Modality", "") or "").strip(),
    }


def _modality(code: str, fallback: str) -> str:
    canon = canonical_modality(code) if code else ""
    known = {"ct", "mri", "x-ray", "ultrasound", "nuclear medicine", "pet"}
    return canon if canon in known else canonical_modality(fallback)


def load_task(task: DicomTask, spec_modality: str, label_names: dict[int, str], keeps_colour: bool) -> Volume:
    """Decode one task into a Volume (series stacked along the slice normal, SEG masks aligned)."""
    rejections: list[tuple[str, str]] = []
    arrays: list[np.ndarray] = []
    slopes: list[np.ndarray] = []
    inters: list[np.ndarray] = []
    kept_files: list[tuple[str, str, str]] = []
    first = None
    for relpath, path, uid in task.files:
        try:
            ds = _read(path, header_only=False)
            arr = decode_pixels(ds)
        except InputRejected as exc:
            if len(task.files) == 1:
                raise
            rejections.append((relpath, exc.reason))
            continue
        if first is None:
            first = ds
        elif arr.shape[1:] != arrays[0].shape[1:]:
            rejections.append((relpath, "undecodable: slice shape differs from its series"))
            continue
        s, b = _rescale(ds, arr.shape[0])
        arrays.append(arr)
        slopes.append(s)
        inters.append(b)
        kept_files.append((relpath, path, uid))
        if len(task.files) == 1:
            break
    if first is None:
        raise InputRejected("undecodable", "no decodable file in the series")
    data = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    del arrays
    meta = describe(first)
    modality = _modality(meta.pop("modality_code"), spec_modality)
    # MONOCHROME1: the lowest value is displayed white (common for CR/DX)
    meta["invert"] = (
        data.ndim == 3 and str(first.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    )
    n = data.shape[0]
    row_mm, col_mm = _spacing(first)
    iop = _orientation(first)
    axes = None
    kind = "image" if n == 1 else "frames"
    slice_mm = None
    series_gap = False
    order = np.arange(n)
    if iop is not None:
        r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
        normal = np.cross(r, c)
        axes = np.stack([normal, c, r])
        if len(kept_files) > 1:
            kind = "volume"
        elif n > 1:
            # Enhanced objects: one position per frame (per-frame groups); frames whose planes
            # differ (a localizer) are not one volume.
            positions = [
                _floats(_fg(first, "", "PlanePositionSequence", "ImagePositionPatient", i) or (), 3)
                for i in range(n)
            ]
            same_plane = all(
                (o := _orientation(first, i)) is not None and np.allclose(o, iop, atol=1e-3) for i in range(n)
            )
            if same_plane and all(p is not None for p in positions):
                proj = np.array([float(np.dot(normal, p)) for p in positions])
                order = np.argsort(proj, kind="stable")
                if len(np.unique(np.round(proj, 3))) == n:
                    kind = "volume"
                    d = np.diff(proj[order])
                    slice_mm = float(np.median(np.abs(d))) if len(d) else None
            if kind != "volume":
                axes = None
    if kind == "volume" and len(kept_files) > 1:
        # files were sorted along the normal by the grouping; recover spacing from the headers
        pos_of = dict(
            zip([f[0] for f in task.files], task.positions or [None] * len(task.files), strict=True)
        )
        projs = []
        for relpath, _, _ in kept_files:
            ipp = pos_of.get(relpath)
            projs.append(float(np.dot(axes[0], ipp)) if ipp is not None else np.nan)
        d = np.diff(np.asarray(projs))
        slice_mm = float(np.nanmedian(np.abs(d))) if len(d) and np.any(np.isfinite(d)) else None
        steps = np.abs(d[np.isfinite(d)])
        steps = steps[steps > 1e-6]
        if len(steps) > 1 and steps.max() > SERIES_GAP_FACTOR * steps.min():
            # missing slices (a file absent or set aside): the volume is kept, its gap counted
            series_gap = True
    if slice_mm is None and kind == "volume":
        slice_mm = _declared_slice_mm(first)
    if not np.array_equal(order, np.arange(n)):
        data = data[order]
    slope = np.concatenate(slopes)[order]
    inter = np.concatenate(inters)[order]

    mask = None
    names = dict(label_names)
    if task.segs:
        mask, seg_names = _seg_mask(task, kept_files, data.shape[1:3], first, order)
        for k, v in seg_names.items():
            names.setdefault(k, v)
    if mask is None and names and len(kept_files) == 1 and n == 1:
        mask = _overlay_mask(first, data.shape[1:3], min(names))
    return Volume(
        relpath=task.relpath,
        data=data,
        modality=modality,
        kind=kind,
        slope=slope,
        intercept=inter,
        mask=mask,
        axes_lps=axes if kind != "frames" else None,
        spacing=(slice_mm, row_mm, col_mm),
        native_axis=0,
        reorient=False,
        slice_relpaths=[f[0] for f in kept_files] if len(kept_files) > 1 else None,
        label_names=names,
        projection_xray=(iop is None and modality == "x-ray"),
        patient_orientation=patient_orientation(first) if iop is None else None,
        colour=data.ndim == 4,
        meta=meta,
        extra_rejections=rejections,
        warnings=["series_gap"] if series_gap else [],
    )


def _seg_mask(
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
        seg = _read(path, header_only=False)
        ids = matcher_for(dicom_identifier_values(seg))  # compiled once for all segments
        for item in seg.get("SegmentSequence", []) or []:
            num = int(item.get("SegmentNumber", 0) or 0)
            label = scrub_text(str(item.get("SegmentLabel", "") or ""), ids)
            if num > 0 and label:
                names[num] = label.lower()
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


def list_dicom(files: list[FoundFile]) -> list[FoundFile]:
    return [f for f in files if f.path is None or not f.relpath.upper().endswith("DICOMDIR")]


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


def _overlay_mask(ds: Any, shape: tuple[int, int], value: int) -> np.ndarray | None:
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
