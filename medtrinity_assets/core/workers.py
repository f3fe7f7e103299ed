"""Work spread over this process and a few worker processes (the CPU stages of a large shard)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def in_workers(fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
    """``[fn(*args) for args in calls]``: the first call in this process, the others in one worker
    process each, started meanwhile (one process fewer than slices: less memory, same cores)."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=max(1, len(calls) - 1), mp_context=ctx) as pool:
        futures = [pool.submit(fn, *args) for args in calls[1:]]
        first = fn(*calls[0])
        return [first, *(f.result() for f in futures)]
