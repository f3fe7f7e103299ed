"""The whole dataset: every source's triplets, deduplicated across sources, split without
leakage, with their original images, in ``<out>/export/`` (table ``medtrinity_dataset``).

Order of work: read the sources' ``triplets``; drop the records whose image another source
already holds (provenance kept in ``export/dropped.parquet``); settle each group's split across
sources (the most held-out wins: a patient never straddles splits); refuse on any leak (the same
image in two splits, an evaluation image in training or validation); link or copy the images;
write the table. Formats, verification, the card, the catalog and the viewer follow
(:mod:`medtrinity_assets.export.formats` and neighbours).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from medtrinity_assets.core.images import read_png
from medtrinity_assets.core.parts import read_source
from medtrinity_assets.core.storage import content_path, write_parquet_atomic
from medtrinity_assets.core.tables import MEDTRINITY_DATASET, PREPROCESSED_IMAGES, TRIPLETS
from medtrinity_assets.export.dedup import ImageRef, Match, cross_source_duplicates
from medtrinity_assets.export.leakage import LeakageError, eval_leaks, load_eval_set, split_leaks
from medtrinity_assets.ingest.dedup import grey32, thumb16

EXPORT_DIR = "export"
DROPPED_FILE = "dropped.parquet"
_SPLIT_RANK = {"train": 0, "validation": 1, "test": 2}


@dataclass
class DatasetBuild:
    """What :func:`build_dataset` made."""

    root: Path  # the export folder
    table: pl.DataFrame
    dropped: pl.DataFrame
    missing_sources: list[str] = field(default_factory=list)
    images_linked: int = 0


def export_root(out: str | Path) -> Path:
    return Path(out) / EXPORT_DIR


def _read_triplets(out: Path, sources: list[str]) -> tuple[pl.DataFrame, list[str]]:
    frames, missing = [], []
    for name in sorted(sources):
        if TRIPLETS.exists(out, name):
            frames.append(TRIPLETS.read(out, name))
        else:
            missing.append(name)
    return (pl.concat(frames, how="vertical") if frames else TRIPLETS.empty()), missing


def _image_refs(out: Path, df: pl.DataFrame) -> list[ImageRef]:
    """One reference per (source, record) of ``df`` with its pHash, in source-name order."""
    refs = []
    for name in sorted(set(df["source"].to_list())):
        ph = read_source(PREPROCESSED_IMAGES, out, name, ["record_id", "phash"])
        phash = dict(zip(ph["record_id"], ph["phash"], strict=True))
        rows = df.filter(pl.col("source") == name).unique("record_id", keep="first", maintain_order=True)
        refs += [ImageRef(name, r, s, int(phash.get(r) or "0", 16)) for r, s in zip(rows["record_id"], rows["image_sha256"], strict=True)]
    return refs


def _thumbs(out: Path):
    @lru_cache(maxsize=100_000)
    def by_sha(sha: str) -> np.ndarray:
        return thumb16(grey32(read_png(content_path(out, "images", sha))))

    return lambda ref: by_sha(ref.sha256)


def settle_splits(df: pl.DataFrame) -> pl.DataFrame:
    """One split per group across sources: the most held-out of its rows' (test > validation > train)."""
    if df.height == 0:
        return df
    rank = pl.col("split").replace_strict(_SPLIT_RANK, default=0, return_dtype=pl.Int8)
    names = {v: k for k, v in _SPLIT_RANK.items()}
    settled = df.group_by("group_id").agg(rank.max().alias("_rank"))
    settled = settled.with_columns(pl.col("_rank").replace_strict(names, return_dtype=pl.String).alias("_split"))
    return df.join(settled.select("group_id", "_split"), on="group_id", how="left").with_columns(
        split=pl.col("_split")
    ).drop("_split")


def _dropped_frame(matches: list[Match]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"source": m.image.source, "record_id": m.image.record_id, "kept_source": m.kept.source,
             "kept_record_id": m.kept.record_id, "reason": m.reason}
            for m in matches
        ],
        schema={"source": pl.String, "record_id": pl.String, "kept_source": pl.String,
                "kept_record_id": pl.String, "reason": pl.String},
    )


def _link_images(out: Path, root: Path, shas: list[str]) -> int:
    """Hard-link (else copy) each original image into the export; remove images no longer used."""
    wanted = {f"images/{s[:2]}/{s}.png" for s in shas}
    present = {p.relative_to(root).as_posix() for p in (root / "images").glob("*/*.png")}
    for old in present - wanted:
        (root / old).unlink()
    made, folders = 0, set()
    for rel in sorted(wanted - present):
        dst, src = root / rel, content_path(out, "images", Path(rel).stem)
        if dst.parent not in folders:
            dst.parent.mkdir(parents=True, exist_ok=True)
            folders.add(dst.parent)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        made += 1
    return made


def build_dataset(
    out: str | Path, sources: list[str], *, eval_sets: list[str] | None = None, max_distance: int = 4
) -> DatasetBuild:
    """Assemble, deduplicate, split, check for leaks and write the dataset table (module doc).
    Raises :class:`LeakageError` naming every offending record."""
    out = Path(out)
    df, missing = _read_triplets(out, sources)
    thumb = _thumbs(out)
    matches = cross_source_duplicates(_image_refs(out, df), thumb, max_distance) if df.height else []
    dropped = _dropped_frame(matches)
    if dropped.height:
        gone = (dropped["source"] + "\x1f" + dropped["record_id"]).implode()
        df = df.filter(~(pl.col("source") + "\x1f" + pl.col("record_id")).is_in(gone))
    df = settle_splits(df)
    kept_of = {m.kept.record_id: m.kept.sha256 for m in matches}
    df = df.with_columns(duplicate_group=pl.col("record_id").replace_strict(kept_of, default=None, return_dtype=pl.String))
    pairs = _split_pairs(out, df)
    leaks = split_leaks(pairs, thumb)
    for spec in eval_sets or []:
        leaks += eval_leaks(pairs, load_eval_set(spec), thumb)
    if leaks:
        raise LeakageError(leaks)
    root = export_root(out)
    linked = _link_images(out, root, sorted(set(df["image_sha256"].to_list())))
    table = MEDTRINITY_DATASET.validate(df.select(list(MEDTRINITY_DATASET.schema)))
    write_parquet_atomic(table, MEDTRINITY_DATASET.path(out))
    write_parquet_atomic(dropped, root / DROPPED_FILE)
    return DatasetBuild(root, table, dropped, missing, linked)


def _split_pairs(out: Path, df: pl.DataFrame) -> list[tuple[ImageRef, str]]:
    """Each image of ``df`` once with its split."""
    refs = {(r.source, r.record_id): r for r in _image_refs(out, df)}
    rows = df.unique(["source", "record_id"], keep="first", maintain_order=True)
    return [(refs[(s, r)], sp) for s, r, sp in zip(rows["source"], rows["record_id"], rows["split"], strict=True)]
