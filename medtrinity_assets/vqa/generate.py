"""A VQA set generated from the export's triplets, from measured and ontology facts only.

The questions never read the free-text description (it is what a model is pretrained on, and a
question answered from it would test recall of the description, not of the image). They come
from the image's modality and organ (its source's declaration, checked against the vocabulary),
the labels of its localised ROIs (masks, boxes, expert and classical segmentations) and their
boxes. Per image:

- closed (yes/no): the modality, another modality of the set (``no``); the organ, an organ of
  another body region (``no``); per labelled ROI its half of the image (left/right, upper/lower,
  skipped near the middle), its presence, and a label of the same modality absent here (``no``);
- open: the modality, the organ, where the ROI is (thirds of the image).

Which questions an image keeps (at most ``per_image``) is chosen by a hash of the seed, the
image and the question, taking yes, no and open questions in turn so yes and no stay balanced.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import VQA_DATASET
from medtrinity_assets.core.vocabulary import (
    allowed_modalities,
    canonical_modality,
    is_unspecified_organ,
    modality_term,
    organ_region,
    organ_terms,
)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "triplet_id", "image_file", "image_sha256", "bbox_norm", "label", "origin", "modality", "organ", "split",
)
HALF_MARGIN: tuple[float, float] = (0.45, 0.55)  # a box centre in here is in neither half
_VOWEL_LETTERS = set("AEFHILMNORSX")  # letters whose name starts with a vowel sound (an MRI, an X-ray)


def article(term: str) -> str:
    """``a`` or ``an`` before ``term``: by the letter's name for an initialism (a CT, an MRI,
    an X-ray), else by its first letter (an ultrasound, a fundus)."""
    t = term.strip()
    if not t:
        return "a"
    initialism = t[0].isupper() and (len(t) == 1 or not t[1].islower())
    if initialism:
        return "an" if t[0] in _VOWEL_LETTERS else "a"
    return "an" if t[0].lower() in "aeiou" else "a"


def _with_article(term: str) -> str:
    return f"{article(term)} {term}"


def _centre(bbox: Sequence[float] | None) -> tuple[float, float] | None:
    if bbox is None or len(bbox) != 4:
        return None
    x0, y0, x1, y1 = (float(v) for v in bbox)
    return (x0 + x1) / 2, (y0 + y1) / 2


def location_words(cx: float, cy: float) -> str:
    """Where a box centre lies in thirds of the image: ``upper left``, ``left``, ``centre``,
    ``lower right``... (the middle third is named only when both axes are in it)."""
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return " ".join(w for w in (row, col) if w) or "centre"


def _q(question: str, answer: str, qtype: str, origin: str) -> dict[str, Any]:
    closed = answer in ("yes", "no")
    return {
        "question": question,
        "answer": answer,
        "answer_type": "closed" if closed else "open",
        "question_type": qtype,
        "origin_id": origin,
    }


def _image_facts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What an image's triplets state: modality, organ, labels, the ROIs with a box, provenance."""
    whole = [r for r in rows if r["origin"] == "whole_image"]
    anchor = min(whole or rows, key=lambda r: r["triplet_id"])
    modality = next((canonical_modality(r["modality"]) for r in [anchor, *rows] if r["modality"]), None)
    organ = next((r["organ"].strip().lower() for r in [anchor, *rows] if r["organ"]), None)
    rois = [r for r in rows if r["origin"] != "whole_image" and r["label"]]
    return {
        "anchor": anchor["triplet_id"],
        "modality": modality,
        "organ": None if is_unspecified_organ(organ) else organ,
        "labels": {r["label"].strip() for r in rows if r["label"]},
        "rois": sorted(rois, key=lambda r: r["triplet_id"]),
    }


def _modality_questions(facts: dict[str, Any], modalities: list[str]) -> list[dict[str, Any]]:
    mod, anchor = facts["modality"], facts["anchor"]
    if not mod:
        return []
    term = modality_term(mod)
    out = [
        _q(f"Is this {_with_article(term)} image?", "yes", "modality", anchor),
        _q("What imaging modality is this?", term, "modality", anchor),
    ]
    # a modality a text may also name for this one (a histology slide is a micrograph) is no "no"
    for other in (m for m in modalities if m not in allowed_modalities(mod)):
        out.append(_q(f"Is this {_with_article(modality_term(other))} image?", "no", "modality", anchor))
    return out


def _organ_questions(facts: dict[str, Any], organs: list[str]) -> list[dict[str, Any]]:
    organ, anchor = facts["organ"], facts["anchor"]
    if not organ:
        return []
    out = [
        _q(f"Does this image show the {organ}?", "yes", "organ", anchor),
        _q("Which organ is shown?", organ, "organ", anchor),
    ]
    # another organ is a safe "no" only when both lie in known, different body regions (a head
    # MRI does show the brain; an abdominal CT of the liver may show a kidney)
    mine = organ_region(organ)
    for other in organs:
        theirs = organ_region(other)
        if other != organ and mine and theirs and not (mine & theirs):
            out.append(_q(f"Does this image show the {other}?", "no", "organ", anchor))
    return out


