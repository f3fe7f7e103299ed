"""Shards of a large source: which inputs each shard reads, where its tables live, and the
duplicates found across shards.

A source declares ``shard_size`` (images, default 10,000). Its inputs are cut, in sorted order,
into units that never split (a file; for DICOM a folder, so a series stays whole) and the units
into consecutive shards of about ``shard_size`` images (a unit's weight: its files; a volume counts
once). Shard ``k`` of source ``s`` writes its per-shard tables at the *part* name ``s`` (shard 0,
so a one-shard source keeps the layout it always had) or ``s@k`` (``k`` zero-padded to 3 digits).

Each shard removes duplicates among its own images while it is ingested; duplicates *across*
shards are found once all shards are ingested, by the asset that summarises the source
(``triplets``), with the same rule as within a shard: an image whose pixels (sha256), or pHash and
thumbnail, match an image kept in an earlier shard is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from medtrinity_assets.core.parts import part_name
from medtrinity_assets.ingest.dedup import (
    BANDED_MAX_DISTANCE,
    NEAR_DUP_MIN_CORR,
    grey32,
    phash_bands,
    thumb16,
    thumb_corr,
)


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

    def parts(self, source: str) -> list[str]:
        return [part_name(source, k) for k in range(self.count)]


def plan_shards(units: Iterable[tuple[str, int]], size: int, unit_of: Callable[[str], str]) -> ShardPlan:
    return ShardPlan(int(size), assign(sorted(units), size), unit_of)


# --------------------------------------------------------------------------------------
# duplicates across shards


def cross_shard_duplicates(
    out: str | Path, shards: Sequence[pl.DataFrame], max_distance: int | None = 4
) -> dict[str, tuple[str, str]]:
    """Kept images of later shards that duplicate one kept in an earlier shard:
    ``record_id -> (kept record_id, reason)``.

    ``shards``: each shard's ``preprocessed_images`` (``record_id``, ``sha256``, ``phash``,
    ``image_path``) in shard order. Same rule as within a shard (``NearDuplicateIndex``), and
    thumbnails are decoded only for the pairs whose pHashes are within ``max_distance``.
    """
    from medtrinity_assets.core.render import load_png

    thumbs: dict[str, np.ndarray] = {}

    def thumb(record_id: str, image_path: str) -> np.ndarray:
        if record_id not in thumbs:
            thumbs[record_id] = thumb16(grey32(load_png(Path(out) / image_path)))
        return thumbs[record_id]

    kept_sha: dict[str, str] = {}
    bands: dict[tuple[int, int], list[tuple[int, str, int, str]]] = {}  # (order kept, id, pHash, path)
    kept_all: list[tuple[int, str, int, str]] = []
    found: dict[str, tuple[str, str]] = {}
    for table in shards:
        added = []
        for rid, sha, ph_hex, path in table.select("record_id", "sha256", "phash", "image_path").iter_rows():
            hit = kept_sha.get(sha)
            if hit is not None:
                found[rid] = (hit, "exact_duplicate: identical pixels (another shard)")
                continue
            ph = int(ph_hex, 16)
            near = _near(ph, bands, kept_all, max_distance)
            match = next((e for e in near if thumb_corr(thumb(e[1], e[3]), thumb(rid, path)) >= NEAR_DUP_MIN_CORR),
                         None)
            if match is not None:
                dist = bin(ph ^ match[2]).count("1")
                found[rid] = (match[1], f"near_duplicate: phash distance {dist} (another shard)")
                continue
            added.append((rid, sha, ph, path))
        for rid, sha, ph, path in added:  # an earlier shard's images only: in-shard ones were checked at ingest
            kept_sha.setdefault(sha, rid)
            entry = (len(kept_all), rid, ph, path)
            kept_all.append(entry)
            for band in phash_bands(ph):
                bands.setdefault(band, []).append(entry)
    return found


def _near(ph: int, bands: dict, kept_all: list, max_distance: int | None) -> list[tuple[int, str, int, str]]:
    """Kept images within ``max_distance`` bits of ``ph``, in the order they were kept."""
    if max_distance is None:
        return []
    if max_distance <= BANDED_MAX_DISTANCE:
        pool = sorted({e for band in phash_bands(ph) for e in bands.get(band, ())})
    else:
        pool = kept_all
    return [e for e in pool if bin(ph ^ e[2]).count("1") <= max_distance]
