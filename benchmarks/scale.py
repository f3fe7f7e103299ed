"""Scale benchmark: one generated source of N images through the whole per-source graph.

For each size N (default 1,000 and 4,000; the issue's sizes are 4,000 / 16,000 / 64,000), a
source of N phantom images (in shards of the default ``shard_size``, run one after the other) (128 px, discs on a biased noisy background, one lesion mask each)
goes through ``medtrinity build --until triplets`` in a fresh instance: ingestion, expert models,
knowledge index, ROIs, retrieval, descriptions, their checks and the triplets. Side by side per
size: wall time, seconds per stage (the assets' own ``duration_s`` metadata), peak RSS of the
whole process tree (sampled every 100 ms) and of the build process alone ("own": what it keeps between
stages, without its workers) and how many of the machine's cores were busy on
average. The yardsticks are the other sizes: time should grow linearly (per-image time flat)
and peak RSS should not grow with N.

With ``--shards K ...``, the largest size is also built in K shards (``shard_size = ceil(N / K)``)
the way a deployment runs them: one ``medtrinity backfill`` launch, executed by a real
``dagster-daemon`` whose run queue starts shard runs side by side (``max_concurrent_runs`` of the
repository's ``dagster.yaml``), each run with the multiprocess executor. Stage seconds are then
summed over the shards' materializations.

Usage::

    python benchmarks/scale.py                       # 1,000 and 4,000 images
    python benchmarks/scale.py --sizes 4000 16000 64000 --json /tmp/scale.json
    python benchmarks/scale.py --sizes 16000 --shards 1 2 4
    python benchmarks/scale.py --sizes 64000 --shards 1 2 4 --backfill-only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sampling import TreeSampler  # noqa: E402 (a sibling module: benchmarks run as scripts)

REPO = Path(__file__).resolve().parent.parent
STAGES = ["source_manifest", "coarse_captions", "expert_models", "knowledge_corpus", "knowledge_index", "roi_set",
          "retrieved_knowledge", "caption_batch", "caption_quality", "triplets"]

STEP_STAGE = {"ingest_source_assets": "source_manifest"}  # a multi-asset's step, named by its first asset


def make_source(root: Path, n: int, size: int = 128, seed: int = 0, shard_size: int | None = None) -> Path:
    """N phantom PNGs and their masks in an ``image_folder`` layout, plus its registry file."""
    from PIL import Image

    from medtrinity_assets.segmentation.phantoms import generate_phantoms

    (root / "src" / "images").mkdir(parents=True, exist_ok=True)
    (root / "src" / "masks").mkdir(parents=True, exist_ok=True)
    done = len(list((root / "src" / "images").glob("*.png")))  # generated once per size
    while done < n:
        batch = generate_phantoms(min(500, n - done), size=size, seed=seed + done)
        for img, mask in batch:
            Image.fromarray(img).save(root / "src" / "images" / f"p{done:06d}.png")
            Image.fromarray(mask).save(root / "src" / "masks" / f"p{done:06d}.png")
            done += 1
    (root / "registry").mkdir(exist_ok=True)
    (root / "registry" / "scale.yaml").write_text(
        f"name: scale_{n}\nlayout: image_folder\nroot: {root / 'src'}\nmodality: MRI\norgan: phantom\n"
        "labels: {1: lesion}\nlicense: generated\nsynthetic: true\n"
        + (f"shard_size: {shard_size}\n" if shard_size else "")
    )
    return root / "registry"


def stage_seconds(home: Path) -> dict[str, float]:
    """Each stage's ``duration_s`` from its latest materialization in the instance at ``home``."""
    import dagster as dg

    out: dict[str, float] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for stage in STAGES:  # a fresh instance: every materialization is this build's (summed over shards)
            records = instance.fetch_materializations(dg.AssetKey(stage), limit=10_000).records
            seconds = [float(r.asset_materialization.metadata["duration_s"].value) for r in records
                       if r.asset_materialization and "duration_s" in r.asset_materialization.metadata]
            if seconds:
                out[stage] = round(sum(seconds), 1)
    return out


def stage_samples(home: Path, sampler: TreeSampler) -> dict[str, dict[str, float]]:
    """Each stage's peak RSS in GB (the largest sample of the build's process tree while one of
    its steps ran, between its STEP_START and its end) and its cores busy (the tree's CPU seconds
    over those steps' wall seconds); concurrent steps share a sample."""
    import dagster as dg

    ends = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    peaks: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            started: dict[str, float] = {}
            for event in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_START, *ends}):
                step = STEP_STAGE.get(event.step_key or "", event.step_key or "")
                if event.dagster_event_type == dg.DagsterEventType.STEP_START:
                    started[step] = event.timestamp
                elif step in started and step in STAGES:
                    start = started.pop(step)
                    gb = sampler.peak_between(start, event.timestamp) / 2**30
                    peaks[step] = round(max(peaks.get(step, 0.0), gb), 3)
                    spans.setdefault(step, []).append((start, event.timestamp))
    cores = {}
    for step, steps in spans.items():
        wall = sum(b - a for a, b in steps)
        cores[step] = round(sum(sampler.cores_between(a, b) * (b - a) for a, b in steps) / wall, 2) if wall else 0.0
    return {"stages_rss_gb": peaks, "stages_cores": cores}


