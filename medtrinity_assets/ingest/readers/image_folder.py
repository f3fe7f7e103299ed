"""2D image folders: ``images/`` with optional ``masks/`` at the same relative path.

``masks/a/x.png`` is the mask of ``images/a/x.jpg`` (the path under ``masks/`` without its suffix
equals the path under ``images/`` without its suffix; the suffixes may differ). When several mask
files share that key (``masks/x.png`` and ``masks/x.jpg``) the pick is deterministic: a readable
one first, then lossless before lossy (PNG, then TIFF, then JPEG), then the smallest path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medtrinity_assets.core.vocabulary import canonical_modality
from medtrinity_assets.ingest.readers import register
from medtrinity_assets.ingest.readers.base import (
    InputRejected,
    Reader,
    Rejected,
    ScanResult,
    SourceLayoutMissing,
    Task,
    Volume,
)
from medtrinity_assets.ingest.readers.files import FoundFile, list_files
from medtrinity_assets.ingest.readers.pil import IMAGE_SUFFIXES, PIL_FORMATS, read_label_image, read_pil

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.ingest.registry import SourceSpec


@dataclass
class ImageTask(Task):
    path: str = ""
    mask_relpath: str | None = None
    mask_path: str | None = None
    mask_reason: str | None = None


#: Preference among mask files of one key: lossless formats before lossy ones.
_MASK_SUFFIX_RANK = {".png": 0, ".tif": 1, ".tiff": 1, ".jpg": 2, ".jpeg": 2}


def _key(relpath: str, under: str) -> str:
    """``a/x`` for ``<under>/a/x.png``: the path under ``under`` without its suffix."""
    return Path(relpath).relative_to(under).with_suffix("").as_posix()


def _mask_rank(f: FoundFile) -> tuple[bool, int, str]:
    return (f.path is None, _MASK_SUFFIX_RANK.get(Path(f.relpath).suffix.lower(), 9), f.relpath)


def list_folder(root: Path, include: list[str], name: str = "") -> list[Task]:
    """One task per file under ``images/``, with its mask from ``masks/`` (see the module doc).

    Raises :class:`SourceLayoutMissing` when ``root`` has no ``images/`` folder.
    """
    if not (root / "images").is_dir():
        raise SourceLayoutMissing(name, root, "images", "image_folder", "images/ and optional masks/")
    tasks: list[Task] = []
    masks: dict[str, FoundFile] = {}
    for f in list_files(root, (), "masks"):
        if f.relpath.lower().endswith(IMAGE_SUFFIXES):
            key = _key(f.relpath, "masks")
            if key not in masks or _mask_rank(f) < _mask_rank(masks[key]):
                masks[key] = f
    for f in list_files(root, include, "images"):
        if f.path is None:
            tasks.append(Rejected(f.relpath, reason=f.reason or "path_escapes_root:"))
            continue
        if not f.relpath.lower().endswith(IMAGE_SUFFIXES):
            tasks.append(Rejected(f.relpath, reason="undecodable: not a PNG/JPEG/TIFF file name"))
            continue
        m = masks.get(_key(f.relpath, "images"))
        task = ImageTask(f.relpath, path=str(f.path))
        if m is not None:
            task.mask_relpath = m.relpath
            task.mask_path = str(m.path) if m.path else None
            task.mask_reason = m.reason
        tasks.append(task)
    return tasks


def image_volume(relpath: str, arr: np.ndarray, modality: str, mask: np.ndarray | None = None) -> Volume:
    return Volume(
        relpath=relpath,
        data=arr[None],
        modality=canonical_modality(modality),
        kind="image",
        mask=None if mask is None else mask[None],
        colour=arr.ndim == 3,
        projection_xray=canonical_modality(modality) == "x-ray",
        meta={"description": "", "body_part": ""},
    )


def load_image(task: ImageTask, max_pixels: int, modality: str, label_names: dict[int, str]) -> Volume:
    if task.mask_reason:
        raise InputRejected("path_escapes_root", "mask " + task.mask_reason.split(":", 1)[-1].strip())
    arr = read_pil(Path(task.path), max_pixels, PIL_FORMATS)
    mask = None
    if task.mask_path:
        try:
            mask = read_label_image(Path(task.mask_path), max_pixels, PIL_FORMATS)
        except InputRejected as exc:
            raise InputRejected(exc.prefix, f"mask: {exc.detail}") from None
        if mask.shape != arr.shape[:2]:
            raise InputRejected("mask_shape_mismatch", f"mask {mask.shape} vs image {arr.shape[:2]}")
        if not mask.any():
            mask = None
        else:
            mask = mask.astype(np.uint16 if mask.max() > 255 else np.uint8)
    vol = image_volume(task.relpath, arr, modality, mask)
    vol.label_names = dict(label_names)
    return vol


@register
class ImageFolderReader(Reader):
    layout = "image_folder"
    description = "images/ with optional same-path masks/ (PNG/JPEG/TIFF)"

    def scan(self, spec: SourceSpec, root: Path, map_ordered) -> ScanResult:
        return ScanResult(list_folder(root, list(spec.include), name=spec.name))

    def read(self, task: Task, spec: SourceSpec, root: Path) -> Iterator[Volume | Rejected]:
        assert isinstance(task, ImageTask)
        yield load_image(task, spec.max_pixels, spec.modality, dict(spec.labels))