def _roi_questions(facts: dict[str, Any], absent: list[str]) -> list[dict[str, Any]]:
    """Position and presence of the labelled ROIs, and labels of the modality absent here."""
    out: list[dict[str, Any]] = []
    counts = Counter(r["label"].strip() for r in facts["rois"])
    lo, hi = HALF_MARGIN
    for label in sorted(counts):
        roi = next(r for r in facts["rois"] if r["label"].strip() == label)
        out.append(_q(f"Is any {label} visible in this image?", "yes", "presence", roi["triplet_id"]))
    for roi in facts["rois"]:
        label, centre = roi["label"].strip(), _centre(roi["bbox_norm"])
        if counts[label] > 1 or centre is None:  # "the <label>" must name one region
            continue
        origin = roi["triplet_id"]
        for value, sides in ((centre[0], ("left", "right")), (centre[1], ("upper", "lower"))):
            if lo <= value <= hi:
                continue
            near, far = sides if value < lo else sides[::-1]
            out.append(_q(f"Is the {label} in the {near} half of the image?", "yes", "position", origin))
            out.append(_q(f"Is the {label} in the {far} half of the image?", "no", "position", origin))
        out.append(_q(f"Where is the {label} in the image?", location_words(*centre), "location", origin))
    for label in absent:
        out.append(_q(f"Is any {label} visible in this image?", "no", "presence", facts["anchor"]))
    return out


def _absent_labels(facts: dict[str, Any], labels_by_modality: dict[str, set[str]]) -> list[str]:
    """Labels of localised ROIs elsewhere in the same modality, absent from this image (and not
    a name of its organ, which the image shows whether or not a region carries it)."""
    if not facts["modality"]:
        return []
    mine = {label.lower() for label in facts["labels"]}
    organ_words = {w.lower() for w in organ_terms(facts["organ"])} if facts["organ"] else set()
    return sorted(
        label
        for label in labels_by_modality.get(facts["modality"], set())
        if label.lower() not in mine and label.lower() not in organ_words
    )


def _key(seed: int, image_sha: str, question: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{image_sha}\x1f{question}".encode()).hexdigest()


def _choose(candidates: list[dict[str, Any]], image_sha: str, seed: int, per_image: int) -> list[dict[str, Any]]:
    """Up to ``per_image`` questions, distinct, in hash order within yes / no / open, taken in turn."""
    unique = {c["question"]: c for c in candidates}
    pools = [
        sorted((c for c in unique.values() if c["answer_type"] == kind and (kind == "open" or c["answer"] == ans)),
               key=lambda c: _key(seed, image_sha, c["question"]))
        for kind, ans in (("closed", "yes"), ("closed", "no"), ("open", None))
    ]
    # which pool goes first also follows the seed, so a small per_image is not always "yes" first
    start = int(_key(seed, image_sha, "")[:8], 16) % 3
    pools = pools[start:] + pools[:start]
    chosen: list[dict[str, Any]] = []
    while len(chosen) < per_image and any(pools):
        for pool in pools:
            if pool and len(chosen) < per_image:
                chosen.append(pool.pop(0))
    return chosen


def _grouped(triplets: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    missing = [c for c in REQUIRED_COLUMNS if c not in triplets.columns]
    if missing:
        raise ValueError(f"generate_vqa: the triplets table has no column(s) {', '.join(missing)}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in triplets.select(REQUIRED_COLUMNS).iter_rows(named=True):
        groups.setdefault(row["image_sha256"], []).append(row)
    for sha, rows in groups.items():
        splits = sorted({str(r["split"]) for r in rows})
        if len(splits) != 1:
            raise ValueError(f"generate_vqa: image {sha} has triplets in several splits ({', '.join(splits)})")
    return groups


def generate_vqa(
    triplets: pl.DataFrame,
    export_root: str | Path,
    *,
    vqa_set: str = "demo",
    seed: int = 0,
    per_image: int = 8,
) -> pl.DataFrame:
    """A ``vqa_dataset`` frame of questions about each image of ``triplets`` (the export's table;
    ``image_file`` relative to ``export_root``). Raises ValueError when an image's triplets are in
    more than one split."""
    groups = _grouped(triplets)
    facts = {sha: _image_facts(rows) for sha, rows in groups.items()}
    modalities = sorted({f["modality"] for f in facts.values() if f["modality"]})
    organs = sorted({f["organ"] for f in facts.values() if f["organ"]})
    labels_by_modality: dict[str, set[str]] = {}
    for f in facts.values():
        if f["modality"]:
            labels_by_modality.setdefault(f["modality"], set()).update(r["label"].strip() for r in f["rois"])
    root = Path(export_root).resolve()
    rows: list[dict[str, Any]] = []
    for sha in sorted(facts):
        f, first = facts[sha], groups[sha][0]
        candidates = [
            *_modality_questions(f, modalities if len(modalities) >= 2 else []),
            *_organ_questions(f, organs),
            *_roi_questions(f, _absent_labels(f, labels_by_modality)),
        ]
        for q in _choose(candidates, sha, seed, per_image):
            qid = hashlib.sha256(f"{sha}{q['question']}".encode()).hexdigest()[:16]
            rows.append({
                **q,
                "vqa_set": vqa_set,
                "question_id": f"{vqa_set}:{qid}",
                "split": first["split"],
                "image_file": str(root / first["image_file"]),
                "image_sha256": sha,
            })
    return VQA_DATASET.frame(rows)
