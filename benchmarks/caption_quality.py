"""Caption quality checks against the embedded captioner, side by side (issue: caption_quality cost
ten times the captioner per ROI).

For each size, realistic inputs (:func:`medtrinity_assets.captioning.samples.realistic_inputs`, new
ones for every repeat) are captioned by the embedded captioner through ``run_caption_batch`` (a durable
caption table, in parts of the captioner resource's default size, as the ``caption_batch`` asset writes
it), then checked by ``check_captions`` as the ``caption_quality`` asset
calls it: inputs keyed by ``(record_id, roi_id)``, the source's identifying values as a hashed matcher
(:mod:`medtrinity_assets.privacy.store`), no judge. The figures are CPU milliseconds per ROI (the best
of ``--repeat`` runs; wall-clock in the JSON) and their ratio, whose target is at most 1. The ontology
index, built once per process by the first check, is timed on its own.

    python benchmarks/caption_quality.py [--sizes 1000 4000] [--repeat 3] [--rois-per-image 1] [--json out.json]
    python benchmarks/caption_quality.py --built OUT PART   # also a built shard's own ROIs

``--built`` adds the ROIs of a shard a build wrote (``benchmarks/scale.py --workdir W`` leaves
``W/n1000/out`` with part ``scale_1000``): several regions per image, their relations, real masks.
Both sides start from the tables on disk, as the assets do: the captioner side reads the caption
inputs and captions them; the quality side is ``check_images``, which reads the descriptions and
inputs and checks them, ``--repeat`` times alternated, each side's best run (the checks forget every text
they read before each run, as a fresh process would).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from medtrinity_assets.captioning import EmbeddedCaptioner, check_captions, run_caption_batch  # noqa: E402
from medtrinity_assets.captioning.quality import forget_texts  # noqa: E402
from medtrinity_assets.captioning.samples import realistic_inputs  # noqa: E402
from medtrinity_assets.defs.resources import CaptionerResource  # noqa: E402
from medtrinity_assets.privacy import identifier_store  # noqa: E402

#: descriptions per durable part file, as the caption_batch asset writes them (the captioner
#: resource's default ``chunk_size``)
CHUNK = CaptionerResource.model_fields["chunk_size"].default

# identifying values of the synthetic source (none of them is in a description)
VALUES = ["Doe^Jane", "Roe^Richard^J", "1234567", "ACC-99812", "19790312", "General Hospital"]


def inputs(n: int, seed: int, rois_per_image: int) -> list:
    """``n`` realistic inputs; with ``rois_per_image`` > 1, consecutive inputs share an image."""
    items = realistic_inputs(n, seed=seed)
    if rois_per_image > 1:
        items = [dataclasses.replace(it, record_id=f"img{k // rois_per_image:06d}") for k, it in enumerate(items)]
    return items


def timed(fn):
    """``(result, CPU seconds, wall seconds)`` of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def bench(n: int, repeat: int, seed: int, rois_per_image: int, root: Path) -> dict:
    """Best of ``repeat`` runs, each on new inputs (seed ``seed + k``): a stage never checks the same
    description twice, so no run may find the texts of an earlier one in a memo."""
    store = identifier_store(root / "out")
    store.save("bench", VALUES)
    matcher = store.matcher("bench")
    runs = []
    for k in range(repeat):
        items = inputs(n, seed + k, rois_per_image)
        by_key = {(i.record_id, i.roi_id): i for i in items}
        table = root / f"captions_{n}_{k}.parquet"
        _, cap_cpu, cap_wall = timed(lambda t=table, i=items: run_caption_batch(i, EmbeddedCaptioner(), t, chunk_size=CHUNK))
        captions = pl.read_parquet(table)
        forget_texts()  # as a fresh process: no sentence of an earlier run is remembered
        quality, q_cpu, q_wall = timed(lambda c=captions, b=by_key: check_captions(c, b, phi_values=matcher, judge=None))
        runs.append((cap_cpu, cap_wall, q_cpu, q_wall))
    cap_cpu, cap_wall, q_cpu, q_wall = (min(r[i] for r in runs) for i in range(4))
    return {"repeat": repeat, "rois_per_image": rois_per_image, **figures(n, cap_cpu, cap_wall, q_cpu, q_wall, quality)}


