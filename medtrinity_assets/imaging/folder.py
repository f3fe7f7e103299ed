"""2D image folders: ``images/`` with optional ``masks/`` of the same file stem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrinity_assets.imaging.common import (
    IMAGE_SUFFIXES,
    PIL_FORMATS,
    InputRejected,
    Volume,
    list_files,
    read_label_image,
    read_pil,
)
from medtrinity_assets.registry import canonical_modality


@dataclass
class ImageTask:
    relpath: str
    path: str
    mask_relpath: str | None = None
    mask_path: str | None = None
    mask_reason: str | None = None


def list_folder(root: Path, include: list[str]) -> tuple[list[ImageTask], list[tuple[str, str]]]:
    rejected: list[tuple[str, str]] = []
    masks: dict[str, object] = {}
    for f in list_files(root, (), "masks"):
        if f.relpath.lower().endswith(IMAGE_SUFFIXES):
            masks.setdefault(Path(f.relpath).stem, f)
    tasks: list[ImageTask] = []
    for f in list_files(root, include, "images"):
        if f.path is None:
            rejected.append((f.relpath, f.reason or "path_escapes_root:"))
            continue
        if not f.relpath.lower().endswith(IMAGE_SUFFIXES):
            rejected.append((f.relpath, "undecodable: not a PNG/JPEG/TIFF file name"))
            continue
        m = masks.get(Path(f.relpath).stem)
        task = ImageTask(f.relpath, str(f.path))
        if m is not None:
            task.mask_relpath = m.relpath  # type: ignore[attr-defined]
            task.mask_path = str(m.path) if m.path else None  # type: ignore[attr-defined]
            task.mask_reason = m.reason  # type: ignore[attr-defined]
        tasks.append(task)
    return tasks, rejected


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


def load_task(task: ImageTask, max_pixels: int, modality: str, label_names: dict[int, str]) -> Volume:
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
