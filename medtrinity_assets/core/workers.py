"""Work spread over this process and a few worker processes (the CPU stages of a large shard)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import Any

#: images a streaming stage (ROIs, descriptions, their checks) handles at once: bounds its memory
#: whatever the shard's size (a ROI's caption input is about 9 KB as Python objects; 1,000 images
#: hold a few thousand ROIs)
IMAGES_PER_SLICE = 1000


def image_slices(record_ids: Sequence[str], images: int = IMAGES_PER_SLICE) -> list[list[str]]:
    """The distinct ``record_ids``, in order of first appearance, in slices of ``images`` (the
    unit a streaming stage reads, handles and writes at once)."""
    unique = list(dict.fromkeys(record_ids))
    return [unique[a : a + images] for a in range(0, len(unique), max(1, images))]


def in_workers(fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
    """``[fn(*args) for args in calls]``: the first call in this process, the others in one worker
    process each, started meanwhile (one process fewer than slices: less memory, same cores)."""
    return list(ordered_in_workers(fn, calls, len(calls)))


def ordered_in_workers(fn: Callable[..., Any], calls: Iterable[tuple], workers: int) -> Iterator[Any]:
    """``fn(*args)`` for each of ``calls``, yielded in order: of every ``workers`` consecutive calls
    the first runs in this process and the others in ``workers - 1`` worker processes started
    once for all; so at most ``workers`` calls (their arguments and results) are in memory."""
    if workers <= 1:
        for args in calls:
            yield fn(*args)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    pending = iter(calls)
    with ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx) as pool:
        while batch := list(islice(pending, workers)):
            futures = [pool.submit(fn, *args) for args in batch[1:]]
            yield fn(*batch[0])
            for future in futures:
                yield future.result()
