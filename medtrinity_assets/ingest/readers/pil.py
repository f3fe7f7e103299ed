"""Safe 2D decode with Pillow: a format whitelist, the pixel budget checked before decoding,
EXIF orientation applied, masks read as label maps (palette indices; lossy masks thresholded
or rejected)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrinity_assets.ingest.readers.base import InputRejected, describe_error, label_values, os_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PIL_FORMATS = ("PNG", "JPEG", "TIFF")


def _open_checked(path: Path, max_pixels: int, formats: Sequence[str]):
    """Open and fully load a PNG/JPEG/TIFF (format whitelist, pixel limit checked before decoding).

    Returns the loaded PIL image; the caller closes it (``with``).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path, formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise InputRejected("too_many_pixels", describe_error(exc)) from None
    except UnidentifiedImageError:
        raise InputRejected("undecodable", f"its content is not a {'/'.join(formats)} image (no decoder "
                            "recognises its first bytes, whatever its name says)") from None
    except OSError as exc:
        prefix, _, detail = os_reason(exc).partition(": ")
        raise InputRejected(prefix, detail) from None
    except (ValueError, SyntaxError, EOFError) as exc:  # e.g. a text chunk that inflates too far
        raise InputRejected("undecodable", describe_error(exc)) from None
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise InputRejected("too_many_pixels", f"{w}x{h} > max_pixels {max_pixels}")
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise InputRejected("too_many_pixels", describe_error(exc)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            msg = str(exc).lower()
            prefix = "truncated" if "truncated" in msg or "broken" in msg else "undecodable"
            raise InputRejected(prefix, describe_error(exc)) from None
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


@dataclass
class Pages:
    """The pages of an image file that share the first page's size and mode (a multi-page TIFF is
    a stack of frames); pages of another size (thumbnails, pyramid levels) are counted apart."""

    arrays: list[np.ndarray]
    total: int
    skipped: int = 0


def _page_sizes(im) -> list[tuple[tuple[int, int], str]]:
    """Size and mode of every page, read from the page headers only (no pixel decoded)."""
    out = []
    for k in range(int(getattr(im, "n_frames", 1) or 1)):
        im.seek(k)
        out.append((im.size, im.mode))
    return out


def read_pages(path: Path, max_pixels: int, formats: Sequence[str] = PIL_FORMATS) -> Pages:
    """Every page of an image file (see :class:`Pages`); the pixel budget covers all pages and is
    checked from the headers before any page after the first is decoded."""
    from PIL import Image

    with _open_checked(path, max_pixels, formats) as im:
        first = _pil_array(im)
        if int(getattr(im, "n_frames", 1) or 1) == 1:
            return Pages([first], 1)
        try:
            sizes = _page_sizes(im)
            total_px = sum(w * h for (w, h), _ in sizes)
            if total_px > max_pixels:
                raise InputRejected("too_many_pixels", f"{len(sizes)} pages, {total_px} pixels > max_pixels {max_pixels}")
            pages = Pages([first], len(sizes))
            for k, (size, mode) in enumerate(sizes[1:], start=1):
                if (size, mode) != sizes[0]:
                    pages.skipped += 1
                    continue
                im.seek(k)
                im.load()
                pages.arrays.append(_pil_array(im))
        except Image.DecompressionBombError as exc:
            raise InputRejected("too_many_pixels", describe_error(exc)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputRejected("truncated" if isinstance(exc, EOFError) else "undecodable", describe_error(exc)) from None
    return pages


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


def colour_labels(rgb: np.ndarray, colours: dict[int, tuple[int, int, int]] | None) -> np.ndarray:
    """An RGB mask as a label map through the registry's ``mask_colours`` (value -> [r, g, b]).

    Black is background. Without a map, or with pixels of a colour the map does not name, the
    mask is rejected (``colour_mask``): two colours must never become one label by accident.
    """
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    present = [int(c) for c in np.unique(key) if c]
    if not colours:
        raise InputRejected(
            "colour_mask",
            f"an RGB mask with {len(present)} colour(s): map each to a label with mask_colours in the "
            "registry (value: [r, g, b])",
        )
    lut = {(r << 16) | (g << 8) | b: value for value, (r, g, b) in colours.items()}
    unmapped = [c for c in present if c not in lut]
    if unmapped:
        n = int(np.isin(key, unmapped).sum())
        shown = ", ".join(f"[{c >> 16}, {(c >> 8) & 255}, {c & 255}]" for c in unmapped[:3])
        raise InputRejected("colour_mask", f"{n} pixel(s) of colour(s) not in mask_colours: {shown}")
    out = np.zeros(key.shape, np.int64)
    for code, value in lut.items():
        out[key == code] = value
    return out


def _is_grey_rgb(arr: np.ndarray) -> bool:
    return arr.ndim == 3 and bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def read_label_image(
    path: Path,
    max_pixels: int,
    formats: Sequence[str] = PIL_FORMATS,
    colours: dict[int, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """A mask image as an integer label map; a 0/255 binary mask becomes 0/1.

    Palette (``P``) images give their palette indices (the labels, not the colours). Masks from
    lossy formats (JPEG) are thresholded at the midpoint to 0/1 when near-binary, otherwise
    rejected with ``lossy_mask`` (see :func:`_binarise_lossy`). A colour mask (RGB with channels
    that differ) needs the registry's ``mask_colours`` (see :func:`colour_labels`).
    """
    with _open_checked(path, max_pixels, formats) as im:
        if im.mode in ("P", "PA"):
            idx = np.asarray(im)
            if idx.ndim == 3:  # PA: index and alpha
                idx = idx[..., 0]
            return np.ascontiguousarray(idx).astype(np.int64)
        lossy = _is_lossy(im)
        arr = _pil_array(im)
    if arr.ndim == 3 and not _is_grey_rgb(arr) and (colours or not lossy):
        return colour_labels(arr, colours)
    if lossy:
        return _binarise_lossy(arr)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr).astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    values = label_values(arr)
    if len(values) <= 2 and values.max(initial=0) in (255, 65535):
        arr = (arr > 0).astype(np.int64)
    return arr
