"""Metadata integration (stage 3): one coarse caption per image, from metadata only.

A coarse caption is a short sentence made only of what the source states: the registry's
modality and organ, how the image was acquired (plane, MR sequence, CT window, colour), the
record's labels (mask label names, class label, box labels), its non-identifying description
(e.g. a DICOM study description naming the diagnosis), report and, from a training split only,
its question and answer.

Metadata words reach the caption only when they name something: a label, description or body
part is kept when it matches the project's vocabulary or an installed ontology (MeSH, ICD-10;
:mod:`medtrinity_assets.core.ontology`), after markup is removed, so header noise ("Lv2",
"<MPR Collection>") never reaches a description. The concepts they name are kept with their
codes (``concepts``). ``terms`` become the knowledge-retrieval query
(:mod:`medtrinity_assets.knowledge.queries`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import polars as pl

from medtrinity_assets.core import ontology
from medtrinity_assets.core.icd_codes import icd10_for
from medtrinity_assets.core.tables import COARSE_CAPTIONS
from medtrinity_assets.core.vocabulary import (
    canonical_modality,
    modality_phrase,
    modality_term,
    mr_sequence,
    organ_terms,
    plane_of,
    window_name,
)
from medtrinity_assets.ingest.labels import label_names_of
from medtrinity_assets.ingest.registry import SourceSpec

NON_FINDING_LABELS = {"", "background", "whole_image", "whole image", "none", "unknown", "region"}
YES_NO = {"yes", "no", "true", "false"}
MAX_TERM_WORDS = 12
MAX_REPORT_CHARS = 400
UNSPECIFIED = {"", "unspecified", "unknown", "none"}
#: a technique that names its organ ("Echocardiogram" images the heart)
TECHNIQUE_ORGANS = (
    (re.compile(r"echocardiogra", re.I), "heart"),
    (re.compile(r"mammogra", re.I), "breast"),
    (re.compile(r"fundus|fundoscop|retinograph", re.I), "retina"),
    (re.compile(r"colonoscop", re.I), "colon"),
)
CROSS_SECTIONAL = {"ct", "mri", "pet"}
TRAINING_SPLITS = {"train", "training"}


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


def known_terms(items: Iterable[str]) -> list[str]:
    """The items that name a concept, cleaned of markup (see :func:`ontology.clean_terms`);
    all-capital header words are lower-cased ("THORAX" -> "thorax")."""
    cleaned = [t.lower() if t.isupper() and len(t) > 3 else t for t in map(ontology.clean_term, items)]
    return ontology.clean_terms([t for t in cleaned if t])


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


def concepts_of(texts: Iterable[str]) -> list[str]:
    """The ontology concepts (MeSH, ICD-10) the texts name, as ``"Label (Scheme code)"``; for a
    finding its ICD-10 codes too. The project vocabulary's own entries are not listed."""
    out: list[str] = []
    for text in texts:
        found = ontology.find_concepts(text)
        # ICD-10 codes for a named finding only (the vocabulary's generic "lesion" has none)
        found += [c for f in found if f.kind == "finding" and f.scheme != "vocabulary" for c in icd10_for(f, 2)]
        for c in found:
            if c.scheme in ("MeSH", "ICD-10", "ICD-10-CM"):
                out.append(f"{c.display} ({c.scheme} {c.code})")
    return list(dict.fromkeys(out))


def organ_of(row: dict, spec: SourceSpec, texts: list[str]) -> str:
    """The record's organ, else the registry's; an unspecified one from a technique its metadata
    name (an echocardiogram images the heart)."""
    organ = clean_text(row.get("organ")) or spec.organ
    if organ.lower() not in UNSPECIFIED:
        return organ
    for text in texts:
        for rx, named in TECHNIQUE_ORGANS:
            if rx.search(text):
                return named
    return organ


