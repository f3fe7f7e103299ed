"""NIfTI volumes in the Medical Segmentation Decathlon layout (``imagesTr/ labelsTr/ imagesTs/``).

``dataset.json`` (optional) gives label names and the modality. Orientation comes from the
affine (nibabel, RAS) and is carried as DICOM LPS axis directions. The voxel budget is checked
from the header shape before any data is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medtrinity_assets.core.vocabulary import header_modality, mr_sequence
from medtrinity_assets.ingest.readers import register
from medtrinity_assets.ingest.readers.base import (
    InputRejected,
    Reader,
    Rejected,
    ScanResult,
    SourceLayoutMissing,
    Task,
    Volume,
    cut_axis,
)
from medtrinity_assets.ingest.readers.files import list_files, resolve_inside
from medtrinity_assets.ingest.readers.plan_memo import PlanMemo

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.ingest.registry import SourceSpec

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class NiftiTask(Task):
    """One image (one channel of a 4D image: ``key`` is ``channel<c>``, part of the record id)."""

    path: str = ""
    label_relpath: str | None = None
    label_path: str | None = None
    split: str = "train"
    channel: int | None = None  # 4D images: the channel (MSD modality index) this task reads
    slices: int = 1  # the slices along the cut axis, from the header (a shard plan's weight)

    @property
    def images(self) -> int:
        return self.slices


def read_dataset_json(root: Path) -> dict:
    """``dataset.json`` of an MSD folder (``{}`` when absent or unreadable)."""
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def msd_label_names(meta: dict) -> dict[int, str]:
    out: dict[int, str] = {}
    labels = meta.get("labels") or {}
    if isinstance(labels, dict):
        for k, v in labels.items():
            # MSD: {"0": "background", "1": "x"}; nnU-Net v2: {"background": 0, "x": 1}
            key, name = (k, v) if str(k).strip().lstrip("-").isdigit() else (v, k)
            try:
                ikey = int(key)
            except (TypeError, ValueError):
                continue
            if ikey > 0:
                out[ikey] = str(name)
    return out


def msd_modality(meta: dict, channel: int | None = None) -> str | None:
    """The modality (or sequence) name of ``channel`` (default: the first) from dataset.json."""
    mod = meta.get("modality") or meta.get("channel_names") or {}
    if isinstance(mod, dict) and mod:
        key = str(channel or 0)
        value = mod.get(key, mod.get(int(key)) if key.isdigit() else None)
        if value is None:
            value = mod.get("0", next(iter(mod.values())))
        return str(value)
    return str(mod) if isinstance(mod, str) and mod else None


def _header_counts(path: str, axis_cfg: str) -> tuple[int, int]:
    """``(channels, slices)`` of an image from its header alone: the channels of a 4D (x, y, z, c)
    image, and the slices the cut along ``axis_cfg`` gives (as :func:`load_volume` and
    :func:`~medtrinity_assets.ingest.readers.base.cut_axis` orient it). ``(1, 1)`` for an unreadable
    header: the decode then reports the problem."""
    import nibabel as nib

    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        axes, _ = _lps_axes(img.affine)
    except Exception:  # noqa: BLE001 - a bad header is quarantined when the task runs
        return 1, 1
    spatial = (shape + (1, 1))[:3]
    axis = cut_axis(axes, int(np.argmax(np.abs(axes[:, 2]))), axis_cfg) if len(shape) >= 3 else 2
    return (shape[3] if len(shape) >= 4 else 1), max(1, spatial[axis])


def _stem(name: str) -> str:
    for suf in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def list_msd(
    root: Path, include: list[str], channels: list[int] | None = None, name: str = "", axis: str = "auto",
    memo: PlanMemo | None = None,
) -> list[Task]:
    """One task per image (per channel for 4D images: ``channels`` selects them, default all), with
    its slices along the ``axis`` the source cuts (read from the header, or from ``memo`` when the
    file is unchanged since it was read).

    Raises :class:`SourceLayoutMissing` when ``root`` has no ``imagesTr/`` folder (a test-only
    source with just ``imagesTs/`` is accepted).
    """
    if not (root / "imagesTr").is_dir() and not (root / "imagesTs").is_dir():
        raise SourceLayoutMissing(
            name, root, "imagesTr", "nifti_msd", "imagesTr/ with optional labelsTr/ and imagesTs/"
        )
    tasks: list[Task] = []
    labels = {_stem(Path(f.relpath).name): f for f in list_files(root, (), "labelsTr", NIFTI_SUFFIXES)}
    for under, split in (("imagesTr", "train"), ("imagesTs", "test")):
        for f in list_files(root, include, under, NIFTI_SUFFIXES):
            if f.path is None:
                tasks.append(Rejected(f.relpath, reason=f.reason or "path_escapes_root:"))
                continue
            lab = None
            if split == "train":
                stem = _stem(Path(f.relpath).name)
                lab = labels.get(stem) or labels.get(re.sub(r"_\d{4}$", "", stem))
            if lab is not None and lab.path is None:
                tasks.append(Rejected(f.relpath, reason=lab.reason or "path_escapes_root: label"))
                continue
            path = str(f.path)
            read = lambda p=path: _header_counts(p, axis)  # noqa: E731
            n_channels, n_slices = memo.get(f.path, read) if memo is not None else read()
            wanted: list[int | None] = [None]
            if n_channels > 1:
                wanted = [c for c in range(n_channels) if channels is None or c in channels]
                missing = sorted(set(channels or ()) - set(range(n_channels)))
                if missing:
                    why = f"undecodable: channels {missing} not in a {n_channels}-channel image"
                    tasks.append(Rejected(f.relpath, reason=why))
            for c in wanted:
                tasks.append(
                    NiftiTask(
                        f.relpath,
                        "" if c is None else f"channel{c}",
                        path=str(f.path),
                        label_relpath=lab.relpath if lab else None,
                        label_path=str(lab.path) if lab else None,
                        split=split,
                        channel=c,
                        slices=n_slices,
                    )
                )
    return tasks


def _lps_axes(affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    m = np.asarray(affine, float)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    norms = np.where(norms > 0, norms, 1.0)
    dirs = (m / norms).T.copy()  # row k: RAS direction of array axis k
    dirs[:, :2] *= -1  # RAS -> LPS
    return dirs, (float(norms[0]), float(norms[1]), float(norms[2]))


def _load(path: str, max_pixels: int):
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
        raise InputRejected("undecodable", f"not a readable NIfTI ({type(exc).__name__})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2:
        raise InputRejected("undecodable", f"{len(shape)}D image")
    if int(np.prod(shape, dtype=np.int64)) > max_pixels:
        raise InputRejected("too_many_pixels", f"shape {shape} > max_pixels {max_pixels}")
    return img, shape


def _data(img, shape: tuple[int, ...], channel: int | None = None) -> tuple[np.ndarray, bool]:
    """Voxels as 3D and whether they are already scaled. 2D/3D: the stored values (slope and
    intercept are applied per slice later). 4D: only ``channel`` (default 0) is read, through the
    proxy (which then applies the scaling), so the other channels never occupy memory."""
    scaled = False
    try:
        proxy = img.dataobj
        if len(shape) > 3:
            c = channel or 0
            if c >= shape[3]:
                raise InputRejected("undecodable", f"channel {c} not in a {shape[3]}-channel image")
            arr = np.asarray(proxy[(slice(None),) * 3 + (c,) + (0,) * (len(shape) - 4)])
            scaled = True
        else:
            arr = np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    except InputRejected:
        raise
    except (EOFError, OSError, ValueError, Exception) as exc:  # noqa: BLE001
        msg = str(exc).lower()
        prefix = (
            "truncated"
            if isinstance(exc, EOFError) or "expected" in msg or "compressed file ended" in msg
            else "undecodable"
        )
        raise InputRejected(prefix, f"voxel data unreadable ({type(exc).__name__})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, scaled


def _label_map(label_path: str, max_pixels: int, shape: tuple[int, ...], data_shape: tuple[int, ...]) -> np.ndarray | None:
    """The label volume aligned with the image (None when it is empty)."""
    limg, lshape = _load(label_path, max_pixels)
    if tuple(lshape[:3]) != tuple(data_shape) and not (len(shape) == 2 and lshape[:2] == shape[:2]):
        raise InputRejected("mask_shape_mismatch", f"label {lshape} vs image {tuple(data_shape)}")
    try:
        lab = np.asarray(limg.dataobj)
    except Exception as exc:  # noqa: BLE001
        raise InputRejected("undecodable", f"label unreadable ({type(exc).__name__})") from None
    while lab.ndim > 3:
        lab = lab[..., 0]
    if lab.ndim == 2:
        lab = lab[:, :, None]
    if lab.dtype.kind == "f":
        lab = np.rint(np.nan_to_num(lab))
    lab = np.clip(lab, 0, 65535).astype(np.uint16 if lab.max(initial=0) > 255 else np.uint8)
    return lab if lab.any() else None


def _scaling(img, scaled: bool) -> tuple[float, float]:
    proxy = img.dataobj
    slope = 1.0 if scaled else float(getattr(proxy, "slope", 1.0) or 1.0)
    inter = 0.0 if scaled else float(getattr(proxy, "inter", 0.0) or 0.0)
    slope = 1.0 if not np.isfinite(slope) or slope == 0 else slope
    inter = 0.0 if not np.isfinite(inter) else inter
    return slope, inter


def load_volume(
    task: NiftiTask, root: Path, max_pixels: int, spec_modality: str, label_names: dict[int, str]
) -> Volume:
    """One MSD image (one channel of a 4D one) with its label map, oriented from the affine."""
    resolve_inside(root, task.relpath)
    img, shape = _load(task.path, max_pixels)
    meta = read_dataset_json(root)
    names = dict(label_names)
    for k, v in msd_label_names(meta).items():
        names.setdefault(k, v)
    mod = msd_modality(meta, task.channel)
    axes, spacing = _lps_axes(img.affine)
    data, scaled = _data(img, shape, task.channel)
    slope, inter = _scaling(img, scaled)
    mask = _label_map(task.label_path, max_pixels, shape, data.shape) if task.label_path else None
    return Volume(
        relpath=task.relpath,
        data=data,
        modality=header_modality(mod or "", spec_modality),
        kind="volume" if data.shape[2] > 1 else "image",
        slope=np.array([slope]),
        intercept=np.array([inter]),
        mask=mask,
        axes_lps=axes,
        spacing=spacing,
        native_axis=int(np.argmax(np.abs(axes[:, 2]))),  # the voxel axis closest to S-I (axial)
        reorient=True,
        label_names=names,
        # a 4D image's channel is named by dataset.json (e.g. the MRI sequence: FLAIR, T1gd, ADC)
        meta={
            "split": task.split,
            "description": mod if task.channel is not None and mod else "",
            "body_part": "",
            "sequence": mr_sequence(mod) or "",
        },
        frame_key=task.key,
    )


@register
class NiftiMsdReader(Reader):
    layout = "nifti_msd"
    requires = ("imagesTr", "imagesTs")
    reads = ("imagesTr", "labelsTr", "imagesTs", "dataset.json")
    description = "NIfTI volumes in the Medical Segmentation Decathlon layout (imagesTr/ labelsTr/ dataset.json)"

    def scan(self, spec: SourceSpec, root: Path, map_ordered) -> ScanResult:
        memo = PlanMemo(root, f"nifti_msd\0{spec.slicing.axis}\0{sorted(spec.include)}")
        tasks = list_msd(root, list(spec.include), spec.channels, name=spec.name, axis=spec.slicing.axis, memo=memo)
        memo.save()
        return ScanResult(tasks)

    def read(self, task: Task, spec: SourceSpec, root: Path) -> Iterator[Volume | Rejected]:
        assert isinstance(task, NiftiTask)
        yield load_volume(task, root, spec.max_pixels, spec.modality, dict(spec.labels))