def figures(n: int, cap_cpu: float, cap_wall: float, q_cpu: float, q_wall: float, quality: pl.DataFrame) -> dict:
    """Per-ROI milliseconds of both sides, their ratio and the checks' verdicts."""
    return {
        "rois": n,
        "captioner_ms_per_roi": round(1e3 * cap_cpu / n, 4), "quality_ms_per_roi": round(1e3 * q_cpu / n, 4),
        "ratio": round(q_cpu / cap_cpu, 3),
        "captioner_wall_ms_per_roi": round(1e3 * cap_wall / n, 4), "quality_wall_ms_per_roi": round(1e3 * q_wall / n, 4),
        "quality_rows": quality.height, "passed": int(quality["passed"].sum()),
    }


def row(r: dict, note: str = "") -> str:
    """One line of the printed table."""
    return (f"{r['rois']:>7,} {r['captioner_ms_per_roi']:>17.3f} {r['quality_ms_per_roi']:>15.3f} {r['ratio']:>6.2f} "
            f"{r['passed']:>5}/{r['quality_rows']}{note}")


def bench_built(out: Path, part: str, root: Path, repeat: int) -> dict:
    """The captioner and the checks on the ROIs of a built shard (see the module docstring)."""
    from medtrinity_assets.captioning.inputs import describable_rois, read_caption_inputs
    from medtrinity_assets.captioning.parallel_checks import check_images

    ids = list(dict.fromkeys(describable_rois(out, part)))
    matcher = identifier_store(out).matcher(part)

    def describe(table: Path) -> int:
        items = read_caption_inputs(out, part, ids)
        run_caption_batch(items, EmbeddedCaptioner(), table, chunk_size=CHUNK)
        return len(items)

    runs = []
    for k in range(repeat):  # alternated; each side's best run (the texts are the same every run)
        table = root / f"built_{part}_{k}.parquet"  # a new table: no description read from an earlier run
        n, cap_cpu, cap_wall = timed(lambda t=table: describe(t))
        forget_texts()  # as a fresh process
        quality, q_cpu, q_wall = timed(lambda: check_images(str(out), part, ids, matcher))
        runs.append((cap_cpu, cap_wall, q_cpu, q_wall))
    cap_cpu, cap_wall, q_cpu, q_wall = (min(r[i] for r in runs) for i in range(4))
    return {"images": len(ids), "built": f"{out}:{part}", "repeat": repeat,
            **figures(n, cap_cpu, cap_wall, q_cpu, q_wall, quality)}


def warm_up(root: Path) -> float:
    """Build what every process builds once (the ontology index, the gates); its seconds."""
    items = realistic_inputs(8, seed=99)
    table = root / "warm.parquet"
    run_caption_batch(items, EmbeddedCaptioner(), table, chunk_size=8)
    start = time.perf_counter()
    check_captions(pl.read_parquet(table), {(i.record_id, i.roi_id): i for i in items})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rois-per-image", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--built", nargs=2, metavar=("OUT", "PART"), help="also a built shard's ROIs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup_s = warm_up(root)
        print(f"one-time setup (ontology index, first check): {setup_s:.2f} s")
        print(f"{'ROIs':>7} {'captioner ms/ROI':>17} {'quality ms/ROI':>15} {'ratio':>6} {'passed':>9}")
        results = []
        for n in args.sizes:
            r = bench(n, args.repeat, args.seed, args.rois_per_image, root)
            results.append(r)
            print(row(r))
        if args.built:
            r = bench_built(Path(args.built[0]), args.built[1], root, args.repeat)
            results.append(r)
            print(row(r, f"  (built: {r['images']} images of {args.built[1]})"))
    verdict = "met" if all(r["ratio"] <= 1.0 for r in results) else "NOT met"
    print(f"TARGET quality ms/ROI <= captioner ms/ROI: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"setup_s": round(setup_s, 3), "runs": results, "target_met": verdict == "met"},
                                        indent=2))


if __name__ == "__main__":
    main()
