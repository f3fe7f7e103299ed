"""What every shard's run of a large source pays to plan its source and find its own files, against a
plain listing (issue 15: each shard listed its whole source, so a 12M-file source with ~1,200 shards
listed 12M files 1,200 times).

A generated tree of empty files (patient/study/series folders of ``--per-folder`` files; only listings
are timed, no header or image is read) is planned as a shard's run plans it, for a DICOM source (a
folder is a unit: a shard is a run of whole folders) and an image folder (``images/``; a file is a
unit: a shard is a stretch of the sorted files):

- ``plain``: the baseline a competent user would write: one ``os.walk`` (DICOM: counting files per
  folder, then listing the shard's folders; image folder: every path, sorted, then the shard's
  slice), and an ``lstat`` of each of the shard's files (as the reader looks at each file: a link is
  resolved inside the root). No memo: every shard walks it all.
- ``full``: what the readers did before the memo: the whole source listed for the plan and again for
  the shard's files (``list_relpaths``, ``list_files`` / ``list_folder``), with a table of every unit.
- ``first``: the reader's plan and shard listing (:mod:`medtrinity_assets.ingest.readers.folder_units`)
  on a cold memo: everything listed, each settled folder's count remembered.
- ``later``: the same on a warm memo, as every later shard's run meets it: a ``stat`` per unchanged
  leaf folder, listings of folders with subfolders and of the shard's own folders.

Figures are milliseconds per shard run (best of ``--repeat``) and the whole source's planning cost
over all its shards; the target is a ``later`` cost that grows with the number of folders, not files.

    python benchmarks/shard_planning.py [--sizes 50000 200000] [--layouts dicom image_folder]
        [--per-folder 250] [--shard-size 10000] [--repeat 3] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medtrinity_assets.ingest.readers import reader_for  # noqa: E402
from medtrinity_assets.ingest.readers.dicom_headers import is_dicomdir  # noqa: E402
from medtrinity_assets.ingest.readers.files import list_files, list_relpaths  # noqa: E402
from medtrinity_assets.ingest.readers.image_folder import list_folder  # noqa: E402
from medtrinity_assets.ingest.registry import SourceSpec  # noqa: E402
from medtrinity_assets.ingest.shards import plan_shards  # noqa: E402


def make_tree(root: Path, files: int, per_folder: int, suffix: str = ".dcm") -> int:
    """``files`` empty files in series folders of ``per_folder`` (10 series a study, 4 studies a
    patient), every folder's mtime set a minute back (settled); returns the number of folders."""
    folders = 0
    for k in range(0, files, per_folder):
        series = k // per_folder
        folder = root / f"P{series // 40:05d}" / f"ST{series // 10 % 4}" / f"SE{series % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        folders += 1
        for i in range(min(per_folder, files - k)):
            (folder / f"IM{i:05d}{suffix}").touch()
    past = time.time() - 60
    for folder, _dirs, _files in os.walk(root):
        os.utime(folder, (past, past))
    return folders


def plain(layout: str, root: Path, shard: int, size: int) -> int:
    """The baseline: one ``os.walk``, the plan, the shard's files (each ``lstat``-ed)."""
    if layout == "image_folder":
        paths = []
        for folder, dirs, names in os.walk(root / "images"):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            paths += [os.path.join(folder, n) for n in names if not n.startswith(".")]
        paths.sort()
        return len([os.lstat(p) for p in paths[shard * size:(shard + 1) * size]])
    counts: Counter[str] = Counter()
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        counts["" if rel == "." else rel] += sum(not n.startswith(".") for n in names)
    plan = plan_shards([(u, n) for u, n in counts.items() if n], size, lambda r: r.rsplit("/", 1)[0])
    own = sorted(u for u, k in plan.shard_of_unit.items() if k == shard)
    looked = [os.lstat(os.path.join(root, u, name)) for u in own for name in sorted(os.listdir(root / u))]
    return len(looked)


