"""Retrieval queries per ROI, made of what the image is about, and the passages they retrieve.

Query recipe (:func:`roi_concepts`, joined by spaces): the modality as the vocabulary names it
in full (``computed tomography (CT) image``, ``magnetic resonance (MR) image``: MiniLM embeds
"CT" alone poorly), the organ (unless unspecified), the ROI's label when it names a structure
or finding (not a placeholder such as ``region``, ``whole_image``, ``unknown_3`` or ``box``),
then the coarse caption's other terms (body part, labels, description, answer), cleaned of
measurement words (hyper-/hypo-/iso-intense/-dense/-echoic, brighter, darker, homogeneous,
heterogeneous, smooth, coarse, round, oval, irregular, lobulated, ...), of header codes
(``Lv2``) and of bracketed tags (``<MPR Collection>``). A labelled ROI's query leaves out the
*other* ROIs' labels of the same image (a grey-matter ROI is not queried with "white matter").
The ROI's measured words never enter a query: they describe this image, not the knowledge to
look up, and they pulled every query toward the passages that define them. An image of a
non-anatomical object (organ ``phantom``) gets an empty query, hence no passage.

``retrieved_knowledge.scores`` holds, per chunk, its **dense cosine similarity** to the query
(the embedder's L2-normalised vectors; in [-1, 1]), and ``chunk_ids`` are listed by decreasing
similarity (``order="similarity"``; the mode -- hybrid: dense top 50 and BM25 top 50, fused --
decides the candidates). A retriever that reports no similarity (``Hit.similarity`` None) has
its own score recorded and its order kept. Chunks whose similarity is not above
``min_similarity`` are not returned: a query may retrieve fewer than ``k`` chunks, or none.

Measured on 32 demo situations judged by hand (``medtrinity_assets_tests/test_knowledge_fit.py``,
default corpus, all-MiniLM-L6-v2): precision@1 0.79 -> 0.90 and recall@5 0.83 -> 1.00 against
the previous recipe (terms + label + measured words, fused order). The similarity order is part
of it: concept queries in fused order give precision@1 0.79, because BM25 rewards passages that
repeat the modality word ("ultrasound", "MRI"); on the 74 natural-language queries of
``retrieval_eval.jsonl`` the fused order is better (precision@1 0.74 vs 0.69), so
``HybridRetriever.search`` keeps ``order="rank"`` as its default.

The floor :data:`~medtrinity_assets.knowledge.retrieval.DEFAULT_MIN_SIMILARITY` = 0.42 is the
largest that keeps the best relevant passage of every situation with a margin of 0.02 (the
lowest is 0.445, IHC/DAB; median 0.67). It drops 95 % of clearly unrelated pairs (a situation
against the relevant passages of the others: median 0.20, 95th percentile 0.417) and every
query about a subject absent from a medical corpus (plant leaf, car engine, city, dog, food,
painting: best 0.19-0.36). It does not separate a relevant passage from a near miss on the same
organ (those lie at 0.41-0.70 as well): ranking does that, and the quote rules
(:mod:`medtrinity_assets.knowledge.quotes`) the rest. With natural-language paraphrases the
floor costs recall (7 of the 74 eval queries have their best relevant passage at or below 0.42).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import polars as pl

from medtrinity_assets.core.tables import RETRIEVED_KNOWLEDGE
from medtrinity_assets.core.vocabulary import modality_by_key, vocabulary
from medtrinity_assets.knowledge.retrieval import DEFAULT_MIN_SIMILARITY
from medtrinity_assets.metadata.coarse_captions import (
    NON_FINDING_LABELS,
    as_str_list,
    clean_text,
    unique_texts,
)

__all__ = [
    "DEFAULT_MIN_SIMILARITY",
    "NON_ANATOMICAL_ORGANS",
    "QUERY_SCHEMA",
    "build_queries",
    "concept_query",
    "is_placeholder_label",
    "modality_concept",
    "retrieve_for_records",
    "roi_concepts",
    "strip_measurement_words",
]

QUERY_SCHEMA = {"record_id": pl.String, "roi_id": pl.String, "query": pl.String}

# Organs that are no anatomy: an image of one gets no query (and so no passage, no quote).
NON_ANATOMICAL_ORGANS = frozenset({"phantom", "test object", "calibration phantom"})

PLACEHOLDER_LABELS = frozenset(
    {
        *NON_FINDING_LABELS,
        "region",
        "regions",
        "roi",
        "box",
        "bbox",
        "mask",
        "object",
        "foreground",
        "candidate",
        "component",
        "area",
        "image",
        "unlabelled",
        "unlabeled",
        "unnamed",
        "unspecified",
        "other",
        "na",
        "n/a",
    }
)
_PLACEHOLDER = re.compile(
    r"(?:unknown|label|class|region|roi|object|box|mask|component|segment|cluster|value|item|"
    r"instance|lesion_?id)?[\s_\-#]*\d+",
    re.IGNORECASE,
)

# Words that describe a measurement of this image, never a concept to look up.
_MEASURE_PATTERNS = (
    r"(?:hyper|hypo|iso)[- ]?(?:dense|intense|echoic|attenuating|reflective|attenuation|density|"
    r"intensity|densities|intensities|echogenic|echogenicity)|an-?echoic",
    r"brighter|darker|bright|dark|similar|lighter|"
    r"homogeneous(?:ly)?|heterogeneous(?:ly)?|inhomogeneous|non-?homogeneous|uniform(?:ly)?|mottled|"
    r"smooth(?! muscle)|coarse|"
    r"round(?:ed)?(?! (?:ligament|window))|oval(?! window)|ovoid|circular|irregular(?:ly)?|lobulated|elongated|spiculated|"
    r"well[- ](?:defined|circumscribed)|ill[- ]defined|"
    r"radio-?opaque|radio-?lucent|lucent|opaque|"
    r"marked|annotated|outlined|segmented|detected",
)
_MEASURE = re.compile(r"\b(?:" + "|".join(_MEASURE_PATTERNS) + r")\b", re.IGNORECASE)
_BRACKETED = re.compile(r"<[^>]*>|\[[^\]]*\]|\{[^}]*\}")
_CODE = re.compile(r"[A-Za-z]{0,3}\d+[A-Za-z0-9]{0,2}|[A-Za-z]")  # a whole term that is only a code


@lru_cache(maxsize=1)
def _intensity_words() -> frozenset[str]:
    voc = vocabulary()
    words = set(voc.default_intensity)
    for m in voc.modalities:
        words.update(m.intensity or ())
    return frozenset(w.lower() for w in words)


def is_placeholder_label(label: Any) -> bool:
    """Whether a ROI label names nothing (``region``, ``whole_image``, ``unknown_3``, ``box``, ``7``)."""
    text = clean_text(label).replace("_", " ").strip().lower()
    return not text or text in PLACEHOLDER_LABELS or bool(_PLACEHOLDER.fullmatch(text))


def strip_measurement_words(text: Any) -> str:
    """A term without measurement words or bracketed tags; '' if nothing (or only a header code
    such as ``Lv2``) is left.

    ``"hyperintense round lesion"`` -> ``"lesion"``; ``"marked lesion<MPR Collection>"`` ->
    ``"lesion"``; ``"Lv2"`` -> ``""``; an all-capitals term is lower-cased (``THORAX``)."""
    t = _BRACKETED.sub(" ", clean_text(text))
    t = _MEASURE.sub(" ", t)
    words = [w for w in re.split(r"\s+", t) if w]
    words = [w for w in words if w.lower().strip(".,;:()") not in _intensity_words()]
    out = clean_text(" ".join(words)).strip(" -/,;:")
    if _CODE.fullmatch(out):
        return ""
    if out.isupper() and len(out) > 4:
        out = out.lower()
    return "" if is_placeholder_label(out) else out


def modality_concept(modality: Any) -> str:
    """The modality as a query names it: the vocabulary's caption without its article
    (``computed tomography (CT) image``), or the raw value for a modality it does not know."""
    m = clean_text(modality)
    entry = modality_by_key(m) if m else None
    if entry is None:
        return m
    return re.sub(r"^(?:a|an|the)\s+", "", entry.caption, flags=re.IGNORECASE)


def _names_modality(term: str, modality: Any) -> bool:
    entry = modality_by_key(term)
    return entry is not None and entry is modality_by_key(clean_text(modality))


def _organ_concept(organ: Any) -> str:
    o = clean_text(organ)
    return "" if not o or o.lower() in vocabulary().unspecified_organs else o


def roi_concepts(
    modality: str | None,
    organ: str | None,
    terms: Iterable[str] = (),
    label: str | None = None,
    origin: str | None = None,
    other_labels: Iterable[str] = (),
) -> list[str]:
    """What an ROI is about: modality, organ, the ROI's label, then the coarse terms (module doc).

    ``terms`` are the coarse caption's terms; ``other_labels`` the labels of the image's other
    ROIs, left out of a labelled ROI's concepts. Measurement words never appear. An image of a
    non-anatomical object (organ ``phantom``) has no concepts: there is nothing to look up."""
    if clean_text(organ).lower() in NON_ANATOMICAL_ORGANS:
        return []
    words: list[str] = [modality_concept(modality) if modality else "", _organ_concept(organ)]
    own = clean_text(label).replace("_", " ")
    labelled = origin != "whole_image" and not is_placeholder_label(own)
    if labelled:
        words.append(strip_measurement_words(own))
    skip = {clean_text(x).replace("_", " ").lower() for x in other_labels} if labelled else set()
    skip.discard(own.lower())
    skip |= set(vocabulary().unspecified_organs)
    for term in terms:
        t = clean_text(term).replace("_", " ")
        if t.lower() in skip or (modality and _names_modality(t, modality)):
            continue
        words.append(strip_measurement_words(t))
    return unique_texts(w for w in words if w)


def concept_query(concepts: Iterable[str]) -> str:
    """The query text of a list of concepts (space-joined, deduplicated)."""
    return " ".join(unique_texts(concepts))


def build_queries(coarse: pl.DataFrame, rois: pl.DataFrame | None = None) -> pl.DataFrame:
    """A retrieval query per ROI (per image when the image has no ROI rows), from concepts only.

    ``coarse`` needs ``record_id`` and ``terms`` (``modality`` and ``organ`` are used when
    present); ``rois`` needs ``record_id`` and uses ``roi_id``, ``label`` and ``origin``."""
    if coarse.height == 0:
        return pl.DataFrame(schema=QUERY_SCHEMA)
    by_record: dict[str, list[dict]] = {}
    if rois is not None and rois.height:
        cols = [c for c in ("record_id", "roi_id", "label", "origin") if c in rois.columns]
        for r in rois.select(cols).to_dicts():
            by_record.setdefault(r["record_id"], []).append(r)
    ccols = [c for c in ("record_id", "terms", "modality", "organ") if c in coarse.columns]
    out: list[dict] = []
    for row in coarse.select(ccols).to_dicts():
        terms = as_str_list(row.get("terms"))
        modality, organ = row.get("modality"), row.get("organ")
        roi_rows = by_record.get(row["record_id"], [])
        if not roi_rows:
            query = concept_query(roi_concepts(modality, organ, terms))
            out.append({"record_id": row["record_id"], "roi_id": None, "query": query})
            continue
        labels = {clean_text(r.get("label")) for r in roi_rows if r.get("origin") != "whole_image"}
        for roi in roi_rows:
            concepts = roi_concepts(
                modality, organ, terms, label=roi.get("label"), origin=roi.get("origin"), other_labels=labels
            )
            out.append(
                {"record_id": row["record_id"], "roi_id": roi.get("roi_id"), "query": concept_query(concepts)}
            )
    return pl.DataFrame(out, schema=QUERY_SCHEMA)


def _similarity(hit: Any) -> float:
    sim = getattr(hit, "similarity", None)
    return float(hit.score if sim is None else sim)


def retrieve_for_records(
    queries_df: pl.DataFrame,
    retriever: Any,
    k: int = 5,
    mode: str = "hybrid",
    batch_size: int = 256,
    min_similarity: float | None = DEFAULT_MIN_SIMILARITY,
    order: str = "similarity",
) -> pl.DataFrame:
    """Top-k passages per query above the similarity floor; identical queries are searched once.

    ``scores`` holds each chunk's dense cosine similarity to the query (the retriever's own
    score where it reports no similarity). ``min_similarity=None`` keeps every hit. With
    ``order="similarity"`` (default) the chunks are listed by decreasing similarity, the mode
    choosing the candidates (hybrid: the fused dense and BM25 top ``candidates``); ``"rank"``
    keeps the mode's order. An empty query (nothing to look up) retrieves nothing.

    A retriever whose ``search`` takes ``min_similarity``/``order`` applies them before its top
    k is cut (up to ``k`` passages above the floor are kept); for any other, hits at or below
    the floor are dropped afterwards and the rest sorted (hits without a similarity are kept)."""
    if queries_df.height == 0:
        return RETRIEVED_KNOWLEDGE.empty()
    queries = queries_df["query"].fill_null("").to_list()
    unique = list(dict.fromkeys(queries))
    params = _search_params(retriever)
    kw: dict[str, Any] = {}
    if min_similarity is not None and "min_similarity" in params:
        kw["min_similarity"] = min_similarity
    if "order" in params:
        kw["order"] = order
    results: dict[str, list] = {}
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        todo = [q for q in batch if q.strip()]
        found = retriever.search(todo, k=k, mode=mode, **kw) if todo else []
        results.update(dict(zip(todo, found, strict=True)))
        results.update({q: [] for q in batch if not q.strip()})
    results = {q: _floor_and_order(hits, min_similarity, order) for q, hits in results.items()}
    return pl.DataFrame(
        {
            "record_id": queries_df["record_id"].to_list(),
            "roi_id": queries_df["roi_id"].to_list(),
            "query": queries,
            "chunk_ids": [[h.chunk_id for h in results[q]] for q in queries],
            "scores": [[_similarity(h) for h in results[q]] for q in queries],
            "mode": [mode] * len(queries),
        },
        schema=dict(RETRIEVED_KNOWLEDGE.schema),
    )


def _floor_and_order(hits: list, min_similarity: float | None, order: str) -> list:
    """Hits above the floor (those without a similarity are kept), by similarity if asked."""
    if min_similarity is not None:
        hits = [h for h in hits if getattr(h, "similarity", None) is None or h.similarity > min_similarity]
    if order == "similarity" and all(getattr(h, "similarity", None) is not None for h in hits):
        hits = sorted(hits, key=lambda h: -h.similarity)
    return hits


def _search_params(retriever: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(retriever.search).parameters)
    except (TypeError, ValueError):
        return set()
