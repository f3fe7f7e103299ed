"""A source's triplets over all its shards, one shard in memory at a time.

Each shard's tables are joined into triplet rows (before splits) and parked in a scratch file;
splits are then decided per group over every shard's ``(group_id, declared split)`` pairs (a
patient's files may sit in several shards), and the rows are written as the row groups of the
source's ``triplets`` table, shard by shard. Images that duplicate one kept in an earlier shard
are left out (:func:`medtrinity_assets.ingest.shards.cross_shard_duplicates`). A shard is read
and joined one slice of its images at a time (a triplet joins the rows of one image), so peak
memory is one slice's tables, not the shard's nor the source's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from medtrinity_assets.core.storage import write_parquet_atomic
from medtrinity_assets.core.tables import (
    CAPTION_BATCH,
    CAPTION_QUALITY,
    COARSE_CAPTIONS,
    PREPROCESSED_IMAGES,
    ROI_SET,
    SOURCE_MANIFEST,
    TRIPLETS,
)
from medtrinity_assets.core.workers import IMAGES_PER_SLICE, image_slices
from medtrinity_assets.export.splits import group_splits, settle, with_groups
from medtrinity_assets.export.triplets import triplet_rows

#: the per-shard tables a source's triplets are made from
INPUTS = (CAPTION_BATCH, CAPTION_QUALITY, ROI_SET, PREPROCESSED_IMAGES, SOURCE_MANIFEST, COARSE_CAPTIONS)


class ShardsMissing(RuntimeError):
    """A current shard of the source has not been built up to its descriptions' quality yet."""


@dataclass
class SourceTriplets:
    path: Path
    rows: int
    described: int  # descriptions considered (duplicates across shards left out)
    duplicates: dict[str, tuple[str, str]] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)


def missing_shards(out: Path, parts: Sequence[str]) -> list[str]:
    """``table:part`` for every input table a shard lacks."""
    return [f"{c.name}:{p}" for p in parts for c in INPUTS if not c.exists(out, p)]


def source_triplets(
    out: str | Path,
    source: str,
    parts: Sequence[str],
    *,
    license: str,
    synthetic: bool,
    fractions: dict[str, float] | None = None,
) -> SourceTriplets:
    """Write ``triplets`` of ``source`` from its shards ``parts`` (in shard order)."""
    from medtrinity_assets.ingest.shards import cross_shard_duplicates

    out = Path(out)
    missing = missing_shards(out, parts)
    if missing:
        raise ShardsMissing(f"source '{source}': {len(missing)} shard table(s) not built yet "
                            f"({', '.join(missing[:4])}); build its shards first")
    duplicates: dict[str, tuple[str, str]] = {}
    if len(parts) > 1:
        cols = ["record_id", "sha256", "phash", "image_path"]
        duplicates = cross_shard_duplicates(out, (PREPROCESSED_IMAGES.read(out, p, cols) for p in parts))
    scratch = TRIPLETS.path(out, source).with_name(f".{source}.shards")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        described, files = 0, []
        for k, part in enumerate(parts):
            for j, (rows, n) in enumerate(_shard_rows(out, part, duplicates, license, synthetic)):
                described += n
                files.append(write_parquet_atomic(rows, scratch / f"{k:05d}-{j:05d}.parquet"))
        if not files:  # nothing described: the empty table, with its groups' columns
            files.append(write_parquet_atomic(with_groups(TRIPLETS.empty(), pl.Series([], dtype=pl.String)),
                                              scratch / "empty.parquet"))
        groups = pl.concat([pl.read_parquet(f, columns=["group_id", "_declared"]) for f in files])
        splits = group_splits(groups, fractions)
        path = TRIPLETS.write_batches(_settled(files, splits), out, source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts = pl.read_parquet(path, columns=["split"])["split"].value_counts()
    return SourceTriplets(path, int(counts["count"].sum()) if counts.height else 0, described, duplicates,
                          dict(counts.iter_rows()))


def _shard_rows(out: Path, part: str, duplicates: dict, license: str, synthetic: bool,
                ) -> Iterator[tuple[pl.DataFrame, int]]:
    """One shard's triplet rows (before splits), slice by slice of its described images (a
    triplet joins the rows of one image only), and how many descriptions each slice considered."""
    ids = CAPTION_BATCH.read(out, part, columns=["record_id"])["record_id"].to_list()
    for images in image_slices([i for i in ids if i not in duplicates], IMAGES_PER_SLICE):
        tables = {c.name: c.read_images(out, part, images) for c in INPUTS}
        rows = triplet_rows(
            captions=tables[CAPTION_BATCH.name],
            quality=tables[CAPTION_QUALITY.name],
            rois=tables[ROI_SET.name],
            images=tables[PREPROCESSED_IMAGES.name],
            manifest=tables[SOURCE_MANIFEST.name],
            coarse=tables[COARSE_CAPTIONS.name],
            license=license,
            synthetic=synthetic,
        )
        yield rows, tables[CAPTION_BATCH.name].height


def _settled(files: list[Path], splits: pl.DataFrame) -> Iterator[pl.DataFrame]:
    for f in files:
        yield settle(pl.read_parquet(f), splits, TRIPLETS.columns)
