"""Benchmark of stage 1 (preprocessing): slices/s of ``ingest_source`` with a process pool
against a plain single-process loop and a plain process pool (the fair baseline: ``multiprocessing``
with the same number of processes) doing the same decode, window, burned-in text redaction (OCR of
the images that may carry text, as ingestion must), resize and PNG write, and the label slices of
labelled volumes as mask PNGs (the image–mask pairs ingestion writes).

Two sets, side by side in one run:

- ``demo``: pydicom/pydicom-data DICOM files (CT, MR, multi-frame MR, JPEG-LS/RLE/JPEG 2000,
  US colour, NM) and scikit-image photographs, copied ``--demo-copies`` times;
- ``nifti``: generated 3D NIfTI volumes in an MSD layout (default 50 x 256x256x100 int16,
  a smooth phantom with noise and a labelled sphere), sliced axially with stride 1.

Usage::

    python benchmarks/preprocess.py            # full size
    python benchmarks/preprocess.py --small    # 8 x 128x128x40, quick

The first process pool of a process starts a forkserver that imports the preprocessing module once
(a one-time cost per process, about half a second): it is measured apart, so the rates are
steady-state, and the ratios are printed with and without it. Every other pool is timed on both
sides from its making to its workers joined (``ingest_source`` makes its own per call). The plain
pool and ``ingest_source`` with N workers run ``--repeat`` times, alternated, each into a new folder
after the disk has been synced (so that no phase writes back another's pages): their best runs are
compared, and each pair's ratio is printed, as these machines' timings vary by several percent from
run to run. Prints slices/s for the plain loop, ``ingest_source(workers=1)`` and
``ingest_source(workers=N)``, the PNG MiB each wrote, the speed-up ratios (also against the plain
pool that computes, for each image, the perceptual hash and thumbnail that duplicate removal
compares, with ingestion's own functions: work ingestion does and the bare pool does not; against
that pool writing its PNGs with ingestion's encoder settings instead of Pillow's defaults; against
that pool also syncing its files to disk before it returns, as ingestion's are: the same work but
for the tables, the duplicate index and the header pass; against the pool doing ingestion's work:
that pool also reading every DICOM header for the source's identifying values first, finding near
duplicates across files with ingestion's own index as the results come in, writing a Parquet
manifest, one source after the other as the pipeline runs them; for the two-source set, also
against the plain pool run one source at a time), and peak RSS (this process, its largest child,
and the sampled total of the process tree).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sampling import TreeSampler  # noqa: E402 (a sibling module: benchmarks run as scripts)


def make_demo_set(root: Path, copies: int) -> tuple[Path, Path]:
    import skimage
    from pydicom.data import get_testdata_file

    dicom_dir = root / "demo_dicom"
    img_dir = root / "demo_folder" / "images"
    dicom_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "emri_small.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_RLE.dcm",
        "US1_J2KR.dcm",
        "JPEG-LL.dcm",
        "MR2_J2KR.dcm",
        "RG3_J2KR.dcm",
    ]
    sk = Path(skimage.__file__).parent / "data"
    for c in range(copies):
        for n in names:
            p = get_testdata_file(n)
            if p:
                shutil.copy(p, dicom_dir / f"c{c:02d}_{n}")
        for n in ("retina.jpg", "ihc.png", "cell.png", "microaneurysms.png"):
            shutil.copy(sk / n, img_dir / f"c{c:02d}_{n}")
    return dicom_dir, img_dir.parent


def make_nifti_set(root: Path, n: int, shape: tuple[int, int, int]) -> Path:
    import nibabel as nib

    msd = root / "nifti"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s, dtype=np.float32) for s in shape), indexing="ij")
    body = (x**2 + y**2 < 0.8).astype(np.float32)
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for i in range(n):
        cx, cy, cz = rng.uniform(-0.4, 0.4, 3)
        sphere = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < 0.04
        vol = body * (400 + 200 * np.sin(3 * x + i) * np.cos(2 * y)) + sphere * 300
        vol += rng.normal(0, 20, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), msd / "imagesTr" / f"vol_{i:03d}.nii")
        nib.save(nib.Nifti1Image(sphere.astype(np.uint8), affine), msd / "labelsTr" / f"vol_{i:03d}.nii")
    return msd


# ---------------------------------------------------------------------------------------
# the plain single-process loop


#: keyword arguments of the baseline's PNG encoder: Pillow's defaults, as a user writes ``im.save``
#: (``_init_pool`` sets ingestion's own for the pool that also encodes as ingestion does)
_PNG: dict = {"compress_level": 6}


def _init_pool(png: dict) -> None:
    _PNG.clear()
    _PNG.update(png)


def _save(arr: np.ndarray, out: Path, max_side: int, mask: bool = False, hashes: list | None = None) -> None:
    """Resize, PNG-encode and write one image under its content hash; with ``hashes``, an image (not
    a mask) also gets the perceptual hash and thumbnail duplicate removal compares (ingestion's own
    functions, so both sides compute the same)."""
    import hashlib

    from PIL import Image

    im = Image.fromarray(arr)
    s = min(1.0, max_side / max(im.size))
    if s < 1.0:
        method = Image.Resampling.NEAREST if mask else Image.Resampling.LANCZOS  # labels never blend
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), method)
    found = None
    if hashes is not None and not mask:
        from medtrinity_assets.ingest.dedup import grey32, phash_bits, thumb16

        g32 = grey32(np.asarray(im))
        found = (phash_bits(g32), thumb16(g32).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", **_PNG)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    if found is not None:
        hashes.append((*found, sha))
    path = out / sha[:2] / f"{sha}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _percentile_u8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    n = np.clip((a.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    return (np.nan_to_num(n) * 255 + 0.5).astype(np.uint8)


def _without_burned_in_text(ds, u8: np.ndarray) -> np.ndarray:
    """The burned-in text redaction ingestion owes the images that may carry text (ultrasound,
    secondary captures, ``BurnedInAnnotation: YES``; ingestion's ``needs_scan`` decides): the same
    OCR a competent user would have to run on them too (here the project's own :func:`redact_text`,
    so both sides read the same)."""
    from medtrinity_assets.ingest.burned_in import needs_scan
    from medtrinity_assets.privacy.pixels import redact_text

    code = str(ds.get("Modality", ""))
    header = {"dicom_modality": code, "burned_in": str(ds.get("BurnedInAnnotation", ""))}
    return redact_text(u8)[0] if needs_scan(header, code, "auto") else u8  # ingestion's own rule


def plain_loop_dicom(files: list[Path], out: Path, max_side: int, hashes: list | None = None) -> int:
    import pydicom

    count = 0
    for f in files:
        ds = pydicom.dcmread(f, force=False)
        arr = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = arr[None] if frames == 1 else arr
        if arr.ndim == 4:  # colour to grey as Pillow's convert("L") does (ITU-R 601 luma), as ingestion does
            arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        phys = arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        if ds.get("Modality") == "CT":
            lo, hi = -160.0, 240.0
        else:
            lo, hi = (float(v) for v in np.percentile(phys, [0.5, 99.5]))
        for k in range(phys.shape[0]):
            _save(_without_burned_in_text(ds, _percentile_u8(phys[k], lo, hi)), out, max_side, hashes=hashes)
            count += 1
    return count


def plain_loop_images(files: list[Path], out: Path, max_side: int, hashes: list | None = None) -> int:
    from PIL import Image

    for f in files:
        with Image.open(f, formats=["PNG", "JPEG", "TIFF"]) as im:
            arr = np.asarray(im.convert("RGB"))
        _save(arr, out, max_side, hashes=hashes)
    return len(files)


def plain_loop_nifti(files: list[Path], out: Path, max_side: int, hashes: list | None = None) -> int:
    """Each volume's informative slices as PNGs and, where its label volume (``labelsTr/``, as the
    MSD layout pairs them) marks a region on a slice, that label slice as a mask PNG: the pairs a
    user needs for region-level descriptions, as ingestion writes them."""
    import nibabel as nib

    count = 0
    for f in files:
        data = np.asarray(nib.load(f).dataobj)
        label_file = f.parent.parent / "labelsTr" / f.name
        labels = np.asarray(nib.load(label_file).dataobj) if label_file.exists() else None
        lo, hi = (float(v) for v in np.percentile(data[::3, ::3, ::3], [0.5, 99.5]))
        for k in range(data.shape[2]):
            sl = _percentile_u8(data[:, :, k], lo, hi)
            if sl.std() / 255.0 < 0.02:
                continue
            _save(np.ascontiguousarray(np.rot90(sl)), out, max_side, hashes=hashes)
            if labels is not None and labels[:, :, k].any():
                _save(np.ascontiguousarray(np.rot90(labels[:, :, k])).astype(np.uint8), out, max_side, mask=True)
            count += 1
    return count


# ---------------------------------------------------------------------------------------


_PLAIN_LOOPS = {"dicom": plain_loop_dicom, "images": plain_loop_images, "nifti": plain_loop_nifti}


def _plain_task(args: tuple[str, list[Path], Path, int]) -> int:
    kind, files, out, max_side = args
    return _PLAIN_LOOPS[kind](files, out, max_side)


def _hashed_task(args: tuple[str, list[Path], Path, int]) -> tuple[int, list]:
    """:func:`_plain_task` that also hashes each image for duplicate removal: (images, hashes)."""
    kind, files, out, max_side = args
    hashes: list = []
    return _PLAIN_LOOPS[kind](files, out, max_side, hashes), hashes


def _file_task(args: tuple[str, list[Path], Path, int]) -> tuple[str, int, list]:
    """:func:`_hashed_task` with the file it read: (file, images, hashes with each PNG's sha256)."""
    return (str(args[1][0]), *_hashed_task(args))


_IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
                "InstitutionName", "ReferringPhysicianName", "StudyID")


def _header_values(path: Path) -> set[str]:
    """The identifying values in a DICOM file's header (pixels not read): what a user must know of
    the whole source before writing any text from it, as ingestion's header pass collects them."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {str(ds.get(k)) for k in _IDENTIFYING if ds.get(k) not in (None, "")}


def _source_as_ingestion_does(pool: Any, kind: str, files: list[Path], out: Path, max_side: int) -> int:
    """One source with the work ingestion does besides decoding and writing: a header pass for the
    identifying values (DICOM), near duplicates found across files with ingestion's own index as
    the results come in, a manifest table of every image written (Parquet), the files synced."""
    import polars as pl

    from medtrinity_assets.ingest.dedup import NearDuplicateIndex

    identifiers: set[str] = set()
    if kind == "dicom":
        for values in pool.imap_unordered(_header_values, files, chunksize=4):
            identifiers |= values
    index, rows, n = NearDuplicateIndex(4), [], 0
    tasks = [(kind, [f], out, max_side) for f in files]
    for group, (file, count, hashes) in enumerate(pool.imap_unordered(_file_task, tasks, chunksize=1)):
        n += count
        for ph, thumb_bytes, sha in hashes:
            thumb = np.frombuffer(thumb_bytes, np.uint8).reshape(16, 16)
            dup, _ = index.find(sha, ph, group, thumb)
            if dup is None:
                index.add(sha, sha, ph, group, thumb)
            rows.append({"file": file, "sha256": sha, "phash": f"{ph:016x}", "duplicate_of": dup})
    schema = {"file": pl.Utf8, "sha256": pl.Utf8, "phash": pl.Utf8, "duplicate_of": pl.Utf8}
    pl.DataFrame(rows, schema=schema).write_parquet(out / f"manifest_{kind}.parquet")
    os.sync()
    return n


def plain_pool(
    jobs: list[tuple[str, list[Path]]], out: Path, workers: int, max_side: int = 512, hashed: bool = False,
    png: dict | None = None, durable: bool = False, as_ingestion: bool = False,
) -> tuple[int, float]:
    """The fair baseline a competent user would write: the same plain decode, window, resize and
    PNG write, one file per task, over a ``multiprocessing`` pool of ``workers`` processes. Timed as
    ``ingest_source`` is: from making the pool (its workers forked by the warm forkserver, which both
    sides start once, measured apart) to its workers joined. ``hashed``: the workers also compute
    each image's perceptual hash and thumbnail, the work duplicate removal needs (ingestion removes
    near duplicates), and this process keeps the first image of each hash. ``png``: the PNG
    encoder's settings (default: Pillow's). ``durable``: the files are on disk when it returns (one
    ``os.sync()`` at the end), as ingestion's are (it syncs its content store). ``as_ingestion``: all
    of that, one source after the other as the pipeline runs them, with the rest of ingestion's work
    (:func:`_source_as_ingestion_does`)."""
    import multiprocessing as mp

    tasks = [(kind, [f], out, max_side) for kind, files in jobs for f in files]
    t = time.perf_counter()
    n, first = 0, {}
    with mp.get_context("forkserver").Pool(workers, initializer=_init_pool, initargs=(png or _PNG,)) as pool:
        if as_ingestion:
            out.mkdir(parents=True, exist_ok=True)
            n = sum(_source_as_ingestion_does(pool, kind, files, out, max_side) for kind, files in jobs)
        elif not hashed:
            n = sum(pool.imap_unordered(_plain_task, tasks, chunksize=1))
        else:
            for count, hashes in pool.imap_unordered(_hashed_task, tasks, chunksize=1):
                n += count
                for ph, thumb, _ in hashes:
                    first.setdefault(ph, thumb)
        pool.close()
        pool.join()
    if durable:
        os.sync()
    return n, time.perf_counter() - t


def plain_pool_per_source(jobs: list[tuple[str, list[Path]]], out: Path, workers: int) -> tuple[int, float]:
    """:func:`plain_pool` over one source at a time, as the pipeline ingests them (one partition, one
    run each): what the plain pool's figure owes to overlapping one source's last files with the
    next source's first."""
    done = [plain_pool([job], out, workers) for job in jobs]
    return sum(n for n, _ in done), sum(t for _, t in done)