def acquisition(row: dict, image_row: dict | None, modality: str) -> dict[str, Any]:
    """How the image was acquired, where known: plane (cross-sectional modalities), MR sequence,
    CT window, channels."""
    image_row = image_row or {}
    plane = None
    if modality in CROSS_SECTIONAL:  # the header's geometry (oblique when no axis dominates)
        plane = image_row.get("plane") or plane_of(
            row.get("slice_axis"), image_row.get("display_right"), image_row.get("display_down")
        )
    sequence = None
    if modality == "mri":
        sequence = clean_text(row.get("sequence")) or mr_sequence(clean_text(row.get("description")))
    window = window_name(image_row.get("window")) if modality == "ct" else None
    channels = image_row.get("channels")
    return {"plane": plane, "sequence": sequence or None, "window": window, "channels": channels}


def _lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased unless it opens an abbreviation ("MRI")."""
    return text[0].lower() + text[1:] if len(text) > 1 and text[1].islower() else text


def _opening(modality_raw: str, organ: str, acq: dict[str, Any], synthetic: bool) -> str:
    """``Axial T1-weighted MRI image of the brain.``; ``Synthetic MRI image of the phantom.``"""
    phrase = modality_phrase(modality_raw)
    words = [w for w in (acq["plane"], acq["sequence"]) if w]
    if words:
        phrase = " ".join(words) + " " + _lower_first(phrase)
    if synthetic:
        phrase = "synthetic " + _lower_first(phrase)
    where = f"of the {organ}" if organ.lower() not in UNSPECIFIED else "(body part not recorded)"
    window = f", {acq['window']}" if acq["window"] else ""
    return f"{phrase[0].upper()}{phrase[1:]} {where}{window}."


def _qa(row: dict, split: str) -> tuple[str, str]:
    """A source's question and answer, from a training split only (never from a test split)."""
    if split.lower() not in TRAINING_SPLITS:
        return "", ""
    return clean_text(row.get("question")), clean_text(row.get("answer"))


def caption_for(row: dict, spec: SourceSpec, image_row: dict | None = None) -> dict:
    """Coarse caption, terms and concepts of one manifest row (a dict of its columns)."""
    modality_raw = clean_text(row.get("modality")) or spec.modality
    modality = canonical_modality(modality_raw)
    labels = known_terms(_label_names(row, image_row, spec))
    description = " / ".join(known_terms(clean_text(row.get("description")).split(" / ")))
    body_part = " ".join(known_terms([clean_text(row.get("body_part"))])).lower()
    organ = organ_of(row, spec, [description, body_part])
    report = clean_text(row.get("report"))
    split = clean_text(row.get("split")) or spec.split or ""
    question, answer = _qa(row, split)
    acq = acquisition(row, image_row, modality)
    synthetic = bool(row.get("synthetic")) or spec.synthetic

    parts = [_opening(modality_raw, organ, acq, synthetic)]
    if body_part and body_part not in organ.lower() and organ.lower() not in body_part:
        parts.append(f"Body part: {body_part}.")
    if labels:
        parts.append(f"Labels: {', '.join(labels)}.")
    if description and description.lower() not in {t.lower() for t in organ_terms(organ)} | {body_part}:
        parts.append(f"Description: {description.rstrip('.')}.")
    if report:
        short = report if len(report) <= MAX_REPORT_CHARS else report[:MAX_REPORT_CHARS].rsplit(" ", 1)[0] + " …"
        parts.append(f"Report: {short}")
    if question:
        parts.append(f"Q: {question}" + (f" A: {answer}" if answer else ""))

    terms = [modality_term(modality), organ if organ.lower() not in UNSPECIFIED else "", body_part, *labels]
    if description and len(description.split()) <= MAX_TERM_WORDS:
        terms.append(description)
    if answer and answer.lower() not in YES_NO and len(answer.split()) <= MAX_TERM_WORDS:
        terms += known_terms([answer])
    return {
        "record_id": row["record_id"],
        "source": row.get("source") or spec.name,
        "caption": " ".join(parts),
        "modality": modality,
        "organ": organ,
        "terms": unique_texts(terms),
        "concepts": concepts_of([organ, body_part, *labels, description, *known_terms([answer])]),
        "synthetic": synthetic,
        "split": split or None,
        **acq,
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
