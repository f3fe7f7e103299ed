"""Parts: where each shard of a source keeps its per-shard tables, and how many shards a source has.

Shard ``k`` of source ``s`` writes its tables at the part name ``s`` (shard 0, so a one-shard source
keeps the layout it always had) or ``s@k`` (``k`` zero-padded to 3 digits); source names cannot
contain ``@``. Ingestion records the source's current shard count (``source_manifest/_shards/``);
readers of a whole source read exactly those shards, so a source that shrank ignores its old ones
(:func:`stale_parts` lists their files; shard 0's ingestion warns about them and leaves them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

DEFAULT_SHARD_SIZE = 10_000
SEPARATOR = "@"


def shard_key(index: int) -> str:
    """The shard dimension's partition key of shard ``index`` (``000``, ``001``...)."""
    return f"{index:03d}"


def part_name(source: str, shard: int) -> str:
    """Where shard ``shard`` of ``source`` keeps its per-shard tables (``source`` for shard 0)."""
    return source if shard == 0 else f"{source}{SEPARATOR}{shard_key(shard)}"


def split_part(part: str) -> tuple[str, int]:
    """``(source, shard)`` of a part name."""
    source, _, shard = part.partition(SEPARATOR)
    return source, int(shard) if shard else 0


# --------------------------------------------------------------------------------------
# the recorded plan: how many shards a source has now (readers of a whole source use it)


def plan_path(out: str | Path, source: str) -> Path:
    return Path(out) / "source_manifest" / "_shards" / f"{source}.json"


def record_count(out: str | Path, source: str, count: int, size: int) -> None:
    from medtrinity_assets.core.storage import atomic_write_bytes

    atomic_write_bytes(plan_path(out, source), json.dumps({"count": count, "size": size}).encode("utf-8"))


def shard_count(out: str | Path, source: str) -> int:
    """The source's shard count recorded by its latest ingestion (1 when none was recorded)."""
    path = plan_path(out, source)
    if not path.is_file():
        return 1
    return max(1, int(json.loads(path.read_text(encoding="utf-8")).get("count", 1)))


def source_parts(out: str | Path, source: str) -> list[str]:
    """The part names of every current shard of ``source``."""
    return [part_name(source, k) for k in range(shard_count(out, source))]


def stale_parts(out: str | Path, source: str) -> list[Path]:
    """Table files of shards ``source`` no longer has (it shrank): no reader reads them, and they
    are left for the user to remove (nothing produced is deleted behind their back)."""
    count = shard_count(out, source)
    return sorted(path for path in Path(out).glob(f"*/{source}{SEPARATOR}*.parquet")
                  if split_part(path.stem)[1] >= count)


def part_paths(contract, out: str | Path, source: str) -> list[Path]:
    """The files of a per-shard table for every current shard of ``source`` that has one."""
    return [path for path in (contract.path(out, part) for part in source_parts(out, source)) if path.exists()]


def read_source(contract, out: str | Path, source: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """A per-shard table of the whole source: its shards' tables in shard order."""
    frames = [contract.read(out, part, columns) for part in source_parts(out, source)]
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
