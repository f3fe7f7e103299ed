"""Shared pieces of the imaging readers: errors, safe paths, safe 2D decode, orientation letters.

Nothing here imports Dagster. Every reader turns one *task* (a file, a DICOM series, a NIfTI
volume, a CSV row) into a :class:`Volume`, or raises :class:`InputRejected` whose ``reason`` is a
machine-readable ``<prefix>: <detail>`` string that becomes one quarantined manifest row.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrinity_assets.imaging.identifiers import IdentifierMatcher, matcher_for

#: Reason prefixes of quarantined rows (the text before the first ``:``).
REASONS = (
    "truncated",
    "not_dicom",
    "unsupported_transfer_syntax",
    "seg_without_source",
    "mask_shape_mismatch",
    "constant_volume",
    "nan_volume",
    "too_many_pixels",
    "path_escapes_root",
    "bad_csv_row",
    "undecodable",
    "lossy_mask",
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PIL_FORMATS = ("PNG", "JPEG", "TIFF")


class SourceRootMissing(FileNotFoundError):
    """The root folder of a source does not exist."""

    def __init__(self, name: str, root: str | Path):
        self.message = f"source '{name}': root {root} does not exist or is not a folder"
        super().__init__(self.message)
        self.filename = str(root)

    def __str__(self) -> str:  # OSError would print "[Errno None] None: <filename>" instead
        return self.message


class InputRejected(Exception):
    """One input (file, series, row) is bad; ``reason`` is ``<prefix>: <detail>``."""

    def __init__(self, prefix: str, detail: str = ""):
        if prefix not in REASONS:
            raise ValueError(f"unknown reason prefix {prefix!r}")
        self.prefix = prefix
        self.detail = scrub_text(detail)[:200]
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return f"{self.prefix}: {self.detail}" if self.detail else f"{self.prefix}:"


# --------------------------------------------------------------------------------------
# PHI scrub of free text

_DATE_RES = (
    re.compile(r"\b\d{4}[-./]\d{1,2}[-./]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[-./]\d{1,2}[-./]\d{2,4}\b"),
    re.compile(r"\b(?:19|20)\d{6}\b"),
    re.compile(
        r"\b\d{1,2}[ -]?(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?[ -]?\d{2,4}\b", re.I
    ),
)
_LONG_DIGITS = re.compile(r"\d{5,}")
_PERSON_NAME = re.compile(r"[^\s,;]*\^[^\s,;]*")


def scrub_text(text: str | None, identifiers: Iterable[str] | IdentifierMatcher = ()) -> str:
    """Remove what looks like a date, a long digit run, a DICOM person name or a known identifier.

    ``identifiers`` are matched as whole words in any order and case (a name "Li^Na" also
    removes "Na Li"), see :mod:`medtrinity_assets.imaging.identifiers`.
    """
    if not text:
        return ""
    matcher = identifiers if isinstance(identifiers, IdentifierMatcher) else matcher_for(identifiers)
    out = matcher.sub(str(text))
    out = _PERSON_NAME.sub(" ", out)
    for rx in _DATE_RES:
        out = rx.sub(" ", out)
    out = _LONG_DIGITS.sub(" ", out)
    out = re.sub(r"[\x00-\x1f]", " ", out)
    return re.sub(r"\s+", " ", out).strip(" ,;:-_")


# --------------------------------------------------------------------------------------
# paths


def check_root(name: str, root: str) -> Path:
    if "://" in root:
        raise NotImplementedError(
            f"source '{name}': remote roots ({root}) are not read by the imaging stage yet"
        )
    path = Path(root)
    if not path.is_dir():
        raise SourceRootMissing(name, root)
    return path.resolve()


def resolve_inside(root: Path, relpath: str) -> Path:
    """Absolute path of ``relpath`` under ``root``; raises ``path_escapes_root`` when it leaves it."""
    rel = relpath.replace("\\", "/").strip()
    if not rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise InputRejected("path_escapes_root", "absolute or empty path")
    candidate = root / rel
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:
        raise InputRejected("path_escapes_root", f"cannot resolve: {type(exc).__name__}") from None
    if resolved != root and root not in resolved.parents:
        raise InputRejected("path_escapes_root", "resolves outside the source root")
    return resolved


def _matches(relpath: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(relpath, p) or Path(relpath).match(p) for p in patterns)


@dataclass
class FoundFile:
    relpath: str
    path: Path | None
    reason: str | None = None


def list_files(
    root: Path, include: Sequence[str] = (), under: str = "", suffixes: Sequence[str] | None = None
) -> list[FoundFile]:
    """Files under ``root/under`` (sorted, hidden ones skipped), honouring ``include`` globs.

    Symlinks whose target leaves the root are returned with a ``path_escapes_root`` reason;
    directory symlinks are not followed.
    """
    base = root / under if under else root
    if not base.is_dir():
        return []
    found: list[FoundFile] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            full = Path(dirpath) / fname
            rel = full.relative_to(root).as_posix()
            if suffixes is not None and not fname.lower().endswith(tuple(suffixes)):
                continue
            if include and not _matches(rel, include):
                continue
            try:
                found.append(FoundFile(rel, resolve_inside(root, rel)))
            except InputRejected as exc:
                found.append(FoundFile(rel, None, exc.reason))
    found.sort(key=lambda f: f.relpath)
    return found


# --------------------------------------------------------------------------------------
# the unit handed to preprocessing


@dataclass
class Volume:
    """Pixels of one input, as ``(n, rows, cols)`` or ``(n, rows, cols, 3)`` in the stored dtype.

    ``slope``/``intercept`` (per native slice) map stored values to physical ones (HU for CT).
    ``axes_lps`` rows are the patient-space (DICOM LPS) unit directions of array axes 0, 1, 2
    (None when unknown); ``spacing`` the mm per step along each axis (None entries unknown).
    ``kind``: ``image`` (one 2D image), ``volume`` (spatial stack) or ``frames`` (non-spatial).
    """

    relpath: str
    data: np.ndarray
    modality: str
    kind: str = "image"
    slope: np.ndarray | None = None
    intercept: np.ndarray | None = None
    mask: np.ndarray | None = None
    axes_lps: np.ndarray | None = None
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    native_axis: int = 0
    reorient: bool = False
    slice_relpaths: list[str] | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    #: non-fatal findings (codes such as ``series_gap``), counted in the asset metadata
    warnings: list[str] = field(default_factory=list)
    projection_xray: bool = False
    # Patient directions of +column and +row from DICOM PatientOrientation (projection images).
    patient_orientation: tuple[str, str] | None = None
    colour: bool = False
    frame_key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    boxes: list[list[float]] = field(default_factory=list)
    box_labels: list[str] = field(default_factory=list)
    extra_rejections: list[tuple[str, str]] = field(default_factory=list)


def direction_letter(vec: Sequence[float] | np.ndarray) -> str | None:
    """Patient direction letter (DICOM LPS) that a unit vector mostly points to."""
    v = np.asarray(vec, dtype=float)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or not np.any(v):
        return None
    k = int(np.argmax(np.abs(v)))
    return ("L", "P", "S")[k] if v[k] > 0 else ("R", "A", "I")[k]


# --------------------------------------------------------------------------------------
# safe 2D decode with PIL


def _open_checked(path: Path, max_pixels: int, formats: Sequence[str]):
    """Open and fully load a PNG/JPEG/TIFF (format whitelist, pixel limit checked before decoding).

    Returns the loaded PIL image; the caller closes it (``with``).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path, formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise InputRejected("too_many_pixels", str(exc)[:120]) from None
    except UnidentifiedImageError:
        raise InputRejected("undecodable", f"not a {'/'.join(formats)} image") from None
    except OSError as exc:
        raise InputRejected("undecodable", type(exc).__name__) from None
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise InputRejected("too_many_pixels", f"{w}x{h} > max_pixels {max_pixels}")
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise InputRejected("too_many_pixels", str(exc)[:120]) from None
        except (OSError, ValueError, SyntaxError) as exc:
            msg = str(exc).lower()
            prefix = "truncated" if "truncated" in msg or "broken" in msg else "undecodable"
            raise InputRejected(prefix, f"{type(exc).__name__}: {msg[:80]}") from None
        # Camera JPEGs (dermoscopy, endoscopy photos) are often stored sideways with an EXIF
        # Orientation tag that every viewer applies: apply it too, to images and masks alike.
        if im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
            from PIL import ImageOps

            upright = ImageOps.exif_transpose(im)
            im.close()
            im = upright
    except BaseException:
        im.close()
        raise
    return im