def _instance_home(root: Path) -> tuple[Path, dict[str, str]]:
    home = root / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return home, {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_size(n: int, work: Path, until: str) -> dict:
    root = work / f"n{n}"
    t = time.perf_counter()
    registry = make_source(root, n)
    generated = time.perf_counter() - t
    home, env = _instance_home(root)
    shutil.rmtree(root / "out", ignore_errors=True)  # a cold build: an earlier one's files would be reused
    cmd = [sys.executable, "-m", "medtrinity_assets.cli", "build", "--sources", str(registry),
           "--out", str(root / "out"), "--until", until]
    t = time.perf_counter()
    with open(root / "build.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        with TreeSampler(proc.pid, interval=0.1) as sampler:
            rc = proc.wait()
    wall = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"build of {n} images failed (rc={rc}); see {root / 'build.log'}")
    from medtrinity_assets.core.parts import shard_count

    shards = shard_count(root / "out", f"scale_{n}")  # the default shard_size decides
    return {"images": n, "shards": shards, "mode": "build", "generate_s": round(generated, 1), "wall_s": round(wall, 1),
            "peak_rss_gb": round(sampler.peak / 2**30, 3), "own_peak_rss_gb": round(sampler.own_peak / 2**30, 3),
            "cores_busy": round(sampler.cpu() / wall, 2),
            "stages_s": stage_seconds(home), **stage_samples(home, sampler)}


def run_sharded(n: int, shards: int, work: Path, until: str, timeout_s: float = 6 * 3600) -> dict:
    """The source in ``shards`` shards through one backfill that a real daemon executes."""
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    root = work / f"n{n}"
    registry = make_source(root, n, shard_size=-(-n // shards))
    home, env = _instance_home(root)
    out = root / f"out_{shards}"
    shutil.rmtree(out, ignore_errors=True)
    queue = [sys.executable, "-m", "medtrinity_assets.cli", "backfill", "--sources", str(registry),
             "--out", str(out), "--until", until]
    t = time.perf_counter()
    with open(root / f"backfill_{shards}.log", "w") as log:
        subprocess.run(queue, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=True)
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                   str(REPO / "workspace.yaml")],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        status = None
        with TreeSampler(daemon.pid, interval=0.2) as sampler:
            try:
                while time.perf_counter() - t < timeout_s:
                    time.sleep(5)
                    with dg.DagsterInstance.from_config(str(home)) as instance:
                        (backfill,) = instance.get_backfills()
                        status = backfill.status
                        runs = instance.get_runs()
                    if status != BulkActionStatus.REQUESTED and not any(not r.is_finished for r in runs):
                        break
            finally:
                os.killpg(daemon.pid, 15)
                daemon.wait(timeout=60)
    wall = time.perf_counter() - t
    failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    if status != BulkActionStatus.COMPLETED_SUCCESS or failed:
        raise SystemExit(f"{shards}-shard backfill of {n} images ended {status} with {len(failed)} failed "
                         f"run(s); see {root / f'backfill_{shards}.log'}")
    return {"images": n, "shards": shards, "mode": "backfill", "runs": len(runs), "wall_s": round(wall, 1),
            "peak_rss_gb": round(sampler.peak / 2**30, 3), "cores_busy": round(sampler.cpu() / wall, 2),
            "stages_s": stage_seconds(home), **stage_samples(home, sampler)}


def report(rows: list[dict]) -> None:
    print(f"\n{'images':>8} {'shards':>7} {'mode':>9} {'wall s':>8} {'ms/image':>9} {'peak RSS GB':>12} "
          f"{'own GB':>7} {'cores busy':>11}")
    for r in rows:
        own = f"{r['own_peak_rss_gb']:7.3f}" if "own_peak_rss_gb" in r else f"{'-':>7}"
        print(f"{r['images']:8d} {r['shards']:7d} {r['mode']:>9} {r['wall_s']:8.1f} {1000 * r['wall_s'] / r['images']:9.1f} "
              f"{r['peak_rss_gb']:12.3f} {own} {r['cores_busy']:11.2f}")
    print(f"\n{'stage (s)':22}" + "".join(f"{str(r['images']) + '/' + str(r['shards']):>12}" for r in rows))
    for stage in STAGES:
        print(f"{stage:22}" + "".join(f"{r['stages_s'].get(stage, float('nan')):12.1f}" for r in rows))
    print(f"\n{'stage peak RSS (GB)':22}" + "".join(f"{str(r['images']) + '/' + str(r['shards']):>12}" for r in rows))
    for stage in STAGES:
        print(f"{stage:22}" + "".join(f"{r['stages_rss_gb'].get(stage, float('nan')):12.3f}" for r in rows))
    print(f"\n{'stage cores busy':22}" + "".join(f"{str(r['images']) + '/' + str(r['shards']):>12}" for r in rows))
    for stage in STAGES:
        print(f"{stage:22}" + "".join(f"{r.get('stages_cores', {}).get(stage, float('nan')):12.2f}" for r in rows))
    built = [r for r in rows if r["mode"] == "build"]
    if len(built) > 1:
        a, b = built[0], built[-1]
        print(f"\nfrom {a['images']} to {b['images']} images ({b['images'] / a['images']:.0f}x): "
              f"wall {b['wall_s'] / a['wall_s']:.2f}x, peak RSS {b['peak_rss_gb'] / a['peak_rss_gb']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--until", default="triplets")
    ap.add_argument("--shards", type=int, nargs="*", default=[],
                    help="also build the largest size in this many shards, by a backfill on a real daemon")
    ap.add_argument("--backfill-only", action="store_true",
                    help="skip the in-process builds: only the sharded backfills of the largest size")
    ap.add_argument("--workdir", default=None, help="keep generated data and outputs here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [] if args.backfill_only else args.sizes:
        rows.append(run_size(n, work, args.until))
        print(json.dumps(rows[-1]), flush=True)
    for k in args.shards:
        rows.append(run_sharded(max(args.sizes), k, work, args.until))
        print(json.dumps(rows[-1]), flush=True)
    report(rows)
    print(f"\nload average (other users of the machine count too): {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
