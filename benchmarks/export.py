"""Export benchmark (issue 13): rate and peak RSS of the export at 1,000,000 generated triplets
of tiny images, side by side with a fair baseline in the same run.

Generated once per size, under a temporary output root (not part of any rate): ``--n`` triplets
over four sources, ``--rois`` triplets per image (so about n/3 images, each a distinct
``--size`` x ``--size`` grey PNG of seeded noise: distinct pixels give distinct sha256 *and*
spread-out pHashes, as distinct images have; nearly identical images would be near duplicates,
dropped or refused as leaks), a share of each later source's images being exact (``--dup``) or
one-pixel (``--near``) copies of the first source's (the export must drop them), the per-source
``triplets`` and ``preprocessed_images`` tables (built with polars, descriptions and facets taken
from the embedded captioner's own output, made unique per ROI), and an evaluation set of
``--eval-images`` other images.

Then each stage runs in a fresh subprocess (peak RSS per stage: ``ru_maxrss`` of that child from
``os.wait4``, and the child's process tree sampled with psutil):

- ``baseline``: read the sources' ``triplets`` tables and write the same rows, with the export
  table's columns, as one Parquet (``write_parquet_atomic``, zstd, fsync) — writing the same
  Parquet alone; run first and again last, the faster run is the baseline (conservative);
- ``build``: ``build_dataset`` — read, cross-source dedup, splits, leakage (splits and the
  evaluation set), image links, ``export/triplets.parquet``; timed per internal function;
- ``llava``, ``webdataset``, ``hf``: each format writer on the table (read before the clock
  starts: in ``publish`` the table is already in memory);
- ``verify``: ``verify_export``, timed per check.

Targets: every stage's peak RSS < 2 GB (2e9 bytes); the **rate target** applies to the export
table, ``build_dataset`` rows/s >= baseline rows/s / 2. The same ratio for the formats, the
verification and the whole export (build + formats + verify) is printed beside it, with its own
PASS/MISS, for honesty. With several ``--n`` values a scaling table shows, per function, the
microseconds per triplet at each size: what does not stream (a cost per row that grows with N)
shows there.

Usage::

    python benchmarks/export.py                          # 1,000,000 triplets
    python benchmarks/export.py --quick                  # 20,000 triplets
    python benchmarks/export.py --n 50000 200000 1000000 --json export_scaling.json
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sampling import TreeSampler  # noqa: E402 (a sibling module: benchmarks run as scripts)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RSS_TARGET = 2e9  # bytes
RATE_TARGET = 2.0  # a stage may take at most this many times the baseline's time per row
MIB = 2**20
SOURCES = (
    ("bench_a", "CT", "abdomen", "CC-BY-4.0"),
    ("bench_b", "MRI", "brain", "CC-BY-SA-4.0"),
    ("bench_c", "X-ray", "chest", "CC0-1.0"),
    ("bench_d", "Ultrasound", "unspecified", "CC-BY-NC-4.0"),
)
FORMATS = ("llava", "webdataset", "hf")
STAGES = ("gen", "baseline", "baseline_stream", "build", *FORMATS, "verify")
OWN, EXACT, NEAR = 0, 1, 2
BUILD_PHASES = (
    "_read_triplets", "_image_refs", "cross_source_duplicates", "_dropped_frame", "settle_splits",
    "_split_pairs", "split_leaks", "load_eval_set", "eval_leaks", "_link_images", "write_parquet_atomic",
)
VERIFY_PHASES = ("_check_table", "_check_images", "_check_llava", "_check_webdataset", "_check_hf", "_compare")
INFO_FILE = "bench_info.json"


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# ---------------------------------------------------------------------------------------
# generation (a subprocess of its own; reported apart, not part of any rate)


def _description_pool(n: int):
    """Descriptions and facets as the embedded captioner writes them (realistic lengths)."""
    import polars as pl

    from medtrinity_assets.captioning import EmbeddedCaptioner
    from medtrinity_assets.captioning.prompt import FACETS
    from medtrinity_assets.captioning.samples import realistic_inputs

    ok = [r for r in EmbeddedCaptioner().caption(realistic_inputs(n, seed=11)) if r.status == "ok" and r.text]
    cols = {"text": [r.text for r in ok]}
    cols.update({f"facet_{k}": [(r.facets or {}).get(k) for r in ok] for k in FACETS})
    return pl.DataFrame(cols)


def _image_plan(n_img: int, n_sources: int, dup: float, near: float, seed: int):
    """Per image: its source, kind (own pixels, exact or one-pixel copy of a first-source image)
    and canonical image (itself, or the first-source image it copies)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = np.arange(n_img)
    src = (idx * n_sources) // n_img
    n0 = max(1, int((src == 0).sum()))
    r = rng.random(n_img)
    kind = np.where(src == 0, OWN, np.where(r < dup, EXACT, np.where(r < dup + near, NEAR, OWN)))
    canon = np.where(kind == OWN, idx, rng.integers(0, n0, n_img))
    return src, kind, canon


