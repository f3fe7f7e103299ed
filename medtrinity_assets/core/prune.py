"""Content files no table names any more: the PNGs of ``<out>/images`` and ``<out>/masks``.

Content files are written once, named by their hash, and never overwritten or removed by a build,
so a rebuild whose images changed (new ingestion code, a source's files edited or removed, a
source taken out of the registry) leaves the old files where they were: nothing produced is
deleted behind the user's back. ``medtrinity prune`` lists them and, with ``--apply``, removes them.

A file is referenced when any table under the output root names it: a column ``image_path`` or
``mask_path`` (a path relative to the root: ``images/ab/<sha256>.png``) or ``image_sha256`` (an
image's hash, as the triplets and the export name it). References are held as the first 60 bits of
each hash in a sorted array (8 bytes a file, 200 MB at 25 million): two hashes that share those
bits can only keep a file nobody names, never remove one that is named. Files younger than
``min_age_s`` are kept, as a running ingestion commits its files before it writes the table that
names them. A root without a single table that has such a column is refused (an older layout, or
not an output root): every file would look unnamed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

KINDS = ("images", "masks")  # the content folders ingestion writes
PATH_COLUMNS = ("image_path", "mask_path")
HASH_COLUMNS = ("image_sha256",)
_BITS = 15  # hex digits of a hash kept (60 bits: an Int64 in polars)
_HEX = frozenset("0123456789abcdef")


class PruneRefused(RuntimeError):
    """The references cannot be known (no table, an unreadable table): nothing may be removed."""


@dataclass
class PrunePlan:
    out: Path
    tables: int  # tables with a column that names content files
    referenced: int  # content files a table names
    unreferenced: list[Path] = field(default_factory=list)  # old enough to remove
    unreferenced_bytes: int = 0
    young: int = 0  # not named, but younger than the minimum age: kept

    def summary(self, applied: bool = False) -> str:
        mib = self.unreferenced_bytes / 2**20
        verb = "removed" if applied else "can be removed"
        text = (f"{self.out}: {self.referenced:,} content files named by {self.tables:,} tables; "
                f"{len(self.unreferenced):,} named by none ({mib:.1f} MiB) {verb}")
        return text + (f"; {self.young:,} newer ones kept (a build may be writing them)" if self.young else "")


def referenced_keys(out: str | Path) -> tuple[np.ndarray, int]:
    """The sorted unique keys (see the module docstring) of the hashes every table under ``out``
    names, and how many tables have a column that names content files. Raises
    :class:`PruneRefused` on an unreadable table."""
    keys, tables = [], 0
    for path in _tables(Path(out)):
        try:
            names = pl.read_parquet_schema(path)
            cols = [c for c in (*PATH_COLUMNS, *HASH_COLUMNS) if c in names]
            frame = pl.read_parquet(path, columns=cols) if cols else None
        except Exception as exc:  # noqa: BLE001 - any unreadable table makes the references unknown
            raise PruneRefused(f"cannot read table {path}: {type(exc).__name__}: {exc}") from exc
        tables += bool(cols)
        keys += [_keys(frame[col].drop_nulls().str.extract(r"([0-9a-f]{64})").drop_nulls()) for col in cols]
    found = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    return found, tables


def _keys(hexes: pl.Series) -> np.ndarray:
    """The key of each SHA-256 hex digest: its first :data:`_BITS` digits as an integer."""
    return hexes.str.slice(0, _BITS).str.to_integer(base=16).to_numpy().astype(np.int64, copy=False)


def _tables(out: Path) -> Iterator[Path]:
    """Every Parquet file under ``out`` outside the content folders and hidden entries."""
    for folder, dirs, files in os.walk(out):
        if Path(folder) == out:
            dirs[:] = [d for d in dirs if d not in KINDS]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".parquet") and not f.startswith("."))


def plan_prune(out: str | Path, min_age_s: float = 3600.0) -> PrunePlan:
    """What :func:`prune` would remove under ``out`` (nothing is touched)."""
    out = Path(out)
    refs, tables = referenced_keys(out)
    if not tables:
        raise PruneRefused(f"no table under {out} has a column that names images or masks, so nothing is "
                           "removed (is it the output root of a build?)")
    plan, cutoff = PrunePlan(out, tables, 0), time.time() - min_age_s
    for entries in _content_folders(out):
        keys = _keys(pl.Series([e.name for e in entries], dtype=pl.String))
        at = np.minimum(np.searchsorted(refs, keys), max(len(refs) - 1, 0))
        named = refs[at] == keys if len(refs) else np.zeros(len(keys), bool)
        plan.referenced += int(named.sum())
        for entry in (e for e, hit in zip(entries, named, strict=True) if not hit):
            _plan_file(plan, entry, cutoff)
    return plan


def _content_folders(out: Path) -> Iterator[list[os.DirEntry]]:
    """The content files (``<sha256>.png``) of each folder of the content store."""
    for kind in KINDS:
        base = out / kind
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            with os.scandir(folder) as listing:
                yield [e for e in listing if _is_content(e.name) and e.is_file(follow_symlinks=False)]


def _is_content(name: str) -> bool:
    return len(name) == 68 and name.endswith(".png") and _HEX.issuperset(name[:64])


def _plan_file(plan: PrunePlan, entry: os.DirEntry, cutoff: float) -> None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return
    if st.st_mtime > cutoff:
        plan.young += 1
    else:
        plan.unreferenced.append(Path(entry.path))
        plan.unreferenced_bytes += st.st_size


def prune(plan: PrunePlan) -> int:
    """Remove the plan's files; how many were removed (one already gone is skipped)."""
    removed = 0
    for path in plan.unreferenced:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed
