"""The reader protocol: what every layout implements, and the records it hands to preprocessing.

A reader turns a source root into :class:`Task` items (:meth:`Reader.scan`: a file, a DICOM
series, a NIfTI channel, a table row...) and each task into :class:`Volume` items
(:meth:`Reader.read`: one or many per task, e.g. the frames, tiles or pyramid levels of one
file). Bad input is never an exception that escapes: a task that cannot be read becomes a
:class:`Rejected` item (or :class:`InputRejected` raised from ``read``), i.e. one quarantined
manifest row whose ``reason`` is ``<prefix>: <detail>`` with a prefix from :data:`REASONS`.

Readers are registered by layout name (:mod:`medtrinity_assets.ingest.readers`); preprocessing
only ever talks to this protocol. Nothing here imports Dagster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from medtrinity_assets.ingest.registry import SourceSpec
    from medtrinity_assets.ingest.shards import RankedPlan, ShardPlan

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
    "colour_mask",
    "unreadable",
    "burned_in_text_unchecked",
    "burned_in_text_unmaskable",
    "unsupported_type",
)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an exception for a quarantine reason: an OS error gives its strerror
    (never the path it names), other messages lose any absolute path they quote."""
    import re

    if isinstance(exc, OSError) and exc.strerror:
        msg = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else exc.strerror
    else:
        msg = re.sub(r"(?<![\w.])/(?:[^\s'\"/]+/)+([^\s'\"/]+)", r"\1", str(exc))
    msg = " ".join(msg.split())[:200]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def os_reason(exc: OSError) -> str:
    """The quarantine reason of a file that could not be opened or read (vanished, dangling link,
    no permission): ``unreadable: <error>``; other OS errors are ``undecodable``."""
    gone = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    return f"{'unreadable' if isinstance(exc, gone) else 'undecodable'}: {describe_error(exc)}"


def label_values(arr: np.ndarray) -> np.ndarray:
    """The distinct values of an integer label map, ascending (what ``np.unique`` gives): counted in
    one pass when they lie in 0..65535, as labels do (``np.unique`` sorts every pixel, the largest
    cost of reading a small image with its mask)."""
    if arr.size and arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return np.flatnonzero(np.bincount(arr.ravel(), minlength=hi + 1)).astype(arr.dtype)
    return np.unique(arr)


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
        # the detail keeps its numbers and the decoder's message; identifying values are
        # removed when the row is built (medtrinity_assets.privacy.text.scrub_reason)
        self.detail = " ".join(str(detail).split())[:300]
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        return f"{self.prefix}: {self.detail}" if self.detail else f"{self.prefix}:"


class SourceLayoutMissing(SourceRootMissing):
    """The root of a source exists but lacks the folder its layout reads (e.g. ``images/``)."""

    def __init__(self, name: str, root: str | Path, folder: str, layout: str, expects: str):
        super().__init__(name, root)
        who = f"source '{name}'" if name else "source"
        self.message = f"{who}: no {folder}/ folder under {root} (layout {layout} expects {expects})"
        self.args = (self.message,)


def missing_layout(spec: Any, root: str | Path, names: Iterable[str], requires: Sequence[str]) -> SourceLayoutMissing | None:
    """The error of a root whose top-level entry ``names`` match none of ``requires`` (glob
    patterns: :attr:`Reader.requires`), or None; for a local root and a remote one alike."""
    import fnmatch

    names = list(names)
    if requires and not any(fnmatch.filter(names, r) for r in requires):
        return SourceLayoutMissing(spec.name, root, requires[0], spec.layout, " or ".join(requires))
    return None


# --------------------------------------------------------------------------------------
# tasks and records


