"""Compare two output roots table by table, row for row (``medtrinity compare OLD NEW``).

Made to check a change of the pipeline against the tables it produced before: every Parquet
table present in either root is read, rows are matched on the table's key columns and compared
cell by cell; columns that record when something ran (``created_at``) are ignored, as are the
columns named with ``--ignore``. The report lists, per table, missing and extra rows and the
columns that differ with a few examples; the content-addressed image and mask files are
compared as sets of names (names are hashes of the bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

TIME_COLUMNS = frozenset({"created_at"})
KEYS = (("record_id", "roi_id"), ("record_id",), ("chunk_id",), ("path", "line"))
SKIP_DIRS = frozenset({"_private", "_remote_cache", "expert_models"})


@dataclass
class TableDiff:
    name: str
    rows_old: int = 0
    rows_new: int = 0
    only_old: int = 0
    only_new: int = 0
    columns: dict[str, int] = field(default_factory=dict)  # column -> rows that differ
    examples: dict[str, list[tuple]] = field(default_factory=dict)
    schema: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.only_old or self.only_new or self.columns or self.schema)

    def lines(self) -> list[str]:
        if self.identical:
            return [f"{self.name}: identical ({self.rows_new} rows)"]
        out = [f"{self.name}: {self.rows_old} -> {self.rows_new} rows, {self.only_old} only in old, "
               f"{self.only_new} only in new"]
        out += [f"  schema: {s}" for s in self.schema]
        for col, n in sorted(self.columns.items()):
            out.append(f"  {col}: {n} row(s) differ")
            out += [f"    {old!r} -> {new!r}" for old, new in self.examples.get(col, [])]
        return out


def _tables(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.parquet")):
        rel = p.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or any(part.endswith(".parts") for part in rel.parts):
            continue
        out[rel.as_posix()] = p
    return out


def _key(df: pl.DataFrame) -> list[str]:
    for cols in KEYS:
        if all(c in df.columns for c in cols) and df.select(cols).is_unique().all():
            return list(cols)
    return []


def _with_row(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_row_index("__row").with_columns(pl.col("__row").cast(pl.Int64))


def compare_table(name: str, old: pl.DataFrame, new: pl.DataFrame, ignore: frozenset[str], examples: int = 3) -> TableDiff:
    d = TableDiff(name, old.height, new.height)
    common = [c for c in old.columns if c in new.columns and c not in ignore]
    d.schema = [f"column '{c}' only in old" for c in old.columns if c not in new.columns] + [
        f"column '{c}' only in new" for c in new.columns if c not in old.columns
    ]
    key = _key(old) if _key(old) == _key(new) else []
    if not key:  # no shared unique key: compare in row order
        old, new, key = _with_row(old), _with_row(new), ["__row"]
    cols = common + [k for k in key if k not in common]
    joined = old.select(cols).with_columns(pl.lit(True).alias("__old")).join(
        new.select(cols).with_columns(pl.lit(True).alias("__new")), on=key, how="full", suffix="__new", coalesce=True
    )
    d.only_old = joined.filter(pl.col("__new").is_null()).height
    d.only_new = joined.filter(pl.col("__old").is_null()).height
    joined = joined.filter(pl.col("__old").is_not_null() & pl.col("__new").is_not_null())
    for c in common:
        if c in key:
            continue
        a, b = joined[c], joined[f"{c}__new"]
        differ = ~((a == b).fill_null(False) | (a.is_null() & b.is_null()))
        n = int(differ.sum())
        if n:
            d.columns[c] = n
            rows = joined.filter(differ).head(examples)
            d.examples[c] = list(zip(rows[c].to_list(), rows[f"{c}__new"].to_list(), strict=True))
    return d


def _files(root: Path, kind: str) -> set[str]:
    base = root / kind
    return {p.name for p in base.rglob("*.png")} if base.is_dir() else set()


def compare_roots(old: str | Path, new: str | Path, ignore: Sequence[str] = ()) -> tuple[list[TableDiff], list[str]]:
    """Per-table differences and file-set differences between two output roots."""
    old, new = Path(old), Path(new)
    skip = TIME_COLUMNS | frozenset(ignore)
    a, b = _tables(old), _tables(new)
    diffs = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            d = TableDiff(name)
            d.schema = [f"table only in {'new' if name in b else 'old'}"]
            diffs.append(d)
            continue
        diffs.append(compare_table(name, pl.read_parquet(a[name]), pl.read_parquet(b[name]), skip))
    files = []
    for kind in ("images", "masks"):
        fa, fb = _files(old, kind), _files(new, kind)
        if fa != fb:
            files.append(f"{kind}: {len(fa - fb)} only in old, {len(fb - fa)} only in new")
        else:
            files.append(f"{kind}: identical ({len(fa)} files)")
    return diffs, files