def _settle() -> None:
    """Flush what earlier phases wrote, so that no phase pays for another's disk writes (the kernel
    writes dirty pages back up to 30 s later, into whatever runs then)."""
    os.sync()
    time.sleep(0.5)


def _timed_ingest(rss: TreeSampler, specs: list, out: Path, workers: int) -> tuple[float, int, float]:
    """``(wall s, slices, CPU s)`` of ingesting ``specs`` into ``out``."""
    dt_total, n_total = 0.0, 0
    c0 = rss.cpu()
    for spec in specs:
        dt, n, _ = run_ingest(spec, out, workers)
        dt_total += dt
        n_total += n
    return dt_total, n_total, rss.cpu() - c0


def run_ingest(spec, out: Path, workers: int) -> tuple[float, int, dict]:
    from medtrinity_assets.ingest.pipeline import ingest_source

    t = time.perf_counter()
    res = ingest_source(spec, out, workers=workers)
    dt = time.perf_counter() - t
    slices = res.counts.get("ok", 0) + res.counts.get("duplicate", 0)
    return dt, slices, res.counts


class Run(NamedTuple):
    slices: int
    wall: float
    cpu: float
    mib: float  # PNG bytes written (images and masks; ingestion writes no duplicate's), MiB


def _mib(out: Path) -> float:
    return sum(f.stat().st_size for f in out.rglob("*.png")) / 2**20


