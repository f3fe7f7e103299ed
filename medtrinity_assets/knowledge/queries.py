"""Retrieval queries per ROI (coarse-caption terms, ROI label and measured words) and their hits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import RETRIEVED_KNOWLEDGE
from medtrinity_assets.metadata.coarse_captions import (
    NON_FINDING_LABELS,
    as_str_list,
    clean_text,
    unique_texts,
)

QUERY_SCHEMA = {"record_id": pl.String, "roi_id": pl.String, "query": pl.String}
ROI_WORD_COLUMNS = ("intensity_word", "texture_homogeneity_word", "shape_word")


def _query_text(words: Iterable[str]) -> str:
    return " ".join(unique_texts(words))


def build_queries(coarse: pl.DataFrame, rois: pl.DataFrame | None = None) -> pl.DataFrame:
    """A retrieval query per ROI (caption terms + ROI label and attribute words), or per image."""
    if coarse.height == 0:
        return pl.DataFrame(schema=QUERY_SCHEMA)
    by_record: dict[str, list[dict]] = {}
    if rois is not None and rois.height:
        cols = [c for c in ("record_id", "roi_id", "label", "origin", *ROI_WORD_COLUMNS) if c in rois.columns]
        for r in rois.select(cols).to_dicts():
            by_record.setdefault(r["record_id"], []).append(r)
    out: list[dict] = []
    for row in coarse.select("record_id", "terms").to_dicts():
        terms = as_str_list(row["terms"])
        roi_rows = by_record.get(row["record_id"], [])
        if not roi_rows:
            out.append({"record_id": row["record_id"], "roi_id": None, "query": _query_text(terms)})
            continue
        for roi in roi_rows:
            words = list(terms)
            label = clean_text(roi.get("label"))
            if label and label.lower() not in NON_FINDING_LABELS and roi.get("origin") != "whole_image":
                words.append(label.replace("_", " "))
            words += [clean_text(roi.get(c)) for c in ROI_WORD_COLUMNS if roi.get(c)]
            out.append(
                {"record_id": row["record_id"], "roi_id": roi.get("roi_id"), "query": _query_text(words)}
            )
    return pl.DataFrame(out, schema=QUERY_SCHEMA)


def retrieve_for_records(
    queries_df: pl.DataFrame, retriever: Any, k: int = 5, mode: str = "hybrid", batch_size: int = 256
) -> pl.DataFrame:
    """Top-k passages per query; identical queries are searched once, in batches."""
    if queries_df.height == 0:
        return RETRIEVED_KNOWLEDGE.empty()
    queries = queries_df["query"].to_list()
    unique = list(dict.fromkeys(queries))
    results: dict[str, list] = {}
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        for q, hits in zip(batch, retriever.search(batch, k=k, mode=mode), strict=True):
            results[q] = hits
    return pl.DataFrame(
        {
            "record_id": queries_df["record_id"].to_list(),
            "roi_id": queries_df["roi_id"].to_list(),
            "query": queries,
            "chunk_ids": [[h.chunk_id for h in results[q]] for q in queries],
            "scores": [[float(h.score) for h in results[q]] for q in queries],
            "mode": [mode] * len(queries),
        },
        schema=dict(RETRIEVED_KNOWLEDGE.schema),
    )
