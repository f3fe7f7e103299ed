"""DICOM pixel decode and pixel geometry: transfer syntaxes, palette colour, rescale, spacing,
and the descriptive (non-identifying) text of a dataset."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from medtrinity_assets.core.vocabulary import mr_sequence
from medtrinity_assets.ingest.readers.base import InputRejected
from medtrinity_assets.ingest.readers.dicom_headers import floats_of, functional_group


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


def rescale_of(ds: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    slope = np.ones(n, np.float64)
    inter = np.zeros(n, np.float64)
    top_s, top_i = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    for i in range(n):
        s = top_s if top_s is not None else functional_group(ds, "", "PixelValueTransformationSequence", "RescaleSlope", i)
        b = (
            top_i
            if top_i is not None
            else functional_group(ds, "", "PixelValueTransformationSequence", "RescaleIntercept", i)
        )
        try:
            slope[i] = float(s) if s not in (None, "") else 1.0
            inter[i] = float(b) if b not in (None, "") else 0.0
        except (TypeError, ValueError):
            pass
        if not np.isfinite(slope[i]) or slope[i] == 0:
            slope[i] = 1.0
    return slope, inter


def pixel_spacing(ds: Any) -> tuple[float | None, float | None]:
    """(row, column) pixel spacing in mm: top level, else PixelMeasuresSequence (shared, then
    the first frame's), else ImagerPixelSpacing."""
    ps = floats_of(ds.get("PixelSpacing") or functional_group(ds, "", "PixelMeasuresSequence", "PixelSpacing") or (), 2)
    if ps is None:
        ps = floats_of(ds.get("ImagerPixelSpacing") or (), 2)
    if ps is None or min(ps) <= 0:
        return None, None
    return ps[0], ps[1]


def declared_slice_mm(ds: Any) -> float | None:
    """SpacingBetweenSlices, else SliceThickness: top level, else PixelMeasuresSequence."""
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(attr)
        if value in (None, ""):
            value = functional_group(ds, "", "PixelMeasuresSequence", attr)
        try:
            mm = abs(float(value)) if value not in (None, "") else None
        except (TypeError, ValueError):
            mm = None
        if mm is not None and np.isfinite(mm) and mm > 0:
            return mm
    return None


def _group_key(ds: Any) -> tuple[str, str] | None:
    for kind, attr in (("patient", "PatientID"), ("study", "StudyInstanceUID")):
        value = " ".join(str(ds.get(attr, "") or "").split())
        if value:
            return kind, value
    return None


def describe(ds: Any) -> dict[str, Any]:
    """Descriptive text of a dataset (study and series description, body part) and its modality
    code. The text is raw here: ingestion scrubs every free-text field with the source's
    identifying values when it builds the record (:mod:`medtrinity_assets.ingest.records`)."""
    parts = [" ".join(str(ds.get(k, "") or "").split()) for k in ("StudyDescription", "SeriesDescription")]
    parts = [p for i, p in enumerate(parts) if p and p not in parts[:i]]
    code = str(ds.get("Modality", "") or "").strip()
    acquisition = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
    return {
        "description": " / ".join(parts),
        "body_part": " ".join(str(ds.get("BodyPartExamined", "") or "").split()),
        "modality_code": code,
        "dicom_modality": code,
        "burned_in": str(ds.get("BurnedInAnnotation", "") or "").strip().upper(),
        # what keeps a patient's images in one split: the patient, else the study (raw values:
        # they leave the worker only as keyed hashes, see IdentifierStore.group_id)
        "group_key": _group_key(ds),
        # a vocabulary name only ("T2-weighted"), never the header's free text
        "sequence": (mr_sequence(acquisition) if code == "MR" else None) or "",
    }