def full(layout: str, spec: SourceSpec, root: Path, shard: int) -> int:
    """The readers before the memo: plan from a listing of every file, the shard's files from another."""
    reader = reader_for(layout)
    if layout == "image_folder":
        plan = plan_shards(Counter(list_relpaths(root, (), "images")).items(), spec.shard_size, reader.shard_unit)
        return len(list_folder(root, [], keep=plan.keeps(shard)))
    units = Counter(reader.shard_unit(rel) for rel in list_relpaths(root) if not is_dicomdir(rel))
    plan = plan_shards(units.items(), spec.shard_size, reader.shard_unit)
    return len(list_files(root, keep=plan.keeps(shard)))


def ours(layout: str, spec: SourceSpec, root: Path, shard: int) -> int:
    """The reader's plan and the shard's listing, as a shard's run makes them (no header read)."""
    reader = reader_for(layout)
    plan = reader.shard_plan(spec, root)
    if layout == "image_folder":  # its shard scan is listings only
        return len(reader.scan_shard(spec, root, None, plan, shard).tasks)
    return len(reader._walk(spec, root, plan.keeps_unit(shard)).found)


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def bench(work: Path, layout: str, files: int, per_folder: int, shard_size: int, repeat: int) -> dict:
    root = work / f"tree_{layout}_{files}"
    if root.exists():
        shutil.rmtree(root)
    image_folder = layout == "image_folder"
    folders = make_tree(root / "images" if image_folder else root, files, per_folder, ".png" if image_folder else ".dcm")
    root = root.resolve()
    spec = SourceSpec(name="bench", layout=layout, root=str(root), modality="CT", organ="chest",
                      license="test", shard_size=shard_size)
    shards = -(-files // shard_size)
    shard = shards // 2
    t_plain, n_plain = best(lambda: plain(layout, root, shard, shard_size), repeat)
    t_full, n_full = best(lambda: full(layout, spec, root, shard), repeat)
    t_first, n_first = best(lambda: ours(layout, spec, root, shard), 1)
    t_later, n_later = best(lambda: ours(layout, spec, root, shard), repeat)
    assert n_plain == n_full == n_first == n_later, (n_plain, n_full, n_first, n_later)
    shutil.rmtree(root)
    return {
        "layout": layout, "files": files, "folders": folders, "shards": shards, "shard_files": n_later,
        "plain_ms_per_shard": round(1e3 * t_plain, 1), "full_ms_per_shard": round(1e3 * t_full, 1), "first_ms": round(1e3 * t_first, 1),
        "later_ms_per_shard": round(1e3 * t_later, 1), "later_vs_plain": round(t_later / t_plain, 3),
        "plain_s_all_shards": round(t_plain * shards, 2), "full_s_all_shards": round(t_full * shards, 2), "ours_s_all_shards": round(t_first + t_later * (shards - 1), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--layouts", nargs="+", default=["dicom", "image_folder"], choices=["dicom", "image_folder"])
    ap.add_argument("--per-folder", type=int, default=250)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="shard_planning_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDTRINITY_CACHE", str(work / "cache"))  # a cold memo of its own
    rows = [bench(work, layout, n, args.per_folder, args.shard_size, args.repeat)
            for layout in args.layouts for n in args.sizes]
    print(f"{'layout':>12} {'files':>9} {'folders':>7} {'shards':>6} {'plain ms':>9} {'full ms':>8} {'first ms':>9} "
          f"{'later ms':>9} {'later/plain':>11} | all shards, s: {'plain':>7} {'full':>7} {'ours':>6}")
    for r in rows:
        print(f"{r['layout']:>12} {r['files']:>9,} {r['folders']:>7,} {r['shards']:>6} {r['plain_ms_per_shard']:>9} {r['full_ms_per_shard']:>8} "
              f"{r['first_ms']:>9} {r['later_ms_per_shard']:>9} {r['later_vs_plain']:>11} |                "
              f"{r['plain_s_all_shards']:>7} {r['full_s_all_shards']:>7} {r['ours_s_all_shards']:>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