def _write_images(out: Path, kind, canon, size: int, seed: int) -> tuple[list[str], list[str], int]:
    """Content-addressed PNGs of seeded noise (copies for EXACT / NEAR); returns sha256s, pHashes
    (hex, from ``ingest.dedup.phash``) and the bytes written."""
    import numpy as np
    from PIL import Image

    from medtrinity_assets.core.storage import sha256_bytes
    from medtrinity_assets.ingest.dedup import phash

    n = len(kind)
    pix = np.random.default_rng(seed + 1).integers(0, 256, (n, size, size), dtype=np.uint8)
    copies = kind != OWN
    pix[copies] = pix[canon[copies]]
    pix[kind == NEAR, 0, 0] ^= 1  # one pixel one grey level off: another sha256, the same picture
    for d in range(256):
        (out / "images" / f"{d:02x}").mkdir(parents=True, exist_ok=True)
    shas, phs, nbytes = [""] * n, [""] * n, 0
    kinds, canons = kind.tolist(), canon.tolist()
    for i in range(n):
        if kinds[i] == EXACT:
            shas[i], phs[i] = shas[canons[i]], phs[canons[i]]
            continue
        buf = io.BytesIO()
        Image.fromarray(pix[i]).save(buf, format="PNG")
        data = buf.getvalue()
        sha = sha256_bytes(data)
        with open(out / "images" / sha[:2] / f"{sha}.png", "wb") as fh:
            fh.write(data)
        shas[i], phs[i] = sha, f"{phash(pix[i]):016x}"
        nbytes += len(data)
    return shas, phs, nbytes


def _image_frame(src, kind, canon, shas: list[str], phs: list[str]):
    """One row per image: record id, source index, hashes, group (8 images per patient, a copy
    in its original's group) and split (80/10/10 by group)."""
    import numpy as np
    import polars as pl

    group = canon // 8
    u = ((group * 2654435761) % 2**32) / 2**32
    return pl.DataFrame({"i": np.arange(len(src)), "src": src, "kind": kind, "sha256": shas, "phash": phs,
                         "group": group, "u": u}).with_columns(
        record_id=pl.lit("r") + pl.col("i").cast(pl.String).str.zfill(19),
        group_id=pl.lit("patient:") + pl.col("group").cast(pl.String).str.zfill(12),
        split=pl.when(pl.col("u") < 0.8).then(pl.lit("train")).when(pl.col("u") < 0.9)
        .then(pl.lit("validation")).otherwise(pl.lit("test")),
    )


