"""Train / validation / test splits that keep a patient (else a study, else an image) in one
split, stable across reruns and when sources are added.

A group's split is what its source declares when that is a held-out split (a benchmark's test
images stay test), else a fixed function of the group id: the first 8 bytes of its BLAKE2b hash,
as a fraction, against the cumulative split fractions. Adding sources adds groups and moves none.
"""

from __future__ import annotations

import hashlib

import polars as pl

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
_ALIASES = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
            "validation": "validation", "dev": "validation", "test": "test", "testing": "test"}


def declared_split(value: str | None) -> str | None:
    """A source's split name in the export's words (``val`` -> ``validation``), or None."""
    return _ALIASES.get((value or "").strip().lower())


def hashed_split(group_id: str, fractions: dict[str, float] | None = None) -> str:
    """The split of a group from its id alone (see the module docstring)."""
    fr = fractions or DEFAULT_FRACTIONS
    total = sum(fr.get(s, 0.0) for s in SPLITS)
    if total <= 0:
        raise ValueError("split fractions must add up to more than 0")
    u = int.from_bytes(hashlib.blake2b(group_id.encode(), digest_size=8).digest(), "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += fr.get(name, 0.0) / total
        if u < edge:
            return name
    return SPLITS[-1]


def group_ids(df: pl.DataFrame) -> pl.Series:
    """Each row's group: its ``group_id`` (patient or study), else its image."""
    image = pl.lit("image:") + pl.col("image_sha256")
    return df.select(pl.coalesce(pl.col("group_id"), image).alias("group_id"))["group_id"]


def group_splits(groups: pl.DataFrame, fractions: dict[str, float] | None = None) -> pl.DataFrame:
    """``(group_id, split)`` from rows ``(group_id, _declared)``: a held-out split declared for any
    row of the group (test before validation) holds for the whole group, else the hashed one. The
    rows may come from many shards: only these two columns are needed at once."""
    return (
        groups.group_by("group_id")
        .agg(
            pl.col("_declared").eq("test").any().alias("_test"),
            pl.col("_declared").eq("validation").any().alias("_val"),
        )
        .with_columns(
            pl.when(pl.col("_test")).then(pl.lit("test")).when(pl.col("_val")).then(pl.lit("validation"))
            .otherwise(pl.col("group_id").map_elements(lambda g: hashed_split(g, fractions), return_dtype=pl.String))
            .alias("split")
        )
        .select("group_id", "split")
    )


def with_groups(df: pl.DataFrame, declared: pl.Series) -> pl.DataFrame:
    """``df`` with ``group_id`` filled and each row's declared split (export words) in ``_declared``."""
    return df.with_columns(group_id=group_ids(df),
                           _declared=pl.Series([declared_split(v) for v in declared], dtype=pl.String))


def settle(rows: pl.DataFrame, splits: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``rows`` (from :func:`with_groups`) with their group's split, as ``columns``."""
    return rows.drop("split", "_declared").join(splits, on="group_id", how="left").select(columns)


def assign_splits(df: pl.DataFrame, declared: pl.Series, fractions: dict[str, float] | None = None) -> pl.DataFrame:
    """``df`` with ``group_id`` filled and ``split`` set per group (see :func:`group_splits`)."""
    if df.height == 0:
        return df
    work = with_groups(df, declared)
    return settle(work, group_splits(work.select("group_id", "_declared"), fractions), df.columns)
