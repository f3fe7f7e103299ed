"""Metadata integration (stage 3): coarse captions, retrieval queries and retrieved knowledge.

A coarse caption is a short sentence made only of what the source states: the registry's
modality and organ, the record's labels (mask label names, class label, box labels), its
non-identifying description (e.g. a DICOM study description naming the diagnosis), report and
question/answer. Its ``terms`` become the knowledge-retrieval query, together with the ROI's
label and measured attribute words when ROIs are known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from medtrinity_assets.registry import SourceSpec, canonical_modality
from medtrinity_assets.rois import label_names_of

COARSE_SCHEMA = {
    "record_id": pl.String,
    "source": pl.String,
    "caption": pl.String,
    "modality": pl.String,
    "organ": pl.String,
    "terms": pl.List(pl.String),
}
QUERY_SCHEMA = {"record_id": pl.String, "roi_id": pl.String, "query": pl.String}
RETRIEVED_SCHEMA = {
    "record_id": pl.String,
    "roi_id": pl.String,
    "query": pl.String,
    "chunk_ids": pl.List(pl.String),
    "scores": pl.List(pl.Float64),
    "mode": pl.String,
}

MODALITY_PHRASES = {
    "x-ray": "X-ray radiograph",
    "ct": "CT image",
    "mri": "MRI image",
    "ultrasound": "Ultrasound image",
    "nuclear medicine": "Nuclear medicine scan",
    "pet": "PET image",
    "histopathology": "Histopathology image",
    "endoscopy": "Endoscopy image",
    "dermoscopy": "Dermoscopy image",
    "fundus": "Fundus photograph",
    "microscopy": "Microscopy image",
}
MODALITY_TERMS = {
    "x-ray": "X-ray",
    "ct": "CT",
    "mri": "MRI",
    "pet": "PET",
}
ROI_WORD_COLUMNS = ("intensity_word", "texture_homogeneity_word", "shape_word")
NON_FINDING_LABELS = {"", "background", "whole_image", "whole image", "none", "unknown"}
YES_NO = {"yes", "no", "true", "false"}
MAX_TERM_WORDS = 12
MAX_REPORT_CHARS = 400


def _clean(value: Any) -> str:
    if value is None:
        return ""
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text.strip(" ;,")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        item = _clean(item)
        key = item.lower()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def modality_phrase(modality: str) -> str:
    canon = canonical_modality(modality)
    return MODALITY_PHRASES.get(canon, f"{modality.strip() or 'Medical'} image")


def _label_names(row: dict, image_row: dict | None, spec: SourceSpec) -> list[str]:
    names: list[str] = []
    names += _as_list(row.get("labels"))
    if image_row is not None:
        by_value = label_names_of(image_row, spec)
        for value in _as_list(image_row.get("mask_labels")):
            try:
                names.append(by_value.get(int(value), ""))
            except ValueError:
                continue
        names += _as_list(image_row.get("box_labels"))
    names += [p.strip() for v in _as_list(row.get("label")) for p in v.split(";") if p.strip()]
    names = [n.replace("_", " ") for n in names]
    return [n for n in _unique(names) if n.lower() not in NON_FINDING_LABELS]


def caption_for(row: dict, spec: SourceSpec, image_row: dict | None = None) -> dict:
    """Coarse caption and terms of one manifest row (a dict of its columns)."""
    modality_raw = _clean(row.get("modality")) or spec.modality
    modality = canonical_modality(modality_raw)
    organ = _clean(row.get("organ")) or spec.organ
    body_part = _clean(row.get("body_part"))
    labels = _label_names(row, image_row, spec)
    description = _clean(row.get("description"))
    report = _clean(row.get("report"))
    question, answer = _clean(row.get("question")), _clean(row.get("answer"))

    parts = [f"{modality_phrase(modality_raw)} of the {organ}."]
    if body_part and body_part.lower() not in organ.lower() and organ.lower() not in body_part.lower():
        parts.append(f"Body part: {body_part.lower()}.")
    if labels:
        parts.append(f"Labels: {', '.join(labels)}.")
    if description:
        parts.append(f"Description: {description.rstrip('.')}.")
    if report:
        short = (
            report if len(report) <= MAX_REPORT_CHARS else report[:MAX_REPORT_CHARS].rsplit(" ", 1)[0] + " …"
        )
        parts.append(f"Report: {short}")
    if question:
        parts.append(f"Q: {question}" + (f" A: {answer}" if answer else ""))

    terms = [MODALITY_TERMS.get(modality, modality), organ]
    if body_part:
        terms.append(body_part.lower())
    terms += labels
    if description and len(description.split()) <= MAX_TERM_WORDS:
        terms.append(description)
    if answer and answer.lower() not in YES_NO and len(answer.split()) <= MAX_TERM_WORDS:
        terms.append(answer)
    return {
        "record_id": row["record_id"],
        "source": row.get("source") or spec.name,
        "caption": " ".join(parts),
        "modality": modality,
        "organ": organ,
        "terms": _unique(terms),
    }


def build_coarse_captions(manifest: pl.DataFrame, images: pl.DataFrame, spec: SourceSpec) -> pl.DataFrame:
    """One coarse caption per kept image (records present in ``images``)."""
    if images.height == 0 or manifest.height == 0:
        return pl.DataFrame(schema=COARSE_SCHEMA)
    kept = manifest.filter(pl.col("record_id").is_in(images["record_id"].implode()))
    if "status" in kept.columns:
        kept = kept.filter(pl.col("status").fill_null("ok") == "ok")
    kept = kept.unique(subset="record_id", keep="first", maintain_order=True)
    image_rows = {r["record_id"]: r for r in images.unique(subset="record_id", keep="first").to_dicts()}
    rows = [caption_for(r, spec, image_rows.get(r["record_id"])) for r in kept.to_dicts()]
    return pl.DataFrame(rows, schema=COARSE_SCHEMA)


def _query_text(words: Iterable[str]) -> str:
    return " ".join(_unique(words))


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
        terms = _as_list(row["terms"])
        roi_rows = by_record.get(row["record_id"], [])
        if not roi_rows:
            out.append({"record_id": row["record_id"], "roi_id": None, "query": _query_text(terms)})
            continue
        for roi in roi_rows:
            words = list(terms)
            label = _clean(roi.get("label"))
            if label and label.lower() not in NON_FINDING_LABELS and roi.get("origin") != "whole_image":
                words.append(label.replace("_", " "))
            words += [_clean(roi.get(c)) for c in ROI_WORD_COLUMNS if roi.get(c)]
            out.append(
                {"record_id": row["record_id"], "roi_id": roi.get("roi_id"), "query": _query_text(words)}
            )
    return pl.DataFrame(out, schema=QUERY_SCHEMA)


def retrieve_for_records(
    queries_df: pl.DataFrame, retriever: Any, k: int = 5, mode: str = "hybrid", batch_size: int = 256
) -> pl.DataFrame:
    """Top-k passages per query; identical queries are searched once, in batches."""
    if queries_df.height == 0:
        return pl.DataFrame(schema=RETRIEVED_SCHEMA)
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
        schema=RETRIEVED_SCHEMA,
    )
