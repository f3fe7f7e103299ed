"""Stage 1: ingest one source into ``source_manifest`` and ``preprocessed_images``.

1. The source's reader (chosen by its layout, :mod:`medtrinity_assets.ingest.readers`) scans the
   root into tasks, spreading header reads over a process pool where that pays, and gathers the
   identifying values it meets (kept in memory; stored only as salted hashes).
2. A second pool, whose workers know those values, reads each task, cuts volumes into slices,
   maps intensities, orients, resizes and encodes PNGs (:mod:`.worker`, :mod:`.slicing`), and
   builds the rows with their free text scrubbed and their paths redacted (:mod:`.records`).
3. The parent removes exact and near duplicates in the order the tasks were taken (:mod:`.dedup`),
   writes the content-addressed PNGs and masks, and the two tables, their rows in task order.

The workers take the tasks in :func:`work_order`: the costliest size class first (an ultrasound
file whose text is scanned by OCR, a long series), so that no long task starts last and leaves the
other workers idle at the end of a shard; tasks of one class go in task order.

Bad input never stops a source: it becomes a ``quarantined`` manifest row whose ``reason``
starts with a prefix of :data:`medtrinity_assets.ingest.readers.REASONS`.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core import storage
from medtrinity_assets.core.parts import part_name, record_count
from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, SOURCE_MANIFEST
from medtrinity_assets.ingest.dedup import NearDuplicateIndex
from medtrinity_assets.ingest.readers import reader_for
from medtrinity_assets.ingest.readers.base import ScanResult, Task
from medtrinity_assets.ingest.readers.files import check_root
from medtrinity_assets.ingest.records import Candidate, TaskResult
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.ingest.shards import RankedPlan, ShardPlan, plan_shards
from medtrinity_assets.ingest.worker import WorkerPool
from medtrinity_assets.privacy import identifier_store

HANDOFF_FILES = 256  # staged files handed to the committer thread at once
MAX_PENDING_HANDOFFS = 4  # hand-offs waiting for it


@dataclass
class IngestResult:
    manifest: pl.DataFrame
    images: pl.DataFrame
    quarantine_counts: dict[str, int]
    counts: dict[str, int]
    shard: int = 0
    shards: int = 1  # the source's shard count when this shard was ingested

    @property
    def status_counts(self) -> dict[str, int]:
        return dict(self.manifest.group_by("status").len().iter_rows()) if self.manifest.height else {}

    @property
    def skipped_counts(self) -> dict[str, int]:
        """Volume slices left out, by reason (``little_foreground``, ``low_contrast``, ``stride``)."""
        return {k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("slices_skipped:")}

    @property
    def burned_in_text(self) -> dict[str, int]:
        """Kept images scanned for burned-in text, those with text blacked out, and the boxes."""
        keys = ("text_scanned_images", "text_redacted_images", "text_boxes_redacted")
        return {k: int(self.counts.get(k, 0)) for k in keys}

    @property
    def warnings(self) -> dict[str, int]:
        """Non-fatal findings by code (``series_gap``...)."""
        return {k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("warning:")}


@dataclass
class _Collector:
    """Rows, duplicates removed, put back in task order (each task's rank) however the tasks were
    taken; the PNGs the workers staged are kept (synced and renamed into place by a committer
    thread) or, for duplicates, removed."""

    out: Path
    index: NearDuplicateIndex
    manifest: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    groups: dict[str, int] = field(default_factory=dict)
    redacted: set[str] = field(default_factory=set)
    group_ids: Any = None  # the output root's IdentifierStore (keyed patient/study ids)

    def __post_init__(self) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-commit")
        self._batch = storage.ContentBatch(self.out)  # one filesystem sync per batch of files
        self._writes: deque = deque()
        self._files: list[tuple[str, str]] = []  # staged files to keep, not yet handed off
        self._root = str(self.out)
        self.ranks: tuple[list[int], list[int]] = ([], [])  # the task rank of each manifest, image row

    def add(self, relpath: str, res: TaskResult, rank: int = 0) -> None:
        # near-duplicate groups are files: slices, frames or channels of one file are never near
        # duplicates of each other (only exact ones), e.g. T1 and T1gd of one 4D volume
        group = self.groups.setdefault(relpath, len(self.groups))
        self.manifest.extend(res.quarantined)
        self.ranks[0].extend([rank] * len(res.quarantined))
        self.redacted |= res.redacted
        for why, n in res.skipped.items():
            self.counts["slices_skipped"] += n
            self.counts[f"slices_skipped:{why}"] += n
        for warning in res.warnings:
            self.counts[f"warning:{warning}"] += 1
        for cand in res.candidates:
            self._candidate(cand, group, rank)
        if len(self._files) >= HANDOFF_FILES:  # a hand-off per task cost ~25 us and the GIL twice
            self._writes.append(self._writer.submit(self._batch.add, self._files))
            self._files = []
            while len(self._writes) > MAX_PENDING_HANDOFFS:
                self._writes.popleft().result()

    def _candidate(self, cand: Candidate, group: int, rank: int) -> None:
        img, row = cand.image, cand.manifest
        self.ranks[0].append(rank)
        row["group_id"] = self.group_ids.group_id(*cand.group_key) if cand.group_key else None
        dup_of, why = self.index.find(img["sha256"], cand.phash, group, cand.thumb)
        if dup_of is not None:
            row.update(status="duplicate", duplicate_of=dup_of, reason=why)
            self.manifest.append(row)
            for tmp in cand.staged.values():
                storage.discard_staged(tmp)
            return
        img["image_path"] = self._keep("images", img["sha256"], cand.staged)  # hashed by the worker
        img["mask_path"] = self._keep("masks", cand.mask_sha256, cand.staged) if cand.mask_sha256 else None
        self.counts["masks"] += cand.mask_sha256 is not None
        if cand.text_scanned:
            self.counts["text_scanned_images"] += 1
            self.counts["text_redacted_images"] += cand.text_boxes > 0
            self.counts["text_boxes_redacted"] += cand.text_boxes
        self.manifest.append(row)
        self.images.append(img)
        self.ranks[1].append(rank)
        self.index.add(row["record_id"], img["sha256"], cand.phash, group, cand.thumb)

    def _keep(self, kind: str, sha256: str, staged: dict[str, str | None]) -> str:
        """The content path (relative to the output root) of a staged file, queued for the committer."""
        rel = storage.content_relpath(kind, sha256)
        if (tmp := staged.get(kind)) is not None:  # None: the store had it already
            self._files.append((tmp, f"{self._root}/{rel}"))
        return rel

    def finish(self) -> None:
        """Wait for the committer and make every file durable and visible (before any table names it)."""
        try:
            while self._writes:
                self._writes.popleft().result()
        finally:
            self._writer.shutdown(wait=True)
            self._batch.add(self._files)
            self._files = []
            self._batch.commit()  # what was written is complete: kept even when a run fails
            self.counts["files_written"] = self._batch.written


def _in_task_order(rows: list[dict[str, Any]], ranks: list[int]) -> list[dict[str, Any]]:
    """``rows`` by their tasks' ranks (stable: a task's rows keep their order)."""
    return [rows[i] for i in sorted(range(len(rows)), key=ranks.__getitem__)]


def work_order(tasks: list[Task]) -> list[tuple[int, Task]]:
    """``(rank, task)`` of the tasks (in task order, ranked so), in the order the workers take them:
    by size class of :attr:`~.readers.base.Task.cost` (powers of two), the costliest first, each
    class in task order. A source of like files keeps task order."""
    def size_class(cost: float) -> int:
        return math.frexp(cost)[1] if cost > 0 else -1_000_000

    return sorted(enumerate(tasks), key=lambda rt: (-size_class(rt[1].cost), rt[0]))


def _tables(spec: SourceSpec, col: _Collector) -> tuple[pl.DataFrame, pl.DataFrame]:
    manifest = SOURCE_MANIFEST.frame(_in_task_order(col.manifest, col.ranks[0]))
    images = PREPROCESSED_IMAGES.frame(_in_task_order(col.images, col.ranks[1]))
    ids = manifest["record_id"]
    if ids.n_unique() != manifest.height:
        dupes = manifest.filter(ids.is_duplicated())["relpath"].unique().to_list()[:5]
        raise RuntimeError(f"source '{spec.name}': record_id collision for {dupes}")
    return manifest, images


def _counts(manifest: pl.DataFrame, images: pl.DataFrame, counts: Counter) -> tuple[dict[str, int], dict[str, int]]:
    statuses = manifest["status"]
    quarantined = manifest.filter(pl.col("status") == "quarantined")["reason"].to_list()
    by_reason = Counter(r.split(":", 1)[0] for r in quarantined)
    counts.update(
        records=manifest.height,
        ok=int((statuses == "ok").sum()),
        quarantined=len(quarantined),
        images=images.height,
        duplicate=int((statuses == "duplicate").sum()),
    )
    return dict(sorted(by_reason.items())), dict(counts)


def ingest_source(
    spec: SourceSpec,
    out: str | Path,
    *,
    shard: int = 0,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    near_duplicate_distance: int | None = 4,
) -> IngestResult:
    """Read one shard of a source (see :mod:`.shards`), preprocess it and write its
    ``source_manifest`` and ``preprocessed_images`` (at the shard's part name).

    Deterministic and idempotent: rows come in task order (sorted relative paths, then keys),
    PNGs are named by content. ``near_duplicate_distance``: largest pHash Hamming distance (with
    a thumbnail check) at which an image from another file is a near duplicate; ``None`` keeps
    only exact-duplicate removal. A shard past the source's last one writes empty tables.
    """
    out = Path(out)
    root = check_root(spec.name, spec.resolved_root())
    workers = max(1, int(workers))
    part = part_name(spec.name, shard)
    with WorkerPool(workers, spec, root) as pool:
        plan, scan = _scan_shard(spec, root, shard, pool.map_ordered)
    record_count(out, spec.name, plan.count, plan.size)
    tasks = work_order(sorted(scan.tasks, key=lambda t: t.sort_key))
    col = _Collector(out, NearDuplicateIndex(near_duplicate_distance), group_ids=identifier_store(out))
    col.counts["tasks"] = len(tasks)
    col.counts["identifying_values"] = identifier_store(out).save(part, scan.identifiers)
    if progress:
        progress(0, len(tasks))
    with WorkerPool(workers, spec, root, scan.identifiers, out=out) as pool:
        try:
            taken = pool.process([t for _, t in tasks])
            for done, ((rank, task), res) in enumerate(zip(tasks, taken, strict=True), start=1):
                col.add(task.relpath, res, rank)
                if progress:
                    progress(done, len(tasks))
        finally:
            col.finish()
    manifest, images = _tables(spec, col)
    SOURCE_MANIFEST.write(manifest, out, part)
    PREPROCESSED_IMAGES.write(images, out, part)
    if col.redacted:
        col.counts["relpaths_redacted"] = len(col.redacted)
    by_reason, counts = _counts(manifest, images, col.counts)
    return IngestResult(manifest, images, by_reason, counts, shard=shard, shards=plan.count)


def count_shards(spec: SourceSpec) -> int:
    """How many shards the source has now (its inputs listed, not read); 1 when its root is missing
    or remote (its ingestion reports that, or plans once the root is mirrored)."""
    try:
        root = check_root(spec.name, spec.resolved_root())
        return _plan(spec, root, lambda fn, items: map(fn, items))[0].count
    except (FileNotFoundError, NotImplementedError, ValueError):
        return 1


def _plan(spec: SourceSpec, root: Path, map_ordered) -> tuple[ShardPlan | RankedPlan, ScanResult | None]:
    """The source's shard plan, and its full scan when the plan was made from it."""
    reader = reader_for(spec.layout)
    plan = reader.shard_plan(spec, root)
    if plan is not None:
        return plan, None
    full = reader.scan(spec, root, map_ordered)
    weights: Counter[str] = Counter()
    for task in full.tasks:
        weights[reader.shard_unit(task.relpath)] += task.images
    return plan_shards(weights.items(), spec.shard_size, reader.shard_unit), full


def _scan_shard(spec: SourceSpec, root: Path, shard: int, map_ordered) -> tuple[ShardPlan | RankedPlan, ScanResult]:
    """The source's shard plan and the tasks of ``shard``; a reader whose scan reads the inputs
    (DICOM headers) reads only the shard's, the others filter their (cheap) full scan."""
    reader = reader_for(spec.layout)
    plan, full = _plan(spec, root, map_ordered)
    if plan.count == 1 and shard == 0:
        return plan, full if full is not None else reader.scan(spec, root, map_ordered)
    if full is not None:
        assert isinstance(plan, ShardPlan)
        keeps = plan.keeps(shard)
        return plan, ScanResult([t for t in full.tasks if keeps(t.relpath)], full.identifiers)
    return plan, reader.scan_shard(spec, root, map_ordered, plan, shard)
