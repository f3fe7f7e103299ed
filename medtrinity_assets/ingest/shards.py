"""Shards of a large source: which inputs each shard reads, where its tables live, and the
duplicates found across shards.

A source declares ``shard_size`` (images, default 10,000). Its inputs are cut, in sorted order,
into units that never split (a file; for DICOM a folder, so a series stays whole) and the units
into consecutive shards of about ``shard_size`` images (a unit's weight: its files; a NIfTI volume
weighs the slices its header gives along the axis the source cuts, an upper bound, since blank slices
are skipped later). Shard ``k`` of source ``s`` writes its per-shard tables at the *part* name ``s`` (shard 0,
so a one-shard source keeps the layout it always had) or ``s@k`` (``k`` zero-padded to 3 digits).

Each shard removes duplicates among its own images while it is ingested; duplicates *across*
shards are found once all shards are ingested, by the asset that summarises the source
(``triplets``), with the same rule as within a shard: an image whose pixels (sha256), or pHash and
thumbnail, match an image kept in an earlier shard is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
import polars as pl

from medtrinity_assets.core.parts import part_name
from medtrinity_assets.ingest.dedup import NearDuplicateIndex, grey32, thumb16


def assign(units: Sequence[tuple[str, int]], size: int) -> dict[str, int]:
    """Unit -> shard: consecutive units (in the given order) fill a shard up to ``size`` images;
    a unit heavier than ``size`` gets a shard of its own."""
    size = max(1, int(size))
    out: dict[str, int] = {}
    shard, filled = 0, 0
    for unit, weight in units:
        if unit in out:
            continue
        if filled and filled + weight > size:
            shard, filled = shard + 1, 0
        out[unit] = shard
        filled += weight
    return out


@dataclass(frozen=True)
class ShardPlan:
    """Which shard every unit of a source falls in."""

    size: int
    shard_of_unit: dict[str, int]
    unit_of: Callable[[str], str]

    @property
    def count(self) -> int:
        return max(self.shard_of_unit.values(), default=0) + 1

    def keeps(self, shard: int) -> Callable[[str], bool]:
        """Whether an input (by relative path) belongs to ``shard``."""
        return lambda relpath: self.shard_of_unit.get(self.unit_of(relpath), 0) == shard

    def keeps_unit(self, shard: int) -> Callable[[str], bool]:
        """Whether a unit belongs to ``shard`` (one the plan does not know: shard 0, as in :meth:`keeps`)."""
        return lambda unit: self.shard_of_unit.get(unit, 0) == shard

    def parts(self, source: str) -> list[str]:
        return [part_name(source, k) for k in range(self.count)]


def plan_shards(units: Iterable[tuple[str, int]], size: int, unit_of: Callable[[str], str]) -> ShardPlan:
    return ShardPlan(int(size), assign(sorted(units), size), unit_of)


@dataclass(frozen=True)
class RankedPlan:
    """Shards of a source whose every input is a unit of one image (an image folder): shard ``k`` holds
    the inputs ranked ``k * size`` to ``(k + 1) * size`` in sorted order, what :func:`assign` gives for
    units of weight one, without a table of every input."""

    size: int
    total: int

    @property
    def count(self) -> int:
        return max(1, -(-self.total // max(1, self.size)))

    def stretch(self, shard: int) -> tuple[int, int]:
        """The ranks ``[lo, hi)`` of shard ``shard``'s inputs (empty past the last shard)."""
        if shard >= self.count:
            return 0, 0
        size = max(1, self.size)
        return shard * size, (shard + 1) * size

    def parts(self, source: str) -> list[str]:
        return [part_name(source, k) for k in range(self.count)]


# --------------------------------------------------------------------------------------
# duplicates across shards


def cross_shard_duplicates(
    out: str | Path, shards: Iterable[pl.DataFrame], max_distance: int | None = 4
) -> dict[str, tuple[str, str]]:
    """Kept images of later shards that duplicate one kept in an earlier shard:
    ``record_id -> (kept record_id, reason)``.

    ``shards``: each shard's ``preprocessed_images`` (``record_id``, ``sha256``, ``phash``,
    ``image_path``) in shard order (a generator reads one at a time). The rule is ingestion's
    (:class:`NearDuplicateIndex`, each shard a group); thumbnails are decoded only for images
    whose pHashes are within ``max_distance`` of another's.
    """
    from medtrinity_assets.core.render import load_png

    @cache
    def thumb(image_path: str) -> np.ndarray:
        return thumb16(grey32(load_png(Path(out) / image_path)))

    index = NearDuplicateIndex(max_distance)
    found: dict[str, tuple[str, str]] = {}
    for shard, table in enumerate(shards):
        kept = []
        for rid, sha, ph_hex, path in table.select("record_id", "sha256", "phash", "image_path").iter_rows():
            ph = int(ph_hex, 16)
            hit, why = index.find(sha, ph, -1, partial(thumb, path))  # -1: no shard's own group
            if hit is not None:
                found[rid] = (hit, f"{why} (another shard)")
            else:
                kept.append((rid, sha, ph, path))
        for rid, sha, ph, path in kept:  # in-shard duplicates were removed at ingestion
            index.add(rid, sha, ph, shard, partial(thumb, path))
    return found
