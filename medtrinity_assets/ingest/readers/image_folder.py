"""2D image folders: ``images/`` with optional ``masks/`` at the same relative path.

``masks/a/x.png`` is the mask of ``images/a/x.jpg`` (the path under ``masks/`` without its suffix
equals the path under ``images/`` without its suffix; the suffixes may differ). When several mask
files share that key (``masks/x.png`` and ``masks/x.jpg``) the pick is deterministic: a readable
one first, then lossless before lossy (PNG, then TIFF, then JPEG), then the smallest path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    label_values,
)
from medtrinity_assets.ingest.readers.files import FoundFile, list_files
from medtrinity_assets.ingest.readers.folder_units import RankedWalk, walk_folders, walk_ranked
from medtrinity_assets.ingest.readers.pil import IMAGE_SUFFIXES, PIL_FORMATS, read_label_image, read_pages
from medtrinity_assets.ingest.readers.plan_memo import PlanMemo
from medtrinity_assets.ingest.shards import RankedPlan

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.ingest.registry import SourceSpec
    from medtrinity_assets.ingest.shards import ShardPlan


@dataclass
class ImageTask(Task):
    path: str = ""
    mask_relpath: str | None = None
    mask_path: str | None = None
    mask_reason: str | None = None


#: Preference among mask files of one key: lossless formats before lossy ones.
_MASK_SUFFIX_RANK = {".png": 0, ".tif": 1, ".tiff": 1, ".jpg": 2, ".jpeg": 2}


def _key(relpath: str, under: str) -> str:
    """``a/x`` for ``<under>/a/x.png``: the path under ``under`` without its suffix (as text: a
    listing holds every file of the source)."""
    folder, _, name = relpath[len(under) + 1:].rpartition("/")
    return f"{folder}/{_split_suffix(name)[0]}" if folder else _split_suffix(name)[0]


def _split_suffix(name: str) -> tuple[str, str]:
    """``(stem, suffix)`` of a file name, as :class:`pathlib.PurePath` splits them."""
    i = name.rfind(".")
    return (name[:i], name[i:]) if 0 < i < len(name) - 1 else (name, "")


def _mask_rank(f: FoundFile) -> tuple[bool, int, str]:
    suffix = _split_suffix(f.relpath.rpartition("/")[2])[1]
    return (f.path is None, _MASK_SUFFIX_RANK.get(suffix.lower(), 9), f.relpath)


def list_folder(
    root: Path, include: list[str], name: str = "", keep: Callable[[str], bool] | None = None
) -> list[Task]:
    """One task per file under ``images/`` (those ``keep`` accepts), with its mask from ``masks/``
    (see the module doc).

    Raises :class:`SourceLayoutMissing` when ``root`` has no ``images/`` folder.
    """
    _require_images(root, name)
    images = list_files(root, include, "images", keep=keep)
    wanted = {_key(f.relpath, "images") for f in images} if keep is not None else None
    masks = list_files(root, (), "masks", keep=None if wanted is None else lambda rel: _key(rel, "masks") in wanted)
    return folder_tasks(images, masks)


def folder_tasks(images: list[FoundFile], masks: list[FoundFile]) -> list[Task]:
    """A task per listed image, with its mask: of the listed masks of the same path under ``masks/``
    (suffix aside), a readable one in the most lossless format."""
    best: dict[str, FoundFile] = {}
    for f in masks:
        if f.relpath.lower().endswith(IMAGE_SUFFIXES):
            key = _key(f.relpath, "masks")
            if key not in best or _mask_rank(f) < _mask_rank(best[key]):
                best[key] = f
    tasks: list[Task] = []
    for f in images:
        if f.path is None:
            tasks.append(Rejected(f.relpath, reason=f.reason or "path_escapes_root:"))
            continue
        if not f.relpath.lower().endswith(IMAGE_SUFFIXES):
            suffix = Path(f.relpath).suffix or "no suffix"
            tasks.append(Rejected(f.relpath, reason=f"unsupported_type: {suffix} is not an image this layout "
                                  f"reads ({', '.join(IMAGE_SUFFIXES)})"))
            continue
        m = best.get(_key(f.relpath, "images"))
        task = ImageTask(f.relpath, path=f.path)
        if m is not None:
            task.mask_relpath = m.relpath
            task.mask_path = m.path
            task.mask_reason = m.reason
        tasks.append(task)
    return tasks


def _require_images(root: Path, name: str) -> None:
    if not (root / "images").is_dir():
        raise SourceLayoutMissing(name, root, "images", "image_folder", "images/ and optional masks/")


def image_volume(
    relpath: str, arr: np.ndarray, modality: str, mask: np.ndarray | None = None, stacked: bool = False
) -> Volume:
    """One 2D image, or (``stacked``) pages ``(n, h, w[, 3])`` with masks ``(n, h, w)`` as frames."""
    stack = arr if stacked else arr[None]
    return Volume(
        relpath=relpath,
        data=stack,
        modality=canonical_modality(modality),
        kind="frames" if stacked else "image",
        mask=None if mask is None else (mask if stacked else mask[None]),
        colour=stack.ndim == 4,
        projection_xray=canonical_modality(modality) == "x-ray",
        meta={"description": "", "body_part": ""},
    )


def _mask(task: ImageTask, spec: SourceSpec, shape: tuple[int, ...]) -> np.ndarray | None:
    """The label map(s) of an image: one per page, aligned with it; None when empty."""
    try:
        if len(shape) == 2:
            masks = [read_label_image(Path(task.mask_path), spec.max_pixels, PIL_FORMATS, spec.mask_colours)]
        else:
            masks = _mask_pages(task, spec, shape[0])
    except InputRejected as exc:
        raise InputRejected(exc.prefix, f"mask: {exc.detail}") from None
    stack = np.stack(masks) if len(masks) > 1 else masks[0]
    if stack.shape != shape:
        raise InputRejected("mask_shape_mismatch", f"mask {stack.shape} vs image {shape}")
    if not stack.any():
        return None
    return stack.astype(np.uint16 if stack.max() > 255 else np.uint8)


def _mask_pages(task: ImageTask, spec: SourceSpec, n: int) -> list[np.ndarray]:
    pages = read_pages(Path(task.mask_path), spec.max_pixels, PIL_FORMATS)
    if len(pages.arrays) != n:
        raise InputRejected("mask_shape_mismatch", f"{len(pages.arrays)} mask pages for {n} image pages")
    return [read_page_labels(a, spec) for a in pages.arrays]


def read_page_labels(arr: np.ndarray, spec: SourceSpec) -> np.ndarray:
    """A decoded mask page as labels (colour pages through ``mask_colours``)."""
    from medtrinity_assets.ingest.readers.pil import colour_labels

    if arr.ndim == 3 and not (arr == arr[..., :1]).all():
        return colour_labels(arr, spec.mask_colours)
    arr = (arr[..., 0] if arr.ndim == 3 else arr).astype(np.int64)
    values = label_values(arr)
    return (arr > 0).astype(np.int64) if len(values) <= 2 and values.max(initial=0) in (255, 65535) else arr


def load_image(task: ImageTask, spec: SourceSpec) -> Volume:
    """An image (every page of a multi-page TIFF, as frames) with its aligned mask."""
    if task.mask_reason:
        raise InputRejected("path_escapes_root", "mask " + task.mask_reason.split(":", 1)[-1].strip())
    pages = read_pages(Path(task.path), spec.max_pixels, PIL_FORMATS)
    arr = pages.arrays[0] if len(pages.arrays) == 1 else np.stack(pages.arrays)
    shape = arr.shape[:2] if len(pages.arrays) == 1 else arr.shape[:3]
    mask = _mask(task, spec, shape) if task.mask_path else None
    vol = image_volume(task.relpath, arr, spec.modality, mask, stacked=len(pages.arrays) > 1)
    vol.label_names = dict(spec.labels)
    if pages.skipped:  # pages of another size: thumbnails, pyramid levels
        vol.warnings.append("pages_skipped")
    return vol


@register
class ImageFolderReader(Reader):
    layout = "image_folder"
    description = "images/ with optional same-path masks/ (PNG/JPEG/TIFF)"
    requires = ("images",)
    reads = ("images", "masks")

    def scan(self, spec: SourceSpec, root: Path, map_ordered) -> ScanResult:
        return ScanResult(list_folder(root, list(spec.include), name=spec.name))

    def shard_plan(self, spec: SourceSpec, root: Path) -> RankedPlan:
        """Every file under ``images/`` is one task (an image, or a rejected file): the plan needs
        their count alone, from the folders' listings (an unchanged folder without subfolders is not
        listed again: :mod:`.folder_units`), not a look at each file nor the masks."""
        _require_images(root, spec.name)
        return RankedPlan(spec.shard_size, self._images(spec, root).total)

    def scan_shard(self, spec: SourceSpec, root: Path, map_ordered, plan: ShardPlan | RankedPlan, shard: int) -> ScanResult:
        """The tasks of one shard: only its files, and the masks beside them, are looked at."""
        assert isinstance(plan, RankedPlan)
        images = self._images(spec, root, *plan.stretch(shard)).found
        keys = {_key(f.relpath, "images") for f in images}
        folders = {"masks/" + key.rpartition("/")[0] if "/" in key else "masks" for key in keys}
        memo = PlanMemo(root, "image_folder_masks")
        listed = walk_folders(root, under="masks", memo=memo, wanted=folders.__contains__,
                              keep=lambda rel: _key(rel, "masks") in keys)
        memo.save()
        return ScanResult(folder_tasks(images, listed.found))

    @staticmethod
    def _images(spec: SourceSpec, root: Path, lo: int = 0, hi: int = 0) -> RankedWalk:
        memo = PlanMemo(root, f"image_folder\0{sorted(spec.include)}")
        walk = walk_ranked(root, "images", list(spec.include), memo=memo, lo=lo, hi=hi)
        memo.save()
        return walk

    def read(self, task: Task, spec: SourceSpec, root: Path) -> Iterator[Volume | Rejected]:
        assert isinstance(task, ImageTask)
        yield load_image(task, spec)