def _pool_run(rss: TreeSampler, jobs: list, out: Path, workers: int, **kw: Any) -> Run:
    _settle()
    c0 = rss.cpu()
    n, t = plain_pool(jobs, out, workers, **kw)
    return Run(n, t, rss.cpu() - c0, _mib(out))


def _ingest_run(rss: TreeSampler, specs: list, out: Path, workers: int) -> Run:
    _settle()
    t, n, cpu = _timed_ingest(rss, specs, out, workers)
    return Run(n, t, cpu, _mib(out))


def measure_set(rss: TreeSampler, set_name: str, specs: list, jobs: list, tmp: Path, workers: int,
                repeat: int) -> tuple[str, dict[str, list[Run]]]:
    """Every runner on one set: the plain loop and ``ingest_source(workers=1)`` once, the pools and
    ``ingest_source(workers=N)`` ``repeat`` times, alternated, each into a new folder on a settled disk."""
    from medtrinity_assets.ingest.slicing import PNG_OPTIONS

    _settle()
    c0, t = rss.cpu(), time.perf_counter()
    out = tmp / f"out_plain_{set_name}"
    n = sum(_plain_task((kind, files, out, 512)) for kind, files in jobs)
    runs: dict[str, list[Run]] = {"plain loop (1 proc)": [Run(n, time.perf_counter() - t, rss.cpu() - c0, _mib(out))]}
    runs["ingest_source w=1"] = [_ingest_run(rss, specs, tmp / f"out_{set_name}_w1", 1)]
    for k in range(repeat):
        for j, (name, kw) in enumerate(((f"plain pool ({workers} procs)", {}), ("pool + dup hash", {"hashed": True}),
                                        ("pool + dup hash, same PNG", {"hashed": True, "png": PNG_OPTIONS}),
                                        ("pool + hash, same PNG, sync", {"hashed": True, "png": PNG_OPTIONS,
                                                                         "durable": True}),
                                        ("pool doing ingestion's work", {"png": PNG_OPTIONS, "as_ingestion": True}))):
            runs.setdefault(name, []).append(_pool_run(rss, jobs, tmp / f"out_pool{j}_{set_name}_{k}", workers, **kw))
        runs.setdefault(f"ingest_source w={workers}", []).append(
            _ingest_run(rss, specs, tmp / f"out_{set_name}_w{workers}_{k}", workers))
    _settle()
    n, t = plain_pool_per_source(jobs, tmp / f"out_pool1_{set_name}", workers)
    runs["plain pool, one source at a time"] = [Run(n, t, 0.0, 0.0)]
    return set_name, runs


