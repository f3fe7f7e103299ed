"""A source's triplets: each ROI whose description passed every blocking check, joined with its
original image, geometry, metadata, licence and provenance (contract ``TRIPLETS``)."""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.core.tables import TRIPLETS
from medtrinity_assets.export.splits import group_splits, settle, with_groups


def triplet_id(record_id: str, roi_id: str, inputs_hash: str) -> str:
    """Stable id of a triplet: it changes when any input behind the description changes."""
    return hashlib.blake2b(f"{record_id}\x1f{roi_id}\x1f{inputs_hash}".encode(), digest_size=10).hexdigest()


def export_image_file(sha256: pl.Expr) -> pl.Expr:
    """Where a triplet's original image lives in the export folder (from its hash's column)."""
    return pl.format("images/{}/{}.png", sha256.str.slice(0, 2), sha256)


def passed_descriptions(captions: pl.DataFrame, quality: pl.DataFrame) -> pl.DataFrame:
    """Caption rows whose own quality row (same inputs) passed every blocking check."""
    ok = quality.filter(pl.col("passed")).select("record_id", "roi_id", "inputs_hash")
    return captions.filter(pl.col("status") == "ok").join(ok, on=["record_id", "roi_id", "inputs_hash"], how="inner")


def build_triplets(*, fractions: dict[str, float] | None = None, **tables: Any) -> pl.DataFrame:
    """The triplets of one source held in memory (see the module docstring): ``tables`` are the
    keyword arguments of :func:`triplet_rows`; splits by group (patient, study, else image), a
    held-out split the source declares kept. A source in shards: ``export.source_triplets``."""
    rows = triplet_rows(**tables)
    if rows.height == 0:
        return TRIPLETS.empty()
    return settle(rows, group_splits(rows.select("group_id", "_declared"), fractions), TRIPLETS.columns)


def triplet_rows(
    *,
    captions: pl.DataFrame,
    quality: pl.DataFrame,
    rois: pl.DataFrame,
    images: pl.DataFrame,
    manifest: pl.DataFrame,
    coarse: pl.DataFrame,
    license: str,
    synthetic: bool,
) -> pl.DataFrame:
    """The triplets of some of a source's images, before splits: ``TRIPLETS`` columns with
    ``group_id`` filled, plus ``_declared`` (the split the source declares for the row). Splits
    are a question about whole groups, which may span shards: see :func:`group_splits`."""
    described = passed_descriptions(captions, quality)
    if described.height == 0:
        return with_groups(TRIPLETS.empty(), pl.Series([], dtype=pl.String))
    roi_cols = ["record_id", "roi_id", "label", "origin", "bbox_xyxy", "bbox_norm", "mask_rle"]
    joined = (
        described.join(rois.filter(pl.col("status") == "ok").select(roi_cols), on=["record_id", "roi_id"])
        .join(images.select("record_id", "sha256", "width", "height"), on="record_id")
        .join(_manifest_columns(manifest), on="record_id", how="left")
        .join(coarse.select("record_id", "modality", "organ"), on="record_id", how="left")
    )
    return with_groups(TRIPLETS.validate(_columns(joined, license, synthetic)), joined["declared_split"])


def file_group(source: str, relpath: str) -> str:
    """The group of the images of one file (a volume's slices, a video's frames, a 4D file's
    channels): they are one acquisition and never straddle splits."""
    return "file:" + hashlib.blake2b(f"{source}\x1f{relpath}".encode(), digest_size=10).hexdigest()


def _manifest_columns(manifest: pl.DataFrame) -> pl.DataFrame:
    """record_id, the split the source declares and the group: patient, else study (keyed hashes
    from ingestion), else the file."""
    ok = manifest.filter(pl.col("status") == "ok")
    by_file = [file_group(s, r) for s, r in zip(ok["source"], ok["relpath"], strict=True)]
    known = ok["group_id"] if "group_id" in ok.columns else pl.Series([None] * ok.height, dtype=pl.String)
    return pl.DataFrame(
        {
            "record_id": ok["record_id"],
            "declared_split": ok["split"],
            "group_id": [k if k is not None else f for k, f in zip(known.to_list(), by_file, strict=True)],
        },
        schema={"record_id": pl.String, "declared_split": pl.String, "group_id": pl.String},
    ).unique("record_id", keep="first")


def _columns(joined: pl.DataFrame, license: str, synthetic: bool) -> pl.DataFrame:
    """The ``TRIPLETS`` columns of the joined rows (column by column: a source has millions). A
    whole-image region has no label and no mask; a box has no mask."""
    whole = pl.col("origin") == "whole_image"
    ids = [triplet_id(r, str(i), h) for r, i, h in
           zip(joined["record_id"], joined["roi_id"].cast(pl.String), joined["inputs_hash"], strict=True)]
    return joined.with_columns(
        triplet_id=pl.Series(ids, dtype=pl.String),
        roi_id=pl.col("roi_id").cast(pl.String),
        image_file=export_image_file(pl.col("sha256")),
        image_sha256=pl.col("sha256"),
        image_width=pl.col("width"),
        image_height=pl.col("height"),
        mask_rle=pl.when(whole | (pl.col("origin") == "box")).then(None).otherwise(pl.col("mask_rle")),
        label=pl.when(whole).then(None).otherwise(pl.col("label")),
        description=pl.col("text"),
        split=pl.lit(None, dtype=pl.String),
        license=pl.lit(license, dtype=pl.String),
        synthetic=pl.lit(synthetic, dtype=pl.Boolean),
        **{f"facet_{k}": pl.col(f"facet_{k}") if f"facet_{k}" in joined.columns else pl.lit(None, dtype=pl.String)
           for k in FACETS},
    ).select(TRIPLETS.columns)
