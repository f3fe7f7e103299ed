"""Work spread over this process and worker processes (core.workers): results in order, and
this process never idles behind a worker that is still starting or has a slower call."""

from __future__ import annotations

import os
import time

from medtrinity_assets.core.workers import ordered_in_workers


def _timed(i: int, seconds: float) -> tuple[int, int, float, float]:
    start = time.time()
    time.sleep(seconds)
    return i, os.getpid(), start, time.time()


def test_results_come_in_order_and_this_process_goes_on_while_a_worker_is_busy():
    calls = [(i, 0.8 if i == 1 else 0.05) for i in range(9)]
    out = list(ordered_in_workers(_timed, calls, 2))
    assert [r[0] for r in out] == list(range(9))
    here = [r for r in out if r[1] == os.getpid()]
    there = [r for r in out if r[1] != os.getpid()]
    assert there and here[0][0] == 0
    slow_end = out[1][3]
    # a later call started here before the worker's slow call ended (a lockstep pool would wait)
    assert any(i > 1 and start < slow_end for i, _, start, _ in here)


def test_one_worker_or_no_calls():
    assert [r[0] for r in ordered_in_workers(_timed, [(i, 0.0) for i in range(3)], 1)] == [0, 1, 2]
    assert list(ordered_in_workers(_timed, [], 2)) == []
    assert [r[0] for r in ordered_in_workers(_timed, iter([(0, 0.0)]), 3)] == [0]