_EXIF_ORIENTATION = 0x0112


def _pil_array(im) -> np.ndarray:
    """Pixels of a loaded PIL image: grey modes as they are, everything else as RGB uint8."""
    mode = im.mode
    if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im)
        if mode == "I":
            arr = arr.astype(np.float32)
    elif mode in ("1", "LA"):
        arr = np.asarray(im.convert("L"))
    else:
        arr = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(arr)


def read_pil(path: Path, max_pixels: int, formats: Sequence[str] = PIL_FORMATS) -> np.ndarray:
    """Decode a PNG/JPEG/TIFF safely: format whitelist, pixel limit checked before decoding.

    Returns ``(h, w)`` (grey, uint8/uint16/float32) or ``(h, w, 3)`` uint8 (palette images are
    expanded to their colours: use :func:`read_label_image` for masks).
    """
    with _open_checked(path, max_pixels, formats) as im:
        return _pil_array(im)


def _is_lossy(im) -> bool:
    """Whether a loaded PIL image was stored with lossy compression (JPEG, or JPEG-in-TIFF)."""
    fmt = (im.format or "").upper()
    if fmt in ("JPEG", "MPO"):
        return True
    return fmt == "TIFF" and str(im.info.get("compression", "")).lower() in ("jpeg", "tiff_jpeg")


