"""Work spread over this process and worker processes (core.workers): results in order, and
this process never idles behind a worker that is still starting or has a slower call."""

from __future__ import annotations

import os
import time
from pathlib import Path

from medtrinity_assets.core.workers import image_slices, ordered_in_workers
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.ingest.worker import HELD_PER_WINDOW, WorkerPool


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


def _after_the_others(item: tuple[str, int, int]) -> str:
    """Item 0 finishes only once items 1..``others`` have run (or gives up after 30 s); the others
    mark that they ran."""
    folder, i, others = item
    if i:
        Path(folder, f"{i}.ran").touch()
        return "ran"
    deadline = time.time() + 30
    while time.time() < deadline:
        if all(Path(folder, f"{k}.ran").exists() for k in range(1, others + 1)):
            return "released"
        time.sleep(0.02)
    return "timed out"


def test_ingestion_pool_goes_on_behind_a_slow_item(tmp_path):
    """The ingestion pool yields in order, but a slow item (a slice read by OCR) does not stop
    the other workers: later items run while it does, up to ``HELD_PER_WINDOW × window`` held
    results (a pool that submitted only ``window`` items past the slow one would wait forever
    here: its item 0 needs three later items to have run, with a window of two)."""
    spec = SourceSpec(name="pool_test", layout="image_folder", root=str(tmp_path), modality="CT", organ="abdomen",
                      license="MIT")
    window, others = 2, 3
    assert others < HELD_PER_WINDOW * window
    items = [(str(tmp_path), i, others) for i in range(others + 3)]
    with WorkerPool(2, spec, tmp_path) as pool:
        out = list(pool.map_ordered(_after_the_others, items, window=window))
    assert out == ["released"] + ["ran"] * (others + 2)


def test_image_slices_fill_the_workers_of_a_small_shard():
    ids = [f"r{i % 2500}" for i in range(5000)]  # each image twice: slices hold distinct ids
    assert [len(s) for s in image_slices(ids, 1000)] == [1000, 1000, 500]
    assert [len(s) for s in image_slices(ids, 1000, workers=2)] == [1000, 1000, 500]  # enough slices already
    assert [len(s) for s in image_slices(ids[:1500], 1000, workers=2)] == [1000, 500]
    assert [len(s) for s in image_slices(ids[:5], 1000, workers=2)] == [3, 2]
    assert [len(s) for s in image_slices(ids[:5], 1000, workers=4)] == [2, 2, 1]
    assert image_slices([], 1000, workers=2) == []
