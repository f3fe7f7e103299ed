"""Work spread over this process and worker processes (core.workers): results in order, and
this process never idles behind a worker that is still starting or has a slower call."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtrinity_assets.captioning.quality import _checked_rows
from medtrinity_assets.core.workers import collector_paused, image_slices, ordered_in_workers
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


def test_ingestion_workers_start_with_the_vocabulary_loaded():
    """Every header's modality is read against the packaged vocabulary: the forkserver's preload
    loads it once (about 0.09 s that each worker of every pool paid on its first task). Run in a
    fresh interpreter, as the forkserver is."""
    probe = ("import medtrinity_assets.ingest.readers.preload\n"
             "from medtrinity_assets.core.vocabulary import vocabulary\n"
             "print(vocabulary.cache_info().currsize)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "1"


def test_image_slices_fill_the_workers_of_a_small_shard():
    ids = [f"r{i % 2500}" for i in range(5000)]  # each image twice: slices hold distinct ids
    assert [len(s) for s in image_slices(ids, 1000)] == [1000, 1000, 500]
    assert [len(s) for s in image_slices(ids, 1000, workers=2)] == [1000, 1000, 500]  # enough slices already
    assert [len(s) for s in image_slices(ids[:1500], 1000, workers=2)] == [1000, 500]
    assert [len(s) for s in image_slices(ids[:5], 1000, workers=2)] == [3, 2]
    assert [len(s) for s in image_slices(ids[:5], 1000, workers=4)] == [2, 2, 1]
    assert image_slices([], 1000, workers=2) == []


def test_chunk_sizing_follows_the_time_per_task():
    """Tasks go to the ingestion workers one at a time until their cost is known, then in chunks of
    about CHUNK_SECONDS (a small PNG: many at once; a volume: alone), every task exactly once."""
    from medtrinity_assets.ingest.worker import CHUNK_SECONDS, MAX_CHUNK, _ChunkSizing

    fast, slow = _ChunkSizing(), _ChunkSizing()
    assert fast.size() == 1
    fast.took(10, 10 * 0.001)  # 1 ms a task
    assert fast.size() == min(MAX_CHUNK, int(CHUNK_SECONDS / 0.001))
    slow.took(2, 2 * 3.0)  # 3 s a task
    assert slow.size() == 1
    tasks = list(range(100))
    chunks = list(fast.chunks(tasks))
    assert [t for c in chunks for t in c] == tasks and max(map(len, chunks)) == fast.size()


def test_ingestion_pool_keeps_task_order_across_chunks(tmp_path):
    """Through the pool, results come back one per task and in task order, whatever the chunks."""
    import numpy as np
    from PIL import Image

    from medtrinity_assets.ingest.readers import reader_for

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / "images" / f"i{i:03d}.png")
    spec = SourceSpec(name="chunks", layout="image_folder", root=str(tmp_path), modality="CT", organ="abdomen",
                      license="MIT")
    tasks = sorted(reader_for("image_folder").scan(spec, tmp_path, map).tasks, key=lambda t: t.sort_key)
    assert len(tasks) == 40
    with WorkerPool(2, spec, tmp_path) as pool:
        results = list(pool.process(tasks))
    assert [r.candidates[0].manifest["relpath"] for r in results] == [t.relpath for t in tasks]


def test_content_files_are_written_once_durably_with_the_output_mode(tmp_path):
    import shutil

    from medtrinity_assets.core import storage

    files = [(str(tmp_path / "images" / "ab" / f"ab{i}.png"), bytes([i]) * 100) for i in range(3)]
    assert storage.write_content_files(files) == 3
    assert storage.write_content_files(files) == 0  # present: left as they are
    for path, data in files:
        assert Path(path).read_bytes() == data
        assert Path(path).stat().st_mode & 0o777 == storage.file_mode()
    assert not [p for p in (tmp_path / "images" / "ab").iterdir() if p.name.startswith(".")]  # no temporary left
    shutil.rmtree(tmp_path / "images")  # a folder this process made, removed since: made again
    assert storage.write_content_files(files[:1]) == 1


def test_a_content_batch_shows_files_only_once_synced(tmp_path, monkeypatch):
    """Files of a batch stay under temporary names until the batch is synced and committed, then
    appear complete with the output mode; a path already there (or twice in a batch) is written once;
    without syncfs every file is fsynced; temporaries left by a crash are swept."""
    from concurrent.futures import ThreadPoolExecutor

    from medtrinity_assets.core import storage

    folder = tmp_path / "masks" / "cd"
    files = [(str(folder / f"cd{i}.png"), bytes([i]) * 50) for i in range(10)]
    batch = storage.ContentBatch(tmp_path, size=4)
    assert batch.write(files[:3]) == 0 and not [p for p in folder.iterdir() if not p.name.startswith(".")]
    assert batch.write(files[3:5] + files[3:4]) == 5  # full: synced and renamed; the repeat dropped
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: batch.write([f]), files[5:]))
    batch.commit()
    assert batch.written == 10 and batch.commit() == 0
    for path, data in files:
        assert Path(path).read_bytes() == data and Path(path).stat().st_mode & 0o777 == storage.file_mode()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert storage.ContentBatch(tmp_path).write(files) == 0  # present: nothing written

    synced = []
    monkeypatch.setattr(storage, "_syncfs", lambda: None)
    monkeypatch.setattr(storage, "_sync_file", lambda path: synced.append(path))
    other = storage.ContentBatch(tmp_path)
    other.write([(str(tmp_path / "images" / "ef" / "ef1.png"), b"x")])
    assert other.commit() == 1 and len(synced) == 1 and synced[0].endswith(".tmp")

    crashed = storage.ContentBatch(tmp_path)
    crashed.write([(str(tmp_path / "images" / "ef" / "ef2.png"), b"y")])  # never committed
    os.utime(next((tmp_path / "images" / "ef").glob(".*.tmp")), (0, 0))
    monkeypatch.setattr("psutil.pid_exists", lambda pid: False)  # as after the crashed process is gone
    assert storage.sweep_temp_files(tmp_path) == 1 and not (tmp_path / "images" / "ef" / "ef2.png").exists()


def test_reading_the_file_mode_from_many_threads_leaves_the_umask_alone():
    """Writer threads ask for the output file mode at once; the umask stays what it was."""
    from concurrent.futures import ThreadPoolExecutor

    from medtrinity_assets.core import storage

    old = os.umask(0o027)
    try:
        with ThreadPoolExecutor(8) as pool:
            modes = set(pool.map(lambda _: storage.file_mode(), range(2000)))
        assert modes == {0o640}
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_staged_files_are_named_for_their_owner_and_kept_or_discarded(tmp_path, monkeypatch):
    """A worker stages a file under a temporary name carrying the pid of the process that will
    commit it (so a sweep leaves it while that process runs); a batch commits staged files, a
    duplicate's file is removed, a path already in the store is not staged again, and a name
    another process took is skipped, never overwritten."""
    from medtrinity_assets.core import storage

    owner = os.getppid()  # a live process other than this one
    path = str(tmp_path / "images" / "ab" / "ab1.png")
    tmp = storage.stage_content(path, b"kept", owner)
    assert tmp is not None and f".{owner}." in Path(tmp).name and not Path(path).exists()
    assert storage.sweep_temp_files(tmp_path) == 0 and Path(tmp).exists()  # its owner runs
    dup = storage.stage_content(str(tmp_path / "images" / "ab" / "ab2.png"), b"dropped", owner)
    storage.discard_staged(dup)
    storage.discard_staged(dup)  # twice: nothing to do
    batch = storage.ContentBatch(tmp_path)
    batch.add([(tmp, path)])
    assert batch.commit() == 1 and Path(path).read_bytes() == b"kept"
    assert storage.stage_content(path, b"kept", owner) is None  # in the store already
    assert sorted(p.name for p in (tmp_path / "images" / "ab").iterdir()) == ["ab1.png"]

    taken = str(tmp_path / "images" / "ab" / ".taken.tmp")
    Path(taken).write_bytes(b"another process's")
    names = iter([taken, taken, str(tmp_path / "images" / "ab" / ".free.tmp")])
    monkeypatch.setattr(storage, "_temp_path", lambda folder, name, owner=None: next(names))
    assert storage.stage_content(str(tmp_path / "images" / "ab" / "ab3.png"), b"new").endswith(".free.tmp")
    assert Path(taken).read_bytes() == b"another process's"


def test_ingestion_workers_stage_pngs_and_leave_only_the_kept_ones(tmp_path):
    """With a process pool the workers write the PNGs (only names come back): the store holds
    exactly the files the tables name, an exact and a near duplicate leave nothing behind, no
    temporary file remains, and a second run writes nothing new."""
    import numpy as np
    from PIL import Image

    from medtrinity_assets.ingest.pipeline import ingest_source
    from medtrinity_assets_tests.sources_builders import SKIMAGE_DATA, folder_source, make_spec

    root = folder_source(tmp_path / "src")
    (root / "masks").mkdir()
    cell = np.asarray(Image.open(SKIMAGE_DATA / "cell.png").convert("L"))
    Image.fromarray((cell > np.percentile(cell, 90)).astype(np.uint8)).save(root / "masks" / "cell.png")
    (root / "images" / "cell_copy.png").write_bytes((root / "images" / "cell.png").read_bytes())
    ret = np.asarray(Image.open(SKIMAGE_DATA / "retina.jpg"))
    noisy = np.clip(ret.astype(int) + np.random.default_rng(0).integers(-3, 4, ret.shape), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(root / "images" / "retina_copy.png")
    spec = make_spec(tmp_path, "staged", "image_folder", root, modality="Fundus", organ="retina")
    out = tmp_path / "out"

    res = ingest_source(spec, out, workers=2)
    reasons = {r["relpath"]: r["reason"] or "" for r in res.manifest.to_dicts() if r["status"] == "duplicate"}
    assert reasons["images/cell_copy.png"].startswith("exact_duplicate")
    assert reasons["images/retina_copy.png"].startswith("near_duplicate")
    named = {p for col in ("image_path", "mask_path") for p in res.images[col].to_list() if p}
    stored = {p.relative_to(out).as_posix() for kind in ("images", "masks") for p in (out / kind).rglob("*")
              if p.is_file()}
    assert stored == named and len(named) == res.images.height + 1  # three images, one mask
    assert res.counts["files_written"] == len(named)
    again = ingest_source(spec, out, workers=2)
    assert again.counts["files_written"] == 0 and again.images.equals(res.images)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == named


def test_a_slice_is_read_from_its_own_row_groups_only(tmp_path, monkeypatch):
    """``read_images`` gives the rows a filtered scan gives (row order, every column, ids in no
    row group or in several), reading only the row groups that hold the slice's images; a table
    rewritten in place is indexed anew."""
    import polars as pl

    from medtrinity_assets.core import contract
    from medtrinity_assets.core.tables import CAPTION_QUALITY

    def frame(images: range, tag: str) -> pl.DataFrame:
        rows = [{"record_id": f"img{i:03d}", "roi_id": f"{tag}{i}-{k}", "passed": k == 0} for i in images for k in range(2)]
        return CAPTION_QUALITY.frame(rows)

    out = tmp_path / "out"
    path = CAPTION_QUALITY.write_batches([frame(range(k, k + 10), "a") for k in range(0, 40, 10)], out, "src")
    assert [n for _, n, _ in contract._row_groups(path)] == [20, 20, 20, 20]
    wanted = ["img012", "img031", "img013", "img999"]
    scanned = CAPTION_QUALITY.read(out, "src", where=pl.col("record_id").is_in(wanted))
    assert CAPTION_QUALITY.read_images(out, "src", wanted).equals(scanned) and scanned.height == 6
    assert contract._row_spans(path, set(wanted)) == [(20, 20), (60, 20)]
    assert contract._row_spans(path, {"img011", "img025"}) == [(20, 40)], "adjacent groups: one read"
    assert CAPTION_QUALITY.read_images(out, "src", ["img999"]).height == 0

    read: list[int] = []
    real_slice = pl.LazyFrame.slice
    monkeypatch.setattr(pl.LazyFrame, "slice", lambda self, offset, length=None: (read.append(length), real_slice(self, offset, length))[1])
    CAPTION_QUALITY.read_images(out, "src", ["img005"], columns=["roi_id"])
    assert read == [20], "one row group of four read"

    CAPTION_QUALITY.write_batches([frame(range(0, 40), "b")], out, "src")  # rewritten: one group
    again = CAPTION_QUALITY.read_images(out, "src", ["img005"])
    assert again["roi_id"].to_list() == ["b5-0", "b5-1"] and contract._row_spans(path, {"img005"}) is None


def test_the_costliest_tasks_are_taken_first_and_the_tables_keep_task_order(tmp_path, monkeypatch):
    """An ultrasound whose text is scanned by OCR (about fifty times a small file's work) that sorts
    last is taken first, so it does not run alone at the end of the shard; the rows stay in task order."""
    import shutil

    from medtrinity_assets.ingest import worker
    from medtrinity_assets.ingest.pipeline import ingest_source, work_order
    from medtrinity_assets.ingest.readers.base import Rejected, Task
    from medtrinity_assets_tests.sources_builders import copy_dicoms, make_spec, pydicom_file

    root = copy_dicoms(tmp_path / "src", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm"])
    shutil.copy(pydicom_file("US1_J2KR.dcm"), root / "zz_US1_J2KR.dcm")
    (root / "broken.dcm").write_bytes(b"not a dicom file")
    spec = make_spec(tmp_path, "order", "dicom", root, modality="CT", organ="abdomen")
    taken: list[str] = []
    real = worker.process_task
    monkeypatch.setattr(worker, "process_task", lambda t, state: taken.append(t.relpath) or real(t, state))
    res = ingest_source(spec, tmp_path / "out", workers=1)
    # by pixels (emri: 10 frames of 64x64; CT: 128x128; MR: 64x64), the ultrasound's text scan first
    assert taken == ["zz_US1_J2KR.dcm", "emri_small.dcm", "CT_small.dcm", "MR_small.dcm", "broken.dcm"]
    relpaths = res.manifest["relpath"].to_list()
    assert relpaths == sorted(relpaths) and "zz_US1_J2KR.dcm" in relpaths
    assert res.images["record_id"].to_list() == res.manifest.filter(res.manifest["status"] == "ok")["record_id"].to_list()
    # like tasks keep task order; a rejected input costs nothing
    like = [Task(f"f{i}") for i in (3, 1, 2)]
    assert [t.relpath for _, t in work_order(like)] == ["f3", "f1", "f2"]
    assert [t.relpath for _, t in work_order([Rejected("a", reason="x"), Task("b")])] == ["b", "a"]


def test_a_tasks_cost_follows_the_sources_burned_in_text_policy(tmp_path):
    """Only pixels that will be read by OCR cost the OCR factor: an ultrasound of a source whose
    pixels are declared clean (``burned_in_text: none``) weighs its pixels, and every image of a
    source that asks for a scan weighs as one that is scanned."""
    from medtrinity_assets.ingest.readers import dicom as dcm
    from medtrinity_assets.ingest.readers.dicom_headers import OCR_COST_FACTOR
    from medtrinity_assets_tests.sources_builders import pydicom_file

    headers = [dcm.scan_header(name, pydicom_file(name), 10**9) for name in ("US1_J2KR.dcm", "CT_small.dcm")]
    assert all(h.reason is None for h in headers)
    pixels = {h.relpath: h.rows * h.cols * h.frames for h in headers}

    def costs(policy: str) -> dict[str, float]:
        return {t.relpath: t.cost for t in dcm.group_headers(headers, 10**9, policy)}

    assert costs("auto") == {"US1_J2KR.dcm": OCR_COST_FACTOR * pixels["US1_J2KR.dcm"], "CT_small.dcm": pixels["CT_small.dcm"]}
    assert costs("none") == {k: float(v) for k, v in pixels.items()}
    assert costs("scan") == {k: OCR_COST_FACTOR * v for k, v in pixels.items()}


def test_the_collector_is_paused_over_a_slice_and_enabled_again_after_it():
    """A slice of checks runs without the cyclic collector; it runs again after the slice, also when
    the slice fails, and a slice nested in another leaves it paused until the outer one ends."""
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a slice failed")
    assert gc.isenabled()
    assert _checked_rows([], [], {}, None, (80, 6000)) == [] and gc.isenabled()