def _best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.wall / max(r.slices, 1))


def _rate(r: Run) -> float:
    return r.slices / r.wall


def report(set_name: str, runs: dict[str, list[Run]], workers: int, t_startup: float, several_sources: bool) -> None:
    """The set's table rows (each runner's best run) and ingestion's ratios to each baseline (best
    against best, and the median of the alternated pairs' ratios)."""
    for name, rs in runs.items():
        if name.endswith("one source at a time"):
            continue
        r = _best(rs)
        print(f"{set_name:6} {name:28} {r.slices:7d} {r.wall:8.2f} {_rate(r):9.1f} {r.cpu:7.2f} {r.cpu / r.wall:8.2f}"
              f" {r.mib:8.2f}")
    ingests = runs[f"ingest_source w={workers}"]
    best = _best(ingests)
    plain, one = _best(runs["plain loop (1 proc)"]), _best(runs["ingest_source w=1"])
    print(f"{set_name:6} ratio w={workers} / plain loop: {_rate(best) / _rate(plain):.2f}x ; w={workers} / w=1:"
          f" {_rate(best) / _rate(one):.2f}x ; with the one-time start-up:"
          f" {best.slices / (best.wall + t_startup) / _rate(plain):.2f}x")
    baselines = {f"plain pool ({workers} procs)": "plain pool, Pillow's PNG defaults (the fair baseline)",
                 "pool + dup hash": "that pool also hashing for duplicate removal",
                 "pool + dup hash, same PNG": "that pool also writing PNGs as ingestion does",
                 "pool + hash, same PNG, sync": "that pool also syncing its files, as ingestion does",
                 "pool doing ingestion's work": "that pool also reading headers for identifying values, finding "
                 "near duplicates and writing a manifest, a source at a time, as ingestion does"}
    for name, what in baselines.items():
        pairs = sorted(_rate(i) / _rate(p) for p, i in zip(runs[name], ingests, strict=True))
        print(f"{set_name:6} ratio w={workers} / {what}: best {_rate(best) / _rate(_best(runs[name])):.2f}x,"
              f" per pair median {pairs[len(pairs) // 2]:.2f}x (of {', '.join(f'{r:.2f}' for r in pairs)})")
    if several_sources:
        per_source = runs["plain pool, one source at a time"][0]
        print(f"{set_name:6} ratio w={workers} / plain pool one source at a time ({per_source.wall:.2f}s, as partitions"
              f" run): {_rate(best) / _rate(per_source):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="8 volumes of 128x128x40 and 2 demo copies")
    ap.add_argument("--volumes", type=int, default=50)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 100])
    ap.add_argument("--demo-copies", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep generated data here (default: a temp folder)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the plain pool and ingest_source w=N, alternated")
    args = ap.parse_args()
    if args.small:
        args.volumes, args.shape, args.demo_copies = 8, [128, 128, 40], 2

    from medtrinity_assets.ingest.registry import SourceSpec

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    tmp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    dicom_dir, folder_dir = make_demo_set(tmp / "data", args.demo_copies)
    nifti_dir = make_nifti_set(tmp / "data", args.volumes, tuple(args.shape))
    print(f"generated data in {time.perf_counter() - t:.1f}s under {tmp}")

    common = {"license": "bench", "registry_file": str(tmp / "registry" / "x.yaml")}
    specs = {
        "demo": [
            SourceSpec(
                name="b_dicom",
                layout="dicom",
                root=str(dicom_dir),
                modality="CT",
                organ="abdomen",
                slicing={"stride": 1},
                **common,
            ),
            SourceSpec(
                name="b_folder",
                layout="image_folder",
                root=str(folder_dir),
                modality="Fundus",
                organ="retina",
                **common,
            ),
        ],
        "nifti": [
            SourceSpec(
                name="b_nifti",
                layout="nifti_msd",
                root=str(nifti_dir),
                modality="MRI",
                organ="brain",
                slicing={"axis": "axial", "stride": 1},
                **common,
            ),
        ],
    }
    # One-time cost of a process: the first pool starts the forkserver, which imports the
    # preprocessing module once for all workers. Measured apart so that the rates below are
    # steady-state throughput; the ratios are also printed with this cost included.
    from medtrinity_assets.ingest.worker import WorkerPool

    t = time.perf_counter()
    with WorkerPool(args.workers, specs["demo"][0], dicom_dir) as pool:
        list(pool.map_ordered(abs, range(args.workers)))
    t_startup = time.perf_counter() - t
    rows = []
    with TreeSampler() as rss:
        for set_name, set_specs in specs.items():
            if set_name == "demo":
                jobs = [("dicom", sorted(dicom_dir.iterdir())), ("images", sorted((folder_dir / "images").iterdir()))]
            else:
                jobs = [("nifti", sorted((nifti_dir / "imagesTr").iterdir()))]
            rows.append(measure_set(rss, set_name, set_specs, jobs, tmp, args.workers, args.repeat))
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\n{'set':6} {'runner':28} {'slices':>7} {'wall s':>8} {'slices/s':>9} {'CPU s':>7} {'CPU/wall':>8} {'MiB out':>8}")
    for set_name, runs in rows:
        report(set_name, runs, args.workers, t_startup, several_sources=len(specs[set_name]) > 1)
    print(f"\none-time pool start-up per process (forkserver + module import + {args.workers} workers): {t_startup:.2f}s")
    print(f"\nload average during the run (other users of the machine count too): {os.getloadavg()}")
    print(
        f"\npeak RSS: main {self_peak:.0f} MiB, largest child {child_peak:.0f} MiB, "
        f"sampled process-tree total {rss.peak / 2**20:.0f} MiB"
    )
    if not args.workdir:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
