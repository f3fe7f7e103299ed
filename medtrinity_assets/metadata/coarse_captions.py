"""Metadata integration (stage 3): one coarse caption per image, from metadata only.

A coarse caption is a short sentence made only of what the source states: the registry's
modality and organ, the record's labels (mask label names, class label, box labels), its
non-identifying description (e.g. a DICOM study description naming the diagnosis), report and
question/answer. Its ``terms`` become the knowledge-retrieval query (:mod:`medtrinity_assets.knowledge.queries`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import COARSE_CAPTIONS
from medtrinity_assets.core.vocabulary import canonical_modality, modality_phrase, modality_term
from medtrinity_assets.ingest.labels import label_names_of
from medtrinity_assets.ingest.registry import SourceSpec

NON_FINDING_LABELS = {"", "background", "whole_image", "whole image", "none", "unknown"}
YES_NO = {"yes", "no", "true", "false"}
MAX_TERM_WORDS = 12
MAX_REPORT_CHARS = 400


def clean_text(value: Any) -> str:
    if value is None:
        return ""
    text = re.sub(r"\s+", " ", str(value)).strip()
    return text.strip(" ;,")


def as_str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def unique_texts(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        item = clean_text(item)
        key = item.lower()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _label_names(row: dict, image_row: dict | None, spec: SourceSpec) -> list[str]:
    names: list[str] = []
    names += as_str_list(row.get("labels"))
    if image_row is not None:
        by_value = label_names_of(image_row, spec)
        for value in as_str_list(image_row.get("mask_labels")):
            try:
                names.append(by_value.get(int(value), ""))
            except ValueError:
                continue
        names += as_str_list(image_row.get("box_labels"))
    names += [p.strip() for v in as_str_list(row.get("label")) for p in v.split(";") if p.strip()]
    names = [n.replace("_", " ") for n in names]
    return [n for n in unique_texts(names) if n.lower() not in NON_FINDING_LABELS]


def caption_for(row: dict, spec: SourceSpec, image_row: dict | None = None) -> dict:
    """Coarse caption and terms of one manifest row (a dict of its columns)."""
    modality_raw = clean_text(row.get("modality")) or spec.modality
    modality = canonical_modality(modality_raw)
    organ = clean_text(row.get("organ")) or spec.organ
    body_part = clean_text(row.get("body_part"))
    labels = _label_names(row, image_row, spec)
    description = clean_text(row.get("description"))
    report = clean_text(row.get("report"))
    question, answer = clean_text(row.get("question")), clean_text(row.get("answer"))

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

    terms = [modality_term(modality), organ]
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
        "terms": unique_texts(terms),
    }


def build_coarse_captions(manifest: pl.DataFrame, images: pl.DataFrame, spec: SourceSpec) -> pl.DataFrame:
    """One coarse caption per kept image (records present in ``images``)."""
    if images.height == 0 or manifest.height == 0:
        return COARSE_CAPTIONS.empty()
    kept = manifest.filter(pl.col("record_id").is_in(images["record_id"].implode()))
    if "status" in kept.columns:
        kept = kept.filter(pl.col("status").fill_null("ok") == "ok")
    kept = kept.unique(subset="record_id", keep="first", maintain_order=True)
    image_rows = {r["record_id"]: r for r in images.unique(subset="record_id", keep="first").to_dicts()}
    rows = [caption_for(r, spec, image_rows.get(r["record_id"])) for r in kept.to_dicts()]
    return COARSE_CAPTIONS.frame(rows)