#: A lossy mask is near-binary when at most this fraction of its pixels is uncertain ...
LOSSY_MASK_MAX_UNCERTAIN = 0.10
#: ... and at most this fraction of them forms plateaus (a 3x3 block all uncertain).
LOSSY_MASK_MAX_PLATEAU = 1e-4


def _binarise_lossy(arr: np.ndarray) -> np.ndarray:
    """0/1 label map of a mask decoded from a lossy format, or ``lossy_mask`` when it is not
    near-binary.

    Compression noise turns a 0/max mask into dozens of values clustered near 0 and near the
    maximum, so it is thresholded at the midpoint. A pixel is *uncertain* when its value lies in
    the middle band (between 1/4 and 3/4 of the maximum) or its colour channels disagree by more
    than 1/4 of the maximum (a colour-coded mask). Ringing at the edges of a binary mask is thin;
    a region of a third label (or of another colour) is a plateau: a 3x3 block that is all
    uncertain. Too many uncertain pixels, or plateaus, mean a multi-label mask whose labels the
    compression has mixed up: it is rejected rather than guessed.
    """
    from scipy import ndimage

    grey = arr.max(axis=2) if arr.ndim == 3 else arr
    grey = np.nan_to_num(grey).astype(np.float64, copy=False)
    hi = float(grey.max(initial=0))
    if hi <= 0:
        return np.zeros(grey.shape, np.int64)
    tol = hi / 4
    uncertain = (grey > tol) & (grey < hi - tol)
    if arr.ndim == 3:
        spread = arr.max(axis=2).astype(np.float64) - arr.min(axis=2).astype(np.float64)
        uncertain |= spread > tol
    n = uncertain.size
    n_uncertain = int(np.count_nonzero(uncertain))
    n_plateau = int(np.count_nonzero(ndimage.binary_erosion(uncertain, np.ones((3, 3), bool))))
    if n_uncertain > LOSSY_MASK_MAX_UNCERTAIN * n or n_plateau > LOSSY_MASK_MAX_PLATEAU * n:
        raise InputRejected(
            "lossy_mask",
            f"a mask stored with lossy (JPEG) compression is not near-binary ({n_uncertain} of {n} "
            "pixels between levels or coloured): its labels cannot be trusted; store it as PNG",
        )
    return (grey > hi / 2).astype(np.int64)


def read_label_image(path: Path, max_pixels: int, formats: Sequence[str] = PIL_FORMATS) -> np.ndarray:
    """A mask image as an integer label map; a 0/255 binary mask becomes 0/1.

    Palette (``P``) images give their palette indices (the labels, not the colours). Masks from
    lossy formats (JPEG) are thresholded at the midpoint to 0/1 when near-binary, otherwise
    rejected with ``lossy_mask`` (see :func:`_binarise_lossy`).
    """
    with _open_checked(path, max_pixels, formats) as im:
        if im.mode in ("P", "PA"):
            idx = np.asarray(im)
            if idx.ndim == 3:  # PA: index and alpha
                idx = idx[..., 0]
            return np.ascontiguousarray(idx).astype(np.int64)
        lossy = _is_lossy(im)
        arr = _pil_array(im)
    if lossy:
        return _binarise_lossy(arr)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr).astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    values = np.unique(arr)
    if len(values) <= 2 and values.max(initial=0) in (255, 65535):
        arr = (arr > 0).astype(np.int64)
    return arr


# --------------------------------------------------------------------------------------
# layout folders


class SourceLayoutMissing(SourceRootMissing):
    """The root of a source exists but lacks the folder its layout reads (e.g. ``images/``)."""

    def __init__(self, name: str, root: str | Path, folder: str, layout: str, expects: str):
        super().__init__(name, root)
        who = f"source '{name}'" if name else "source"
        self.message = f"{who}: no {folder}/ folder under {root} (layout {layout} expects {expects})"
        self.args = (self.message,)
