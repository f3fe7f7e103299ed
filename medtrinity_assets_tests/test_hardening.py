"""Registry files, source roots and worker processes are untrusted and fallible: each case ends
safe or with a clear, specific message, and the other sources of the run still build."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import psutil
import pytest
from PIL import Image

from medtrinity_assets.cli import main
from medtrinity_assets.core.storage import file_mode
from medtrinity_assets.ingest import ingest_source
from medtrinity_assets.ingest.registry import RegistryError, load_source_file
from medtrinity_assets.ingest.remote import RootPolicy, RootRefused, prepare_root
from medtrinity_assets_tests.sources_builders import make_spec, pydicom_file

REPO = Path(__file__).resolve().parent.parent


def _yaml(reg: Path, name: str, body: str) -> Path:
    reg.mkdir(parents=True, exist_ok=True)
    path = reg / f"{name}.yaml"
    path.write_text(body)
    return path


def _folder(root: Path, n: int = 2, size: tuple[int, int] = (40, 56)) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(root)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(root / "images" / f"img{i}.png")
    return root


def _good(reg: Path, tmp_path: Path) -> None:
    root = _folder(tmp_path / "good")
    _yaml(reg, "good", f"name: good\nlayout: image_folder\nroot: {root}\nmodality: X-ray\norgan: chest\nlicense: t\n")


def _build(reg: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = main(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images", *extra])
    return code, o.getvalue(), e.getvalue()


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- remote roots -----------------------------------------------------------------------


def test_file_url_to_etc_is_refused_and_nothing_is_copied(tmp_path, home):
    reg, out = tmp_path / "reg", tmp_path / "out"
    _good(reg, tmp_path)
    _yaml(reg, "etc", "name: etc\nlayout: dicom\nroot: file:///etc\nmodality: CT\norgan: head\nlicense: t\n")
    code, stdout, stderr = _build(reg, out)
    assert code == 1
    assert "FAILED etc (ingest): source 'etc': root file:///etc is a local URL outside the allowed folders" in stderr
    assert not (out / "_remote_cache").exists() or not any((out / "_remote_cache").iterdir())
    assert (out / "preprocessed_images" / "good.parquet").exists()
    assert "Traceback" not in stderr


@pytest.fixture()
def memory_root():
    fs = fsspec.filesystem("memory")
    data = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="PNG")
    fs.pipe("/bucket/src/images/a.png", buf.getvalue())
    fs.pipe("/bucket/src/secrets/keys.txt", b"not for the mirror")
    fs.pipe("/bucket/nolayout/other/a.png", buf.getvalue())
    yield "memory://bucket"
    fs.rm("/bucket", recursive=True)


def _spec(root: str, name: str = "remote") -> object:
    from medtrinity_assets.ingest.registry import SourceSpec

    return SourceSpec(name=name, layout="image_folder", root=root, modality="X-ray", organ="chest", license="t")


def test_remote_protocols_must_be_enabled(memory_root, tmp_path):
    with pytest.raises(RootRefused, match="protocol 'memory' .* is not enabled"):
        prepare_root(_spec(f"{memory_root}/src"), tmp_path / "cache", RootPolicy(), ("images",), ("images", "masks"))
    assert not (tmp_path / "cache").exists()
    local = prepare_root(
        _spec(f"{memory_root}/src"), tmp_path / "cache", RootPolicy(frozenset({"memory"})), ("images",), ("images", "masks")
    )
    mirrored = sorted(p.relative_to(local.root).as_posix() for p in Path(local.root).rglob("*") if p.is_file())
    assert mirrored == ["images/a.png"]  # only what the layout reads
    assert (Path(local.root) / "images" / "a.png").stat().st_mode & 0o777 == file_mode()


def test_nothing_is_mirrored_before_the_layout_folder_is_found(memory_root, tmp_path):
    from medtrinity_assets.ingest.readers import SourceLayoutMissing

    with pytest.raises(SourceLayoutMissing, match="no images/ folder"):
        prepare_root(
            _spec(f"{memory_root}/nolayout"), tmp_path / "cache", RootPolicy(frozenset({"memory"})), ("images",), None
        )
    assert not (tmp_path / "cache" / "remote").exists()


def test_local_url_inside_an_allowed_base_is_read_in_place(tmp_path):
    root = _folder(tmp_path / "data" / "src")
    policy = RootPolicy(frozenset(), (str(tmp_path / "data"),))
    spec = prepare_root(_spec(f"file://{root}"), tmp_path / "cache", policy)
    assert spec.root == str(root.resolve()) and not (tmp_path / "cache").exists()
    with pytest.raises(RootRefused, match="outside the allowed folders"):
        prepare_root(_spec("file:///etc"), tmp_path / "cache", policy)


def test_a_failed_source_leaves_no_mirror(memory_root, tmp_path, dagster_instance, monkeypatch):
    import dagster as dg

    from medtrinity_assets.definitions import build_definitions
    from medtrinity_assets.defs.resources import OutputStorage, SourceRegistry, default_resources

    reg, out = tmp_path / "reg", tmp_path / "out"
    _yaml(reg, "mem", f"name: mem\nlayout: image_folder\nroot: {memory_root}/src\nmodality: X-ray\norgan: chest\nlicense: t\n")
    resources = {
        **default_resources(),
        "storage": OutputStorage(out_dir=str(out)),
        "registry": SourceRegistry(registry_dir=str(reg), remote_protocols=["memory"]),
    }

    def boom(*a, **k):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr("medtrinity_assets.ingest.ingest_source", boom)
    dagster_instance.add_dynamic_partitions("sources", ["mem"])
    defs = build_definitions(resources)
    result = dg.materialize(
        [a for a in defs.assets if "source_manifest" in {k.to_user_string() for k in a.keys}],
        partition_key="000|mem",
        instance=dagster_instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    assert not (out / "_remote_cache" / "mem").exists()


# -- registry files ---------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_quickly_without_memory(tmp_path):
    levels = ["a0: &a0 [" + ",".join(["x"] * 10) + "]"]
    for i in range(1, 8):
        levels.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    body = "name: h_bomb\nlayout: dicom\nroot: .\nmodality: CT\norgan: head\nlicense: t\n" + "\n".join(levels)
    path = _yaml(tmp_path / "reg", "h_bomb", body + "\nlabels: {1: *a7}\n")
    assert path.stat().st_size < 1024
    rss = psutil.Process().memory_info().rss
    started = time.time()
    with pytest.raises(RegistryError, match="h_bomb.yaml: not valid YAML: anchors and aliases"):
        load_source_file(path)
    assert time.time() - started < 1.0 and psutil.Process().memory_info().rss - rss < 50e6


def test_registry_limits_name_the_file_and_field(tmp_path):
    reg = tmp_path / "reg"
    cases = {
        "nl": ('name: "h_nl\\n"\n', "field 'name'"),
        "lst": ("name: lst\nlabels: {1: [cyst, nodule]}\n", "field 'labels"),
        "big": ("name: big\ndescription: '" + "x" * 70_000 + "'\n", "larger than 64 KiB"),
    }
    for stem, (head, expected) in cases.items():
        path = _yaml(reg, stem, head + "layout: dicom\nroot: .\nmodality: CT\norgan: head\nlicense: t\n")
        with pytest.raises(RegistryError, match=f"{stem}.yaml: .*{expected}"):
            load_source_file(path)


def test_one_bad_registry_file_never_stops_the_others(tmp_path, home):
    reg, out = tmp_path / "reg", tmp_path / "out"
    _good(reg, tmp_path)
    _yaml(reg, "bomb", "name: bomb\nlayout: dicom\nroot: .\nmodality: CT\norgan: head\nlicense: t\nx: &a [1]\ny: *a\n")
    code, stdout, stderr = _build(reg, out)
    assert code == 1 and "rejected registry file: bomb.yaml" in stderr
    assert (out / "preprocessed_images" / "good.parquet").exists()


# -- masks ------------------------------------------------------------------------------


def _rgb_mask_source(tmp_path: Path) -> Path:
    root = _folder(tmp_path / "rgb", n=1, size=(64, 64))
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[5:20, 5:20] = (255, 0, 0)
    mask[40:60, 40:60] = (0, 255, 0)
    (root / "masks").mkdir()
    Image.fromarray(mask).save(root / "masks" / "img0.png")
    return root


def test_rgb_mask_without_a_colour_map_is_quarantined(tmp_path):
    root = _rgb_mask_source(tmp_path)
    spec = make_spec(tmp_path, "rgb", "image_folder", root, labels={1: "cyst", 2: "nodule"})
    res = ingest_source(spec, tmp_path / "out", workers=1)
    (reason,) = res.manifest["reason"].to_list()
    assert reason.startswith("colour_mask: mask: an RGB mask with 2 colour(s)") and "mask_colours" in reason


def test_rgb_mask_with_a_colour_map_gives_one_label_per_colour(tmp_path):
    from medtrinity_assets.rois import build_roi_set

    root = _rgb_mask_source(tmp_path)
    spec = make_spec(
        tmp_path, "rgb", "image_folder", root, labels={1: "cyst", 2: "nodule"}, mask_colours={1: [255, 0, 0], 2: [0, 255, 0]}
    )
    res = ingest_source(spec, tmp_path / "out", workers=1)
    assert res.images["mask_labels"].to_list() == [[1, 2]]
    rois = build_roi_set(res.images, spec, tmp_path / "out").rois
    assert sorted(rois.filter(pl.col("status") == "ok")["label"].to_list()) == ["cyst", "nodule"]


# -- per-file faults --------------------------------------------------------------------


def test_dangling_link_and_vanishing_file_stay_per_file(tmp_path):
    from medtrinity_assets.ingest.readers import reader_for

    root = tmp_path / "dcm"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"):
        shutil.copy(pydicom_file(name), root / name)
    (root / "dangling.dcm").symlink_to(root / "nowhere.dcm")
    spec = make_spec(tmp_path, "dcm", "dicom", root, modality="CT")

    def vanishing_map(fn, items):  # the file goes between the listing and its header read
        (root / "MR_small.dcm").unlink(missing_ok=True)
        return map(fn, items)

    scan = reader_for("dicom").scan(spec, root, vanishing_map)
    reasons = {t.relpath: getattr(t, "reason", "") for t in scan.tasks}
    assert reasons["dangling.dcm"].startswith("unreadable: FileNotFoundError")
    assert reasons["MR_small.dcm"].startswith("unreadable: FileNotFoundError")
    res = ingest_source(spec, tmp_path / "out", workers=1)
    statuses = dict(zip(res.manifest["relpath"], res.manifest["status"], strict=True))
    assert statuses["CT_small.dcm"] == "ok" and statuses["dangling.dcm"] == "quarantined"


# -- messages carry the cause -----------------------------------------------------------


def test_huge_dicom_header_keeps_its_numbers(tmp_path):
    import pydicom

    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 60000
    root = tmp_path / "big"
    root.mkdir()
    ds.save_as(root / "big.dcm")
    res = ingest_source(make_spec(tmp_path, "big", "dicom", root, modality="CT"), tmp_path / "out", workers=1)
    assert res.manifest["reason"].to_list() == ["too_many_pixels: 60000x60000x1 > max_pixels 200000000"]


def _png_with_ztxt(path: Path, inflated: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    body = b"Comment\x00\x00" + zlib.compress(b"x" * inflated, 9)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body + zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    path.write_bytes(png[:33] + chunk + png[33:])  # after the IHDR chunk


def test_text_chunk_bomb_reason_keeps_the_decoder_message(tmp_path):
    root = tmp_path / "z"
    (root / "images").mkdir(parents=True)
    _png_with_ztxt(root / "images" / "bomb.png", 200 * 1024 * 1024)
    res = ingest_source(make_spec(tmp_path, "z", "image_folder", root), tmp_path / "out", workers=1)
    (reason,) = res.manifest["reason"].to_list()
    assert reason.startswith("undecodable: ValueError: ") and "too large" in reason.lower()


def test_multipage_tiff_pages_are_frames_with_their_count(tmp_path):
    root = tmp_path / "tif"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    pages = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(1000)]
    pages.append(Image.fromarray(np.zeros((4, 4), np.uint8)))  # a thumbnail of another size
    pages[0].save(root / "images" / "stack.tif", save_all=True, append_images=pages[1:])
    spec = make_spec(tmp_path, "tif", "image_folder", root, slicing={"stride": 1})
    res = ingest_source(spec, tmp_path / "out", workers=1)
    ok = res.manifest.filter(pl.col("status") == "ok")
    assert set(ok["depth"]) == {1000} and set(ok["slice_axis"]) == {"frame"}
    assert ok["slice_index"].n_unique() == ok.height == res.images.height
    assert res.warnings == {"pages_skipped": 1}


def test_disk_full_prints_the_innermost_cause(tmp_path, home, monkeypatch):
    reg, out = tmp_path / "reg", tmp_path / "out"
    _good(reg, tmp_path)
    real = __import__("medtrinity_assets.core.tables", fromlist=["x"]).TableContract.write

    def full(self, df, out_dir, source=None):
        if self.name == "preprocessed_images":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, df, out_dir, source)

    monkeypatch.setattr("medtrinity_assets.core.tables.TableContract.write", full)
    code, _, stderr = _build(reg, out)
    assert code == 1
    assert "FAILED good (ingest): OSError: [Errno 28] No space left on device" in stderr


# -- processes and files ----------------------------------------------------------------


def test_kill_9_leaves_no_worker_and_the_rerun_no_temp_file(tmp_path):
    reg, out = tmp_path / "reg", tmp_path / "out"
    root = _folder(tmp_path / "many", n=400, size=(384, 384))
    _yaml(reg, "many", f"name: many\nlayout: image_folder\nroot: {root}\nmodality: X-ray\norgan: chest\nlicense: t\n")
    stray = out / "images" / "ab" / ".abcdef.png.999999.k3j4h5g6.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a file")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"),
           "TMPDIR": str(tmp_path)}  # a process killed with -9 leaves its pool's socket folder there
    cmd = [sys.executable, "-m", "medtrinity_assets.cli", "build", "--sources", str(reg), "--out", str(out),
           "--until", "preprocessed_images", "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(family) < 3:  # forkserver and two workers at least
        time.sleep(0.2)
        family = parent.children(recursive=True)
    assert len(family) >= 3, "the build never started its workers"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], [p.cmdline()[:3] for p in alive]
    code = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300).returncode
    assert code == 0
    assert not [p for p in out.rglob(".*.tmp")] and not stray.exists()


def test_one_permission_policy_for_tables_images_and_masks(tmp_path):
    root = _rgb_mask_source(tmp_path)
    spec = make_spec(tmp_path, "p", "image_folder", root, mask_colours={1: [255, 0, 0], 2: [0, 255, 0]})
    out = tmp_path / "out"
    ingest_source(spec, out, workers=1)
    files = [p for p in out.rglob("*") if p.is_file() and "_private" not in p.parts]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {file_mode()}
    private = [p for p in (out / "_private").rglob("*") if p.is_file()]
    assert {p.stat().st_mode & 0o777 for p in private} == {0o600}


def test_memory_errors_name_what_was_being_done(tmp_path, home, monkeypatch):
    path = _yaml(tmp_path / "reg1", "h_bomb", "name: h_bomb\nlayout: dicom\nroot: .\nmodality: CT\norgan: head\nlicense: t\n")

    def no_memory(*a, **k):
        raise MemoryError

    with monkeypatch.context() as m:
        m.setattr("medtrinity_assets.ingest.registry.yaml.load", no_memory)
        with pytest.raises(RegistryError, match="h_bomb.yaml: MemoryError while reading it"):
            load_source_file(path)
    reg, out = tmp_path / "reg2", tmp_path / "out"
    _good(reg, tmp_path)
    monkeypatch.setattr("medtrinity_assets.ingest.pipeline._tables", no_memory)
    code, _, stderr = _build(reg, out)
    assert code == 1 and "FAILED good (ingest): MemoryError" in stderr and "DagsterExecution" not in stderr


def test_python_object_tags_are_refused(tmp_path):
    path = _yaml(tmp_path / "reg", "obj", "name: obj\nlayout: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RegistryError, match="obj.yaml: not valid YAML"):
        load_source_file(path)


def test_two_expert_trainings_into_one_root_take_turns_and_a_dead_holder_frees_the_lock(tmp_path, monkeypatch):
    """Expert training replaces a whole folder through one staging folder: two at once (a build
    while the UI's automation starts one) would mix their files. They take turns on a lock, which
    a killed holder does not keep."""
    import threading

    from medtrinity_assets.core.storage import held_lock
    from medtrinity_assets.segmentation import training

    spans: list[tuple[float, float]] = []

    def slow(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.3)
        spans.append((start, time.monotonic()))

    monkeypatch.setattr(training, "_train_experts", slow)
    said: list[str] = []
    runs = [threading.Thread(target=training.train_experts, args=([], tmp_path, None), kwargs={"log": said.append})
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1, "the second training started only once the first had finished"
    assert len(said) == 1 and "waiting" in said[0], "the one that waits says why"

    lock = tmp_path / ".expert_models.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from medtrinity_assets.core.storage import held_lock\n"
        f"with held_lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.kill()
        holder.wait(timeout=10)
        start = time.monotonic()
        with held_lock(lock):
            assert time.monotonic() - start < 5
    finally:
        holder.kill()


def test_two_runs_of_one_checkpoint_take_turns_and_evaluation_does_not_wait(tmp_path, monkeypatch):
    """LLaVA-Tri and each set's fine-tunes write through fixed .writing and .state folders: two
    runs of one checkpoint at once take turns (the lock is held around the torchrun job, not in
    it); other sets' fine-tunes and evaluations do not wait."""
    import threading
    from types import SimpleNamespace

    from medtrinity_assets.defs import training_launch
    from medtrinity_assets.llava import jobs

    spans: dict[str, list[tuple[float, float]]] = {}

    def slow(job, log):
        start = time.monotonic()
        time.sleep(0.3)
        spans.setdefault(f"{job['task']}:{job.get('vqa_set')}", []).append((start, time.monotonic()))
        return {}

    monkeypatch.setattr(jobs, "run_job", slow)
    monkeypatch.setattr(training_launch, "job_for", lambda training, task, out, args: {"task": task, **args})
    said: list[str] = []
    context = SimpleNamespace(log=SimpleNamespace(info=said.append))
    training = SimpleNamespace(launcher="in_process")
    calls = [("pretrain", {}), ("pretrain", {}), ("finetune", {"vqa_set": "a"}), ("finetune", {"vqa_set": "b"}),
             ("evaluate", {"vqa_set": "a"}), ("evaluate", {"vqa_set": "a"})]
    runs = [threading.Thread(target=training_launch.run_training, args=(context, training, task, tmp_path, args))
            for task, args in calls]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    (a0, a1), (b0, b1) = sorted(spans["pretrain:None"])
    assert b0 >= a1, "the second pretraining waited for the first"
    first = min(s for s, _ in spans["pretrain:None"])
    together = [spans["finetune:a"][0][0], spans["finetune:b"][0][0], *(s for s, _ in spans["evaluate:a"])]
    assert all(s - first < 0.25 for s in together), "other locks and evaluations started at once"
    assert sum("waiting" in m for m in said) == 1

