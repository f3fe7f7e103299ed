"""Work spread over this process and a few worker processes (the CPU stages of a large shard)."""

from __future__ import annotations

import gc
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

#: images a streaming stage (ROIs, descriptions, their checks) handles at once: bounds its memory
#: whatever the shard's size (a ROI's caption input is about 9 KB as Python objects; 1,000 images
#: hold a few thousand ROIs)
IMAGES_PER_SLICE = 1000


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused over one slice of work (reference counting still
    frees what the slice lets go; what cycles it leaves are collected once it ends).

    A slice of descriptions or of their checks makes millions of short-lived tuples, lists and
    dicts: the collector ran a few hundred times per 6,000 ROIs and walked the long-lived indexes
    (ontology, vocabulary, memos) at each full pass, 10-20% of either stage's time. A slice is
    bounded (:data:`IMAGES_PER_SLICE`), so what it keeps is too."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def image_slices(record_ids: Sequence[str], images: int = IMAGES_PER_SLICE, workers: int = 1) -> list[list[str]]:
    """The distinct ``record_ids``, in order of first appearance, in slices of ``images`` (the
    unit a streaming stage reads, handles and writes at once); cut smaller when that would give
    fewer slices than ``workers`` (a small shard still fills the cores)."""
    unique = list(dict.fromkeys(record_ids))
    if workers > 1 and -(-len(unique) // max(1, images)) < workers:
        images = -(-len(unique) // workers)
    return [unique[a : a + images] for a in range(0, len(unique), max(1, images))]


def ordered_in_workers(fn: Callable[..., Any], calls: Iterable[tuple], workers: int) -> Iterator[Any]:
    """``fn(*args)`` for each of ``calls``, yielded in order, on this process and ``workers - 1``
    worker processes started once for all.

    Each process takes the next call as soon as it is free: a worker has one call queued behind
    the one it runs, and while a worker still starts up (or has a slower call) this process goes
    on with the calls after it instead of waiting. A result that finishes before its turn is held
    until then; at most ``2 * workers`` calls are held, queued or running at once, so memory stays
    bounded whatever the number of calls."""
    if workers <= 1:
        for args in calls:
            yield fn(*args)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx) as pool:
        yield from _Ordered(fn, calls, pool, workers).results()


class _Ordered:
    """The bookkeeping of :func:`ordered_in_workers`: calls are numbered as they are taken; a
    call is run here or handed to the pool; results are yielded by number."""

    def __init__(self, fn: Callable[..., Any], calls: Iterable[tuple], pool: ProcessPoolExecutor, workers: int) -> None:
        self.fn, self.pool, self.workers = fn, pool, workers
        self.pending = iter(calls)
        self.exhausted = False
        self.taken = 0  # calls taken so far (the next one's number)
        self.futures: dict[int, Future] = {}
        self.done: dict[int, Any] = {}

    def _take(self) -> tuple[int, tuple] | None:
        if not self.exhausted:
            args = next(self.pending, None)
            if args is not None:
                self.taken += 1
                return self.taken - 1, args
            self.exhausted = True
        return None

    def _held(self) -> int:
        return len(self.futures) + len(self.done)

    def _room(self) -> bool:
        return self._held() < 2 * self.workers

    def _fill_pool(self) -> None:
        while len(self.futures) < 2 * (self.workers - 1) and self._room():
            call = self._take()
            if call is None:
                return
            self.futures[call[0]] = self.pool.submit(self.fn, *call[1])

    def _run_here(self, call: tuple[int, tuple]) -> None:
        self._fill_pool()  # the workers start on later calls meanwhile
        self.done[call[0]] = self.fn(*call[1])

    def results(self) -> Iterator[Any]:
        head = 0
        while True:
            for k in [k for k, f in self.futures.items() if f.done()]:
                self.done[k] = self.futures.pop(k).result()
            if head in self.done:
                yield self.done.pop(head)
                head += 1
                continue
            if head == self.taken:  # nobody has the next call: run it here
                call = self._take()
                if call is None:
                    return
                self._run_here(call)
                continue
            self._fill_pool()
            call = self._take() if self._room() else None
            if call is not None:  # a worker has the next call: go on with a later one
                self._run_here(call)
            else:
                wait([self.futures[head]], return_when=FIRST_COMPLETED)