def _geometry(size: int) -> dict[str, Any]:
    """bbox, normalised bbox, origin, label and mask RLE expressions of triplet ``j`` (ROI ``k``)."""
    import polars as pl

    j, half = pl.col("j"), max(1, size // 2)
    x0, y0 = (j * 7 % half).cast(pl.Float64), (j * 13 % half).cast(pl.Float64)
    x1, y1 = x0 + 2 + (j % 5), y0 + 2 + (j % 7)
    origin = pl.when(pl.col("k") % 3 == 0).then(pl.lit("mask")).when(pl.col("k") % 3 == 1).then(pl.lit("box"))
    origin = origin.otherwise(pl.lit("whole_image"))
    whole = origin == "whole_image"
    box = pl.when(whole).then(pl.concat_list([pl.lit(0.0), pl.lit(0.0), pl.lit(float(size)), pl.lit(float(size))]))
    box = box.otherwise(pl.concat_list([x0, y0, x1, y1]))
    counts = pl.concat_str([(j % 97).cast(pl.String), (j % 5 + 2).cast(pl.String), (j % 89).cast(pl.String)],
                           separator=", ")
    rle = pl.concat_str([pl.lit(f'{{"size": [{size}, {size}], "counts": ['), counts, pl.lit("]}")])
    labels = ["lesion", "cyst", "nodule", "organ", "vessel"]
    label = pl.lit(pl.Series(labels)).gather(j % len(labels))
    return {
        "origin": origin,
        "bbox_xyxy": box,
        "bbox_norm": box.list.eval(pl.element() / size),
        "mask_rle": pl.when(origin == "mask").then(rle).otherwise(None),
        "label": pl.when(whole).then(None).otherwise(label),
    }


def _triplet_frame(img, n: int, rois: int, size: int, pool):
    """The ``n`` triplets (``rois`` per image, in image order), with every TRIPLETS column."""
    import numpy as np
    import polars as pl

    j = np.arange(n)
    rows = img[j // rois].with_columns(j=pl.Series(j), k=pl.Series(j % rois))
    text = pool[(j * 7919) % pool.height]
    rows = pl.concat([rows, text], how="horizontal")
    names = {i: s[0] for i, s in enumerate(SOURCES)}
    by_src = {c: {i: s[c] for i, s in enumerate(SOURCES)} for c in (1, 2, 3)}
    roi_id = pl.col("record_id") + pl.lit(":") + pl.col("k").cast(pl.String)
    sha = pl.col("sha256")
    return rows.with_columns(
        triplet_id=pl.lit("t") + pl.col("j").cast(pl.String).str.zfill(19),
        source=pl.col("src").replace_strict(names, return_dtype=pl.String),
        roi_id=roi_id,
        inputs_hash=pl.col("j").hash(3).cast(pl.String),
        image_file=pl.concat_str([pl.lit("images/"), sha.str.slice(0, 2), pl.lit("/"), sha, pl.lit(".png")]),
        image_sha256=sha,
        image_width=pl.lit(size, dtype=pl.Int32),
        image_height=pl.lit(size, dtype=pl.Int32),
        description=pl.concat_str([pl.col("text"), pl.lit(" (region "), roi_id, pl.lit(").")]),
        modality=pl.col("src").replace_strict(by_src[1], return_dtype=pl.String),
        organ=pl.col("src").replace_strict(by_src[2], return_dtype=pl.String),
        license=pl.col("src").replace_strict(by_src[3], return_dtype=pl.String),
        synthetic=pl.lit(False),
        backend=pl.lit("embedded"),
        model=pl.lit("embedded-grounded"),
        prompt_version=pl.lit("bench-1"),
        **_geometry(size),
    )


def _complete(contract, df):
    """``df`` with the contract's missing columns as nulls, validated."""
    import polars as pl

    extra = [pl.lit(None, dtype=t).alias(c) for c, t in contract.schema.items() if c not in df.columns]
    return contract.validate(df.with_columns(extra).select(list(contract.schema)))


def _write_tables(out: Path, img, trip, size: int) -> None:
    import polars as pl

    from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, TRIPLETS

    pre = img.with_columns(
        source=pl.col("src").replace_strict({i: s[0] for i, s in enumerate(SOURCES)}, return_dtype=pl.String),
        image_path=pl.concat_str([pl.lit("images/"), pl.col("sha256").str.slice(0, 2), pl.lit("/"),
                                  pl.col("sha256"), pl.lit(".png")]),
        width=pl.lit(size, dtype=pl.Int32), height=pl.lit(size, dtype=pl.Int32), channels=pl.lit(1, dtype=pl.Int8),
    ).select("record_id", "source", "image_path", "sha256", "phash", "width", "height", "channels")
    for i, (name, *_rest) in enumerate(SOURCES):
        PREPROCESSED_IMAGES.write(_complete(PREPROCESSED_IMAGES, pre.filter(pl.col("source") == name)), out, name)
        part = trip.filter(pl.col("src") == i).select([c for c in TRIPLETS.schema if c in trip.columns])
        TRIPLETS.write(_complete(TRIPLETS, part), out, name)


def _write_eval_set(folder: Path, n: int, size: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pix = np.random.default_rng(seed + 2).integers(0, 256, (n, size, size), dtype=np.uint8)
    for i in range(n):
        Image.fromarray(pix[i]).save(folder / f"eval_{i:05d}.png")


def stage_gen(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Images, per-source tables and the evaluation set under ``root``; writes ``bench_info.json``."""
    import numpy as np

    n_img = -(-args.n // args.rois)
    t0 = time.perf_counter()
    pool = _description_pool(args.pool)
    src, kind, canon = _image_plan(n_img, len(SOURCES), args.dup, args.near, args.seed)
    t1 = time.perf_counter()
    shas, phs, nbytes = _write_images(root, kind, canon, args.size, args.seed)
    t2 = time.perf_counter()
    img = _image_frame(src, kind, canon, shas, phs)
    trip = _triplet_frame(img, args.n, args.rois, args.size, pool)
    _write_tables(root, img, trip, args.size)
    t3 = time.perf_counter()
    eval_dir = root.parent / "eval_set"
    _write_eval_set(eval_dir, args.eval_images, args.size, args.seed)
    info = {
        "triplets": args.n, "records": n_img, "sources": [s[0] for s in SOURCES], "eval_dir": str(eval_dir),
        "distinct_images": int((kind != EXACT).sum()), "exact_copies": int((kind == EXACT).sum()),
        "near_copies": int((kind == NEAR).sum()), "png_bytes": nbytes, "image_size": args.size,
        "mean_description_chars": round(float(trip["description"].str.len_chars().mean()), 1),
        "copies_triplets": int(np.isin(np.arange(args.n) // args.rois, np.nonzero(kind != OWN)[0]).sum()),
    }
    (root / INFO_FILE).write_text(json.dumps(info))
    return {**info, "rows": args.n, "seconds": time.perf_counter() - t0,
            "phases": {"descriptions+plan": {"seconds": t1 - t0}, "pngs+phash": {"seconds": t2 - t1},
                       "tables": {"seconds": t3 - t2}, "eval_set": {"seconds": time.perf_counter() - t3}}}


# ---------------------------------------------------------------------------------------
# the measured stages (each in a fresh subprocess)


class Phases:
    """Times module functions (exclusive of the nested ones also timed) and records the process's
    peak RSS (``ru_maxrss``) and current RSS when each returns. Wraps by module attribute, so the
    caller's global lookups go through the wrapper."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {}
        self._stack: list[float] = []

    def wrap(self, module: Any, names: tuple[str, ...]) -> None:
        for name in names:
            fn = getattr(module, name, None)
            if callable(fn):
                setattr(module, name, self._timed(name, fn))

    def _timed(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(*a: Any, **kw: Any) -> Any:
            self._stack.append(0.0)
            if name not in self.totals:
                self.totals[name] = {"calls": 0, "seconds": 0.0, "peak_rss_mib_before": round(_maxrss_mib(), 1)}
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                nested = self._stack.pop()
                if self._stack:
                    self._stack[-1] += dt
                row = self.totals[name]
                row["calls"] += 1
                row["seconds"] += dt - nested
                row["peak_rss_mib_after"] = round(_maxrss_mib(), 1)
                row["rss_mib_after"] = round(_rss_mib(), 1)

        return inner


def stage_baseline(root: Path, info: dict) -> dict[str, Any]:
    """Read the sources' triplets and write the same rows with the export table's columns."""
    import polars as pl

    from medtrinity_assets.core.storage import write_parquet_atomic
    from medtrinity_assets.core.tables import MEDTRINITY_DATASET, TRIPLETS

    t0 = time.perf_counter()
    df = pl.concat([TRIPLETS.read(root, s) for s in sorted(info["sources"])], how="vertical")
    t1 = time.perf_counter()
    table = MEDTRINITY_DATASET.validate(df.with_columns(duplicate_group=pl.lit(None, dtype=pl.String)))
    path = write_parquet_atomic(table, root / "baseline" / "triplets.parquet")
    t2 = time.perf_counter()
    return {"rows": df.height, "seconds": t2 - t0, "bytes_written": path.stat().st_size,
            "table_mib": round(table.estimated_size() / MIB, 1),
            "phases": {"read": {"seconds": t1 - t0}, "validate+write": {"seconds": t2 - t1}}}


def stage_baseline_stream(root: Path, info: dict) -> dict[str, Any]:
    """The same Parquet written by polars' streaming engine (scan -> sink): what writing it costs
    in bounded memory. Shown beside the baseline, not used for the ratios."""
    import polars as pl

    from medtrinity_assets.core.tables import MEDTRINITY_DATASET, TRIPLETS

    path = root / "baseline_stream" / "triplets.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    t0 = time.perf_counter()
    lf = pl.scan_parquet([TRIPLETS.path(root, s) for s in sorted(info["sources"])])
    lf = lf.with_columns(duplicate_group=pl.lit(None, dtype=pl.String)).select(list(MEDTRINITY_DATASET.schema))
    lf.sink_parquet(tmp, compression="zstd", statistics=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    return {"rows": rows, "seconds": time.perf_counter() - t0, "bytes_written": path.stat().st_size}


def stage_build(root: Path, info: dict) -> dict[str, Any]:
    from medtrinity_assets.export import dataset

    phases = Phases()
    phases.wrap(dataset, BUILD_PHASES)
    t0 = time.perf_counter()
    build = dataset.build_dataset(root, info["sources"], eval_sets=[info["eval_dir"]])
    dt = time.perf_counter() - t0
    other = dt - sum(p["seconds"] for p in phases.totals.values())
    return {"rows": info["triplets"], "rows_out": build.table.height, "dropped_records": build.dropped.height,
            "images_linked": build.images_linked, "seconds": dt,
            "table_mib": round(build.table.estimated_size() / MIB, 1),
            "bytes_written": (root / "export" / "triplets.parquet").stat().st_size,
            "phases": {**phases.totals, "(rest of build_dataset)": {"seconds": other}}}


def stage_format(root: Path, fmt: str) -> dict[str, Any]:
    """One format writer on the export table (read before the clock starts)."""
    from medtrinity_assets.core.tables import MEDTRINITY_DATASET
    from medtrinity_assets.export import formats

    t = time.perf_counter()
    df = MEDTRINITY_DATASET.read_path(root / "export" / "triplets.parquet")
    read_s, rss_table = time.perf_counter() - t, _rss_mib()
    export = root / "export"
    t0 = time.perf_counter()
    if fmt == "llava":
        formats.write_llava(df, export, seed=0)
    elif fmt == "webdataset":
        formats.write_webdataset(df, export, shard_size=10_000)
    else:
        formats.write_hf_folder(df, export)
    dt = time.perf_counter() - t0
    return {"rows": df.height, "seconds": dt, "table_read_s": read_s, "rss_after_table_mib": round(rss_table, 1),
            "bytes_written": _du(export / fmt)}


def stage_verify(root: Path, info: dict) -> dict[str, Any]:
    from medtrinity_assets.export import verify

    phases = Phases()
    phases.wrap(verify, VERIFY_PHASES)
    t0 = time.perf_counter()
    report = verify.verify_export(root / "export")
    dt = time.perf_counter() - t0
    other = dt - sum(p["seconds"] for p in phases.totals.values())
    return {"rows": report.counts.get("table", 0), "seconds": dt, "ok": report.ok,
            "problems": report.problems[:5], "counts": report.counts,
            "phases": {**phases.totals, "(rest of verify_export)": {"seconds": other}}}


_STAGE_IMPORTS = {
    "baseline": ("polars", "medtrinity_assets.core.tables"),
    "baseline_stream": ("polars", "medtrinity_assets.core.tables"),
    "build": ("medtrinity_assets.export.dataset",),
    "llava": ("medtrinity_assets.export.formats",),
    "webdataset": ("medtrinity_assets.export.formats", "webdataset"),
    "hf": ("medtrinity_assets.export.formats", "datasets", "pyarrow.parquet", "yaml"),
    "verify": ("medtrinity_assets.export.verify", "webdataset", "datasets"),
}


def child_main(args: argparse.Namespace) -> None:
    """Run one stage in this (fresh) process and write its figures to ``--result``."""
    import importlib

    root = Path(args.root)
    t = time.perf_counter()
    for mod in _STAGE_IMPORTS.get(args.stage, ()):
        importlib.import_module(mod)  # one-time imports (webdataset, datasets: slow) outside the clock
    imports_s, rss_imports = time.perf_counter() - t, _rss_mib()
    if args.stage == "gen":
        res = stage_gen(root, args)
    else:
        info = json.loads((root / INFO_FILE).read_text())
        if args.stage in FORMATS:
            res = stage_format(root, args.stage)
        else:
            run = {"baseline": stage_baseline, "baseline_stream": stage_baseline_stream, "build": stage_build,
                   "verify": stage_verify}[args.stage]
            res = run(root, info)
    res.update(imports_s=imports_s, rss_after_imports_mib=round(rss_imports, 1), self_peak_rss_mib=_maxrss_mib())
    Path(args.result).write_text(json.dumps(res, default=str))


# ---------------------------------------------------------------------------------------
# the parent: one subprocess per stage, peak RSS from wait4 and sampling


def _child_env(work: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(work / "hf_home"),
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    return env


def run_stage(stage: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``stage`` in a fresh interpreter; its figures plus wall time, CPU and peak RSS (wait4)."""
    logs = root.parent / "logs"
    logs.mkdir(exist_ok=True)
    result = logs / f"{stage}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--root", str(root),
           "--result", str(result), "--n", str(args.n_one), "--rois", str(args.rois), "--size", str(args.size),
           "--dup", str(args.dup), "--near", str(args.near), "--eval-images", str(args.eval_images),
           "--pool", str(args.pool), "--seed", str(args.seed)]
    with open(logs / f"{stage}.log", "w") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(root.parent), stdout=log, stderr=subprocess.STDOUT)
        with TreeSampler(proc.pid) as sampler:
            _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
    if proc.returncode:
        tail = (logs / f"{stage}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}):\n{tail}")
    res = json.loads(result.read_text())
    res.update(stage=stage, wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_bytes=ru.ru_maxrss * 1024,
               sampled_tree_peak_bytes=sampler.peak)
    return res


def run_size(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root = work / f"n{n}" / "out"
    shutil.rmtree(root.parent, ignore_errors=True)
    root.mkdir(parents=True)
    args.n_one = n
    stages: dict[str, dict] = {}
    for stage in (*STAGES, "baseline_again"):
        name = "baseline" if stage == "baseline_again" else stage
        print(f"  [{n:,}] {stage} ...", end="", flush=True)
        stages[stage] = run_stage(name, root, args)
        print(f" {stages[stage]['seconds']:.1f}s, peak RSS {stages[stage]['peak_rss_bytes'] / MIB:.0f} MiB", flush=True)
    b1, b2 = stages["baseline"], stages.pop("baseline_again")
    stages["baseline"] = dict(min(b1, b2, key=lambda r: r["seconds"]))
    stages["baseline"]["runs_s"] = [b1["seconds"], b2["seconds"]]
    disk = {k: _du(root / "export" / k) for k in ("images", *FORMATS)}
    if not args.keep:
        shutil.rmtree(root.parent, ignore_errors=True)
    return {"n": n, "stages": stages, "export_bytes": disk, **summarise(stages)}


def summarise(stages: dict[str, dict]) -> dict[str, Any]:
    """Per-row time ratios to the baseline and the PASS/MISS of the targets."""
    base = stages["baseline"]["seconds"] / stages["baseline"]["rows"]

    def ratio(*names: str) -> float:
        return sum(stages[s]["seconds"] / stages[s]["rows"] for s in names) / base

    peaks = {s: stages[s]["peak_rss_bytes"] for s in ("build", *FORMATS, "verify")}  # the export's stages
    ratios = {"build": ratio("build"), "formats": ratio(*FORMATS), "verify": ratio("verify"),
              "build+formats": ratio("build", *FORMATS), "whole_export": ratio("build", *FORMATS, "verify")}
    return {
        "ratios_to_baseline": {k: round(v, 2) for k, v in ratios.items()},
        "rss_pass": {s: p < RSS_TARGET for s, p in peaks.items()},
        "targets": {
            "peak_rss_below_2GB": all(p < RSS_TARGET for p in peaks.values()),
            "table_rate_within_2x": ratios["build"] <= RATE_TARGET,
            "whole_export_within_2x (honesty)": ratios["whole_export"] <= RATE_TARGET,
        },
        "verified_ok": bool(stages["verify"].get("ok")),
    }


# ---------------------------------------------------------------------------------------
# report


def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def _line(label: str, rows: int, sec: float, base: float, peak: float | None = None, start: float | None = None,
          cpu: float | None = None) -> str:
    rate = rows / sec if sec > 0 else float("inf")
    ratio = (sec / rows) / base if rows else float("nan")
    tail = "" if peak is None else f" {peak / MIB:10.0f} {start or 0:9.0f} {cpu or 0:8.1f}"
    return f"{label:40} {rows:>10,} {sec:9.2f} {rate:11,.0f} {ratio:9.2f}x{tail}"


def print_run(run: dict[str, Any]) -> None:
    st = run["stages"]
    gen = st["gen"]
    base = st["baseline"]["seconds"] / st["baseline"]["rows"]
    print(f"\n== {run['n']:,} triplets: {gen['records']:,} records over {len(gen['sources'])} sources, "
          f"{gen['distinct_images']:,} distinct {gen['image_size']}x{gen['image_size']} PNGs "
          f"({gen['png_bytes'] / MIB:.0f} MiB), {gen['exact_copies']:,} exact + {gen['near_copies']:,} "
          f"one-pixel cross-source copies; descriptions {gen['mean_description_chars']:.0f} chars on average ==")
    print(f"generation (not rated): {gen['seconds']:.1f}s ("
          + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in gen["phases"].items()) + ")")
    print(f"\n{'stage':40} {'rows':>10} {'seconds':>9} {'rows/s':>11} {'x base':>10} {'peak MiB':>10} "
          f"{'start MiB':>9} {'CPU s':>8}")
    for name, label in (("baseline", "baseline: read triplets + write Parquet"),
                        ("baseline_stream", "  same Parquet, polars scan -> sink"), ("build", "build_dataset"),
                        ("llava", "write_llava"), ("webdataset", "write_webdataset"), ("hf", "write_hf_folder"),
                        ("verify", "verify_export")):
        r = st[name]
        start = r.get("rss_after_table_mib", r["rss_after_imports_mib"])
        print(_line(label, r["rows"], r["seconds"], base, r["peak_rss_bytes"], start, r["cpu_s"]))
        for ph, p in (r.get("phases") or {}).items():
            if name in ("build", "verify") and p["seconds"] >= 0.005:
                after = f"   peak {p['peak_rss_mib_before']:.0f} -> {p['peak_rss_mib_after']:.0f}" if "calls" in p else ""
                print(_line(f"  {ph}", r["rows"], p["seconds"], base) + after)
    fm = sum(st[f]["seconds"] for f in FORMATS)
    rows = st["build"]["rows_out"]
    print(_line("formats (3 writers)", rows, fm, base))
    print(_line("whole export (build + formats + verify)", rows, st["build"]["seconds"] + fm + st["verify"]["seconds"], base))
    print("(x base: the stage's time per row over the baseline's; start MiB: RSS after imports, or after reading "
          "the table for the formats; peak MiB: ru_maxrss of the stage's process)")
    b = st["build"]
    print(f"build: {b['rows_out']:,} triplets kept, {b['dropped_records']:,} records dropped as cross-source duplicates "
          f"(planted {gen['exact_copies'] + gen['near_copies']:,}), {b['images_linked']:,} images linked; "
          f"table {b['table_mib']:.0f} MiB in memory, baseline runs {', '.join(f'{s:.2f}s' for s in st['baseline']['runs_s'])}; "
          f"verification {'ok' if run['verified_ok'] else 'FAILED: ' + '; '.join(st['verify']['problems'])}")
    print("export on disk: " + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in run["export_bytes"].items()))
    print_targets(run)


def print_targets(run: dict[str, Any]) -> None:
    st, r, t = run["stages"], run["ratios_to_baseline"], run["targets"]
    peaks = ", ".join(f"{s} {st[s]['peak_rss_bytes'] / 1e9:.2f} GB {_ok(ok)}" for s, ok in run["rss_pass"].items())
    print(f"\nTARGET peak RSS < 2 GB per stage: {_ok(t['peak_rss_below_2GB'])} ({peaks}; "
          f"sampled tree peak max {max(s['sampled_tree_peak_bytes'] for s in st.values()) / 1e9:.2f} GB)")
    print(f"TARGET rate, export table (build_dataset) within 2x of the Parquet baseline: {_ok(t['table_rate_within_2x'])} "
          f"({r['build']:.2f}x the baseline's time per row)")
    print(f"for honesty, the same 2x against the baseline: formats {r['formats']:.2f}x, verify {r['verify']:.2f}x, "
          f"build + formats {r['build+formats']:.2f}x, whole export {r['whole_export']:.2f}x: "
          f"{_ok(t['whole_export_within_2x (honesty)'])}")


def _per_row_costs(run: dict[str, Any]) -> dict[str, float]:
    """Microseconds per triplet of every stage and timed function of a run."""
    out = {}
    for name, r in run["stages"].items():
        out[name] = 1e6 * r["seconds"] / r["rows"]
        for ph, p in (r.get("phases") or {}).items():
            out[f"{name}: {ph}"] = 1e6 * p["seconds"] / r["rows"]
    return out


def print_scaling(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-row cost and peak RSS at each size: what grows faster than N does not stream."""
    costs = [_per_row_costs(r) for r in runs]
    keys = [k for k in costs[-1] if all(k in c for c in costs)]
    head = "".join(f"{r['n']:>12,}" for r in runs)
    print(f"\n== scaling: microseconds per triplet (growth = largest N / smallest N) ==\n{'':52}{head}   growth")
    flagged = {}
    for k in keys:
        vals = [c[k] for c in costs]
        growth = vals[-1] / vals[0] if vals[0] > 0 else float("inf")
        mark = "  <- super-linear" if growth >= 1.5 and vals[-1] >= 1.0 else ""
        if mark:
            flagged[k] = round(growth, 2)
        print(f"{k[:52]:52}" + "".join(f"{v:12.2f}" for v in vals) + f"   {growth:5.2f}x{mark}")
    print(f"\n{'peak RSS MiB':52}{head}   MiB per 1M triplets (slope)")
    slopes = {}
    for s in runs[-1]["stages"]:
        peaks = [r["stages"][s]["peak_rss_bytes"] / MIB for r in runs]
        slope = (peaks[-1] - peaks[0]) / max(1, runs[-1]["n"] - runs[0]["n"]) * 1e6
        slopes[s] = round(slope)
        print(f"{s:52}" + "".join(f"{v:12.0f}" for v in peaks) + f"   {slope:8.0f}")
    return {"super_linear": flagged, "rss_mib_per_million_triplets": slopes}


# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000],
                    help="triplets (several values: one run each and a scaling table)")
    ap.add_argument("--quick", action="store_true", help="20,000 triplets")
    ap.add_argument("--rois", type=int, default=3, help="triplets per image")
    ap.add_argument("--size", type=int, default=16, help="image side in pixels")
    ap.add_argument("--dup", type=float, default=0.01, help="share of a later source's images copied exactly")
    ap.add_argument("--near", type=float, default=0.005, help="share copied with one pixel changed")
    ap.add_argument("--eval-images", type=int, default=500, help="images of the evaluation set")
    ap.add_argument("--pool", type=int, default=500, help="embedded-captioner descriptions to draw from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="work under this folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and the export")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # internal: run one stage
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = [20_000]
    args.n = sorted(args.n)
    args.n_one = args.n[0]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage:
        args.n = args.n_one
        child_main(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_export_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"export benchmark: N = {', '.join(f'{n:,}' for n in args.n)} under {work} "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})", flush=True)
    runs = []
    try:
        for n in args.n:
            runs.append(run_size(n, args, work))
            print_run(runs[-1])
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k not in ("stage", "root", "result", "json")},
                           "machine": {"cpus": os.cpu_count(), "load_after": os.getloadavg()}, "runs": runs}
    if len(runs) > 1:
        out["scaling"] = print_scaling(runs)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
