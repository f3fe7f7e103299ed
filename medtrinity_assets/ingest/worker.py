"""The process pool of one source, and the work each worker does on one task.

Workers are forked from a forkserver that has already imported pydicom, its decoder plugins,
nibabel, Pillow and the readers (``readers/preload.py``), so they start warm. A worker holds the
source's spec, root, reader and identifying values (set once by the pool's initializer) and turns
one :class:`~.readers.base.Task` into a :class:`~.records.TaskResult`: encoded candidates and
quarantined rows. Results come back in task order with a bounded number in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from medtrinity_assets.ingest.readers import Reader, reader_for
from medtrinity_assets.ingest.readers.base import (
    InputRejected,
    Rejected,
    Task,
    Volume,
    describe_error,
    os_reason,
)
from medtrinity_assets.ingest.records import RecordPrivacy, TaskResult, candidate, quarantine_row, stage
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.ingest.slicing import iter_slices, plan_slices


class WorkerState:
    """What every task of one source needs; one per worker process (and one in the parent)."""

    def __init__(
        self, spec: SourceSpec, root: Path, identifiers: Iterable[str] = (), out: str | None = None, owner: int | None = None
    ) -> None:
        self.spec = spec
        self.root = root
        self.reader: Reader = reader_for(spec.layout)
        self.privacy = RecordPrivacy(identifiers)
        self.out = out  # the output root whose content store PNGs are staged in (None: kept in memory)
        self.owner = owner  # the pid of the process that commits the staged files (the pool's owner)


_STATE: dict[str, WorkerState] = {}


def init_worker(
    spec_json: str, root: str, identifiers: list[str], out: str | None = None, parent: tuple[int, float] | None = None
) -> None:
    owner = parent[0] if parent else None
    _STATE["current"] = WorkerState(SourceSpec.model_validate_json(spec_json), Path(root), identifiers, out, owner)
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=parent, name="parent-watch", daemon=True).start()


PARENT_POLL_S = 0.5


def _exit_with_parent(pid: int, create_time: float) -> None:
    """End this worker as soon as the process that owns the pool is gone (killed with -9, say):
    a worker must never go on decoding for a build nobody waits for."""
    import psutil

    while True:
        time.sleep(PARENT_POLL_S)
        try:
            alive = psutil.Process(pid).create_time() == create_time and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        if not alive:
            os._exit(3)


def _this_process() -> tuple[int, float]:
    import psutil

    return os.getpid(), psutil.Process().create_time()


def _volume(state: WorkerState, vol: Volume, res: TaskResult) -> None:
    """Slice one volume into candidates; a volume without an informative slice is rejected."""
    plan = plan_slices(vol, state.spec)
    kept = [candidate(state.spec, vol, plan, sl, state.privacy) for sl in iter_slices(plan, vol, state.spec)]
    if state.out is not None:
        for cand in kept:
            stage(cand, state.out, state.owner)
    if not kept:
        n, min_std = plan.view.shape[0], state.spec.slicing.min_std
        raise InputRejected("constant_volume", f"no informative slice among {n} (min_std {min_std})")
    res.candidates.extend(kept)
    res.skipped.update(plan.skipped)
    res.warnings.extend(vol.warnings)


def process_task(task: Task, state: WorkerState | None = None) -> TaskResult:
    """Read and preprocess one task; bad input becomes quarantined rows, never an exception."""
    state = state or _STATE["current"]
    privacy = state.privacy
    res = TaskResult()
    try:
        _read_task(state, task, res)
    finally:
        res.redacted, privacy.redacted = set(privacy.redacted), set()
    return res


def _read_task(state: WorkerState, task: Task, res: TaskResult) -> None:
    spec, privacy = state.spec, state.privacy
    if isinstance(task, Rejected):
        res.quarantined.append(quarantine_row(spec, task.relpath, task.reason, task.key, privacy))
        return
    try:
        for item in state.reader.read(task, spec, state.root):
            if isinstance(item, Rejected):
                res.quarantined.append(quarantine_row(spec, item.relpath, item.reason, item.key, privacy))
            else:
                _volume(state, item, res)
    except InputRejected as exc:
        res.quarantined.append(quarantine_row(spec, task.relpath, exc.reason, task.key, privacy))
    except MemoryError:
        res.quarantined.append(quarantine_row(spec, task.relpath, "too_many_pixels: MemoryError while decoding", task.key, privacy))
    except OSError as exc:  # the file vanished or became unreadable after the scan
        res.quarantined.append(quarantine_row(spec, task.relpath, os_reason(exc), task.key, privacy))
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the source
        why = f"undecodable: {describe_error(exc)}"
        res.quarantined.append(quarantine_row(spec, task.relpath, why, task.key, privacy))


#: results a pool may hold per item in flight (see :meth:`WorkerPool.map_ordered`)
HELD_PER_WINDOW = 2


def _busy(futures: Iterable[Future]) -> int:
    """How many of ``futures`` still run or wait in the pool."""
    return sum(not f.done() for f in futures)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class WorkerPool:
    """A process pool for one source (or the calling process when ``workers <= 1``). With ``out``,
    :meth:`process` stages each kept slice's PNGs in that output root's content store (see
    :func:`stage`) for the calling process to commit."""

    def __init__(
        self, workers: int, spec: SourceSpec, root: Path, identifiers: Iterable[str] = (), out: str | Path | None = None
    ) -> None:
        self.window = 4 * max(1, workers)  # tasks in flight: load balance vs results waiting in memory
        values = sorted(set(identifiers))
        out = None if out is None else str(out)
        self.state = WorkerState(spec, root, values, out)
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1 and not mp.current_process().daemon:  # a daemonic process may not have children
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            if "forkserver" in methods:
                ctx.set_forkserver_preload(["medtrinity_assets.ingest.worker", "medtrinity_assets.ingest.readers.preload"])
            self._pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=ctx,
                initializer=init_worker,
                initargs=(spec.model_dump_json(), str(root), values, out, _this_process()),
            )

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map_ordered(self, fn: Callable[[Any], Any], items: Iterable[Any], window: int | None = None) -> Iterator[Any]:
        """``map`` in input order with at most ``window`` items running or queued in the pool and at
        most :data:`HELD_PER_WINDOW` ``× window`` submitted and not yet yielded (bounded memory).

        Results that finish ahead of a slower item wait for their turn while the workers go on
        with later items: one slow item (a slice read by OCR) holds up the results, not the
        other workers, until that many are held."""
        if self._pool is None:
            for item in items:
                yield fn(item)
            return
        running = window or self.window
        pending: deque[Future] = deque()
        for item in items:
            while len(pending) >= HELD_PER_WINDOW * running or _busy(pending) >= running:
                if pending[0].done():
                    yield pending.popleft().result()
                else:
                    wait([f for f in pending if not f.done()], return_when=FIRST_COMPLETED)
            pending.append(self._pool.submit(fn, item))
            while pending and pending[0].done():
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def process(self, tasks: list[Task]) -> Iterator[TaskResult]:
        """:func:`process_task` over ``tasks``, results in task order.

        Tasks go to the workers in chunks sized from the time the last chunks took (about
        :data:`CHUNK_SECONDS` each, one task at first): a task that takes milliseconds (a small
        PNG) would otherwise spend as much time in the pool's hand-offs (submit, pickling, the
        pool's manager thread, a future) as in the worker, and keep the parent busier than the
        workers; a slow task (a volume) still goes alone."""
        if self._pool is None:
            yield from (process_task(t, self.state) for t in tasks)
            return
        sizing = _ChunkSizing()
        for results, seconds in self.map_ordered(_process_chunk, sizing.chunks(tasks)):
            sizing.took(len(results), seconds)
            yield from results


#: seconds of work per chunk of tasks sent to a worker (see :meth:`WorkerPool.process`)
CHUNK_SECONDS = 0.05
MAX_CHUNK = 32


def _process_chunk(tasks: list[Task]) -> tuple[list[TaskResult], float]:
    """:func:`process_task` over a chunk, with the seconds it took."""
    start = time.perf_counter()
    results = [process_task(t) for t in tasks]
    return results, time.perf_counter() - start


class _ChunkSizing:
    """Chunks of tasks sized from the mean time per task of the chunks done so far."""

    def __init__(self) -> None:
        self.tasks, self.seconds = 0, 0.0

    def took(self, n: int, seconds: float) -> None:
        self.tasks, self.seconds = self.tasks + n, self.seconds + seconds

    def size(self) -> int:
        if not self.tasks:
            return 1
        per_task = self.seconds / self.tasks
        return max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / max(per_task, 1e-6))))

    def chunks(self, tasks: list[Task]) -> Iterator[list[Task]]:
        k = 0
        while k < len(tasks):
            n = self.size()
            yield tasks[k:k + n]
            k += n