@dataclass
class Task:
    """One unit of read work. ``key`` tells apart several tasks of one file (a channel, a CSV
    row); it is part of the record id of what the task yields."""

    relpath: str
    key: str = ""

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.relpath, self.key)

    @property
    def images(self) -> int:
        """How many images the task can yield at most (its weight in a shard plan): one, unless
        a reader knows better from what it listed (a volume's slices)."""
        return 1

    @property
    def cost(self) -> float:
        """The task's expected work relative to the other tasks of its source (the order in which
        the workers take them: the costliest first, so that no long task starts last)."""
        return float(self.images)


@dataclass
class Rejected(Task):
    """An input that cannot be read, with its reason (one quarantined manifest row)."""

    reason: str = ""

    @property
    def cost(self) -> float:
        return 0.0


@dataclass
class ScanResult:
    """What a reader found under a root: its tasks (rejected inputs included) and the
    identifying values it read on the way (e.g. from DICOM headers), kept in memory only."""

    tasks: list[Task]
    identifiers: set[str] = field(default_factory=set)


#: ``map_ordered(fn, items)``: a worker pool's ordered map (or a plain loop), for readers whose
#: scan is worth spreading over processes (DICOM header reads).
MapOrdered = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


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


def cut_axis(axes_lps: np.ndarray | None, native_axis: int, axis_cfg: str) -> int:
    """:func:`choose_axis` from a volume's orientation alone (rows: LPS direction of each array
    axis), as a shard plan reads it from a header before any voxel is decoded."""
    if axes_lps is None or axis_cfg == "auto":
        return native_axis
    target = {"sagittal": 0, "coronal": 1, "axial": 2}[axis_cfg]
    return int(np.argmax(np.abs(axes_lps[:, target])))


def direction_letter(vec: Sequence[float] | np.ndarray) -> str | None:
    """Patient direction letter (DICOM LPS) that a unit vector mostly points to."""
    v = np.asarray(vec, dtype=float)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or not np.any(v):
        return None
    k = int(np.argmax(np.abs(v)))
    return ("L", "P", "S")[k] if v[k] > 0 else ("R", "A", "I")[k]




class Reader(ABC):
    """A layout: how to find the tasks of a source and how to read one task."""

    #: the name users write in a registry file (``layout: <name>``)
    layout: ClassVar[str] = ""
    #: one line for ``medtrinity sources`` and the docs
    description: ClassVar[str] = ""
    #: entries of the root (glob patterns) of which one must exist: a remote root is mirrored
    #: only once it is found there
    requires: ClassVar[tuple[str, ...]] = ()
    #: top-level entries of the root the reader reads (None: all); a mirror copies only these
    reads: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def scan(self, spec: SourceSpec, root: Path, map_ordered: MapOrdered) -> ScanResult:
        """Every task of the source (in any order; preprocessing sorts by :attr:`Task.sort_key`).

        Raise :class:`SourceLayoutMissing` when the root lacks the folder the layout reads.
        """

    def shard_unit(self, relpath: str) -> str:
        """The unit an input belongs to: inputs of one unit always land in the same shard."""
        return relpath

    def shard_plan(self, spec: SourceSpec, root: Path) -> ShardPlan | RankedPlan | None:
        """The source's shard plan, made without reading its inputs, or ``None`` when the scan itself
        is cheap (a listing): the plan is then made from the scanned tasks."""
        return None

    def scan_shard(self, spec: SourceSpec, root: Path, map_ordered: MapOrdered, plan: ShardPlan, shard: int) -> ScanResult:
        """The tasks of shard ``shard`` of ``plan``. Readers whose scan reads the inputs (DICOM headers)
        override it to read only the shard's."""
        keeps = plan.keeps(shard)
        scan = self.scan(spec, root, map_ordered)
        return ScanResult([t for t in scan.tasks if keeps(t.relpath)], scan.identifiers)

    @abstractmethod
    def read(self, task: Task, spec: SourceSpec, root: Path) -> Iterator[Volume | Rejected]:
        """The volumes of one task (one or many), and rejected parts of it as :class:`Rejected`.

        Raise :class:`InputRejected` when the whole task is bad.
        """
