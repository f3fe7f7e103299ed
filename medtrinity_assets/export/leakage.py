"""Leakage refusal: no image (or near duplicate) in two splits, none of a registered evaluation
set in the training or validation split. The export fails naming every offending record.

An evaluation set is a folder of images (PNG, JPEG, TIFF, BMP, DICOM) or a text file listing
image paths, e.g. a VQA benchmark's test images. The export's images are windowed and resized
copies of their sources, so they are compared perceptually: a pHash within
:data:`EVAL_MAX_DISTANCE` bits confirmed by a 16x16 thumbnail correlation of at least
:data:`EVAL_MIN_CORR`, as well as by identical pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrinity_assets.export.dedup import ImageRef, PhashIndex
from medtrinity_assets.ingest.dedup import NEAR_DUP_MIN_CORR, grey32, phash_bits, thumb16, thumb_corr

EVAL_MAX_DISTANCE = 8
EVAL_MIN_CORR = 0.95
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}
GUARDED_SPLITS = ("train", "validation")


class LeakageError(RuntimeError):
    """The export would leak images between splits or from an evaluation set."""

    def __init__(self, leaks: list[str]) -> None:
        self.leaks = leaks
        shown = "; ".join(leaks[:20]) + (f"; ... and {len(leaks) - 20} more" if len(leaks) > 20 else "")
        super().__init__(f"refusing to export: {len(leaks)} leak(s): {shown}")


@dataclass(frozen=True)
class EvalImage:
    path: str
    phash: int
    thumb: np.ndarray


def eval_images(spec: str | Path) -> list[Path]:
    """The images an evaluation set names: a folder (recursively) or a file listing paths."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file():
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        return [(p.parent / line) if not Path(line).is_absolute() else Path(line) for line in lines if line]
    raise FileNotFoundError(f"evaluation set {spec} is neither a folder nor a list file")


def _grey(path: Path) -> np.ndarray:
    """An image's grey pixels (DICOM through pydicom, others through Pillow with formats restricted)."""
    if path.suffix.lower() == ".dcm":
        import pydicom

        arr = pydicom.dcmread(path).pixel_array.astype(np.float64)
        arr = arr if arr.ndim == 2 else arr[0] if arr.shape[-1] not in (3, 4) else arr.mean(axis=-1)
        lo, hi = np.percentile(arr, (0.5, 99.5))
        return (np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)
    from PIL import Image

    with Image.open(path, formats=["PNG", "JPEG", "TIFF", "BMP"]) as im:
        return np.asarray(im.convert("L"))


def load_eval_set(spec: str | Path) -> list[EvalImage]:
    out = []
    for path in eval_images(spec):
        g = grey32(_grey(path))
        out.append(EvalImage(str(path), phash_bits(g), thumb16(g)))
    return out


def split_leaks(images: Iterable[tuple[ImageRef, str]], thumb: Callable[[ImageRef], np.ndarray]) -> list[str]:
    """Images (or near duplicates) that appear in two splits: ``(image, split)`` pairs."""
    index, split_of, leaks = PhashIndex(), {}, []
    for ref, split in images:
        other = index.by_sha.get(ref.sha256)
        if other is not None and split_of[other.sha256] != split:
            leaks.append(f"{ref.source}/{ref.record_id} ({split}) has the pixels of {other.source}/{other.record_id} "
                         f"({split_of[other.sha256]})")
            continue
        for k, d in index.near(ref.phash):
            if split_of[k.sha256] != split and thumb_corr(thumb(k), thumb(ref)) >= NEAR_DUP_MIN_CORR:
                leaks.append(f"{ref.source}/{ref.record_id} ({split}) nearly duplicates {k.source}/{k.record_id} "
                             f"({split_of[k.sha256]}, phash distance {d})")
        index.add(ref)
        split_of.setdefault(ref.sha256, split)
    return leaks


def eval_leaks(
    images: list[tuple[ImageRef, str]], evals: list[EvalImage], thumb: Callable[[ImageRef], np.ndarray]
) -> list[str]:
    """Images of the training or validation split that match an evaluation image (every export
    image's pHash compared with each evaluation image's at once)."""
    guarded = [(ref, split) for ref, split in images if split in GUARDED_SPLITS]
    if not evals or not guarded:
        return []
    hashes = np.array([ref.phash for ref, _ in guarded], dtype=np.uint64)
    leaks: dict[int, str] = {}
    for e in evals:
        dist = np.bitwise_count(hashes ^ np.uint64(e.phash))
        for i in np.nonzero(dist <= EVAL_MAX_DISTANCE)[0]:
            ref, split = guarded[int(i)]
            if int(i) not in leaks and thumb_corr(e.thumb, thumb(ref)) >= EVAL_MIN_CORR:
                leaks[int(i)] = (f"{ref.source}/{ref.record_id} ({split}) matches evaluation image {e.path} "
                                 f"(phash distance {int(dist[i])})")
    return [leaks[i] for i in sorted(leaks)]
