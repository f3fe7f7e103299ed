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


def export_image_file(sha256: str) -> str:
    """Where a triplet's original image lives in the export folder."""
    return f"images/{sha256[:2]}/{sha256}.png"


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
    frame = TRIPLETS.frame([_row(r, license, synthetic) for r in joined.iter_rows(named=True)])
    return with_groups(frame, joined["declared_split"])


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


def _row(r: dict[str, Any], license: str, synthetic: bool) -> dict[str, Any]:
    whole = r["origin"] == "whole_image"
    return {
        "triplet_id": triplet_id(r["record_id"], str(r["roi_id"]), r["inputs_hash"]),
        "source": r["source"],
        "record_id": r["record_id"],
        "roi_id": str(r["roi_id"]),
        "inputs_hash": r["inputs_hash"],
        "image_file": export_image_file(r["sha256"]),
        "image_sha256": r["sha256"],
        "image_width": r["width"],
        "image_height": r["height"],
        "bbox_xyxy": r["bbox_xyxy"],
        "bbox_norm": r["bbox_norm"],
        "mask_rle": None if whole or r["origin"] == "box" else r["mask_rle"],
        "label": None if whole else r["label"],
        "origin": r["origin"],
        "description": r["text"],
        **{f"facet_{k}": r.get(f"facet_{k}") for k in FACETS},
        "modality": r["modality"],
        "organ": r["organ"],
        "split": None,
        "group_id": r["group_id"],
        "license": license,
        "synthetic": synthetic,
        "backend": r["backend"],
        "model": r["model"],
        "prompt_version": r["prompt_version"],
    }
