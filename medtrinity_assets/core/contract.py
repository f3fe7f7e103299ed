"""The table contract: a table's name, schema, location and validating I/O (the contracts
themselves are declared in :mod:`medtrinity_assets.core.tables`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from medtrinity_assets.core.storage import write_parquet_atomic, write_parquet_batches_atomic

GLOBAL_PART = "_global"


class ContractError(ValueError):
    """A table does not match its contract (a column missing, undeclared or of the wrong type)."""


@dataclass(frozen=True)
class TableContract:
    """A table: its name (also its folder and, for asset tables, its asset key), schema and scope."""

    name: str
    schema: Mapping[str, Any]
    scope: Literal["source", "global"] = "source"
    description: str = ""
    folder: str | None = None  # defaults to ``name``
    file: str | None = None  # global tables: the file name (default ``_global.parquet``)
    optional: frozenset[str] = field(default_factory=frozenset)  # may be absent in older files

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def path(self, out: str | Path, source: str | None = None) -> Path:
        """Where the table of ``source`` (per-source tables) or the global table lives."""
        folder = Path(out) / (self.folder or self.name)
        if self.scope == "global":
            return folder / (self.file or f"{GLOBAL_PART}.parquet")
        if not source:
            raise ContractError(f"table '{self.name}' is per source: a source name is required")
        return folder / f"{source}.parquet"

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=dict(self.schema))

    def frame(self, rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
        """A frame of ``rows`` (dicts keyed by column) with exactly the contract's columns."""
        if not rows:
            return self.empty()
        return pl.DataFrame([{c: r.get(c) for c in self.schema} for r in rows], schema=dict(self.schema))

    def validate(self, df: pl.DataFrame, *, where: str = "") -> pl.DataFrame:
        """``df`` with the contract's columns in order and types; raises :class:`ContractError`."""
        at = f" ({where})" if where else ""
        missing = [c for c in self.schema if c not in df.columns and c not in self.optional]
        if missing:
            raise ContractError(f"table '{self.name}'{at}: required column(s) missing: {', '.join(missing)}")
        extra = [c for c in df.columns if c not in self.schema]
        if extra:
            raise ContractError(f"table '{self.name}'{at}: column(s) not in its contract: {', '.join(extra)}")
        cols = []
        for name, dtype in self.schema.items():
            if name not in df.columns:
                cols.append(pl.lit(None, dtype=dtype).alias(name))
                continue
            if df.schema[name] == dtype:
                cols.append(pl.col(name))
                continue
            try:
                cols.append(pl.col(name).cast(dtype, strict=True))
            except Exception as exc:  # noqa: BLE001 - polars raises several types
                raise ContractError(f"table '{self.name}'{at}: column '{name}' is not {dtype}: {exc}") from None
        try:
            return df.select(cols)
        except pl.exceptions.PolarsError as exc:
            raise ContractError(f"table '{self.name}'{at}: cannot cast to its contract: {exc}") from None

    def write(self, df: pl.DataFrame, out: str | Path, source: str | None = None) -> Path:
        """Validate and write atomically; returns the path."""
        path = self.path(out, source)
        write_parquet_atomic(self.validate(df, where=str(path)), path)
        return path

    def write_batches(self, frames: Iterable[pl.DataFrame], out: str | Path, source: str | None = None) -> Path:
        """Validate and write ``frames`` as row groups of one file, one frame in memory at a time."""
        path = self.path(out, source)
        write_parquet_batches_atomic((self.validate(f, where=str(path)) for f in frames), path, self.empty())
        return path

    def read(self, out: str | Path, source: str | None = None, columns: Iterable[str] | None = None,
             where: pl.Expr | None = None) -> pl.DataFrame:
        """Read and validate the table (only ``columns`` when given, only the rows ``where`` holds
        when given: filtered as the file is read); a missing file or column raises with the table named."""
        return self.read_path(self.path(out, source), columns, where)

    def read_images(self, out: str | Path, source: str, record_ids: Sequence[str],
                    columns: Iterable[str] | None = None) -> pl.DataFrame:
        """The rows of the images ``record_ids`` (a slice of a shard), reading only the row groups
        that hold them. A streaming stage writes one row group per slice, so a slice read this way
        costs its own rows, where a filtered scan reads the whole shard's table each time (a shard
        of 16,000 images in 16 slices read its ROI table 11 times over)."""
        path = self.path(out, source)
        where = pl.col("record_id").is_in(list(record_ids))
        return self.read_path(path, columns, where, spans=_row_spans(path, set(record_ids)))

    def read_path(self, path: str | Path, columns: Iterable[str] | None = None,
                  where: pl.Expr | None = None, spans: list[tuple[int, int]] | None = None) -> pl.DataFrame:
        """:meth:`read` of the file ``path``; ``spans``: only the rows ``(offset, length)`` are read."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"table '{self.name}' has not been materialized yet: {path}")
        wanted = list(columns) if columns is not None else None
        if wanted is not None:
            unknown = [c for c in wanted if c not in self.schema]
            if unknown:
                raise ContractError(f"table '{self.name}': no column(s) {', '.join(unknown)} in its contract")
        present = set(pl.read_parquet_schema(path))
        need = wanted if wanted is not None else list(self.schema)
        missing = [c for c in need if c not in present and c not in self.optional]
        if missing:
            raise ContractError(f"table '{self.name}' ({path}): required column(s) missing: {', '.join(missing)}")
        keep = [c for c in need if c in present]
        if where is None and spans is None:
            df = pl.read_parquet(path, columns=keep)
        else:
            scan = pl.scan_parquet(path)
            if spans is not None:  # the slice is pushed down: only the row groups it covers are read
                scan = pl.concat([scan.slice(offset, length) for offset, length in spans]) if spans else scan.head(0)
            df = (scan if where is None else scan.filter(where)).select(keep).collect()
        sub = TableContract(self.name, {c: self.schema[c] for c in need}, optional=self.optional)
        return sub.validate(df, where=str(path))

    def exists(self, out: str | Path, source: str | None = None) -> bool:
        return self.path(out, source).exists()


_ROW_GROUPS: dict[tuple[str, int, int, int, int], list[tuple[int, int, frozenset[str]]]] = {}


def _row_groups(path: Path) -> list[tuple[int, int, frozenset[str]]]:
    """``(first row, rows, record ids)`` of each row group of a table file (none without a
    ``record_id`` column): read once per version of the file (a table is replaced by a rename, so
    its inode, size or time changes with it)."""
    import pyarrow.parquet as pq

    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    found = _ROW_GROUPS.get(key)
    if found is None:
        meta, found, start = pq.ParquetFile(path), [], 0
        for i in range(meta.metadata.num_row_groups if "record_id" in meta.schema_arrow.names else 0):
            ids = meta.read_row_group(i, columns=["record_id"]).column(0).to_pylist()
            found.append((start, len(ids), frozenset(ids)))
            start += len(ids)
        if len(_ROW_GROUPS) >= 32:
            _ROW_GROUPS.clear()
        _ROW_GROUPS[key] = found
    return found


def _row_spans(path: Path, record_ids: set[str]) -> list[tuple[int, int]] | None:
    """The row ranges of ``path`` whose row groups hold one of ``record_ids``, adjacent groups
    merged; None (scan the file) for a file of one row group, a missing file or no ``record_id``."""
    if not path.is_file():
        return None
    groups = _row_groups(path)
    if len(groups) < 2:
        return None
    spans: list[tuple[int, int]] = []
    for start, rows, ids in groups:
        if ids.isdisjoint(record_ids):
            continue
        if spans and sum(spans[-1]) == start:
            spans[-1] = (spans[-1][0], spans[-1][1] + rows)
        else:
            spans.append((start, rows))
    return spans


# --------------------------------------------------------------------------------------
# the tables
