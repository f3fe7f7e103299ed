"""ICD-10 codes for a finding: WHO ICD-10, WHO parents reached through ICD-10-CM, and ICD-10-CM, from the
descriptions :mod:`medtrinity_assets.core.ontology` loads (its phrase index reads a text's findings)."""

from __future__ import annotations

from functools import lru_cache

from medtrinity_assets.core import ontology
from medtrinity_assets.core.ontology import (
    _QUALIFIER,
    Concept,
    _desc_key,
    _icd_concept,
    _icd_rows,
    _tagged,
    normalise,
    tokens,
)
from medtrinity_assets.core.ontology_lists import ICD_SYNONYMS


@lru_cache(maxsize=1)
def _icd_search() -> tuple[list[tuple[tuple[str, str, str], str]], dict[str, list[int]], dict, dict]:
    """(ICD row, " normalised description ") of every code; word -> the entries that have it; the WHO
    concepts by code; the ICD-10-CM normalised descriptions by code without its dot."""
    entries = [(row, f" {_desc_key(row[2])} ") for row in _icd_rows()]
    postings: dict[str, list[int]] = {}
    for n, (_, key) in enumerate(entries):
        for word in set(key.split()):
            postings.setdefault(word, []).append(n)
    who = {row[1]: _icd_concept(*row) for row, _ in entries if row[0] == "ICD-10"}
    cm_keys = {row[1].replace(".", ""): k.strip() for row, k in entries if row[0] == "ICD-10-CM"}
    return entries, postings, who, cm_keys


def _icd_hits(key: str, sites: list[str]) -> list[Concept]:
    """Codes whose normalised description contains ``key`` and every one of ``sites`` as whole words: the
    description that is ``key`` (but for "unspecified") first, then those it opens, then the shortest."""
    (entries, postings, _, _), words = _icd_search(), set(key.split())
    if not words or not words <= postings.keys():
        return []
    needle, places = f" {key} ", [f" {s} " for s in sites]
    ids = min((postings[w] for w in words), key=len)
    hits = [e for e in map(entries.__getitem__, ids) if needle in e[1] and all(p in e[1] for p in places)]
    hits.sort(key=lambda h: (_QUALIFIER.sub("", h[1].strip()) != key, h[1].find(needle), len(h[1])))
    return [_icd_concept(*row) for row, _ in hits]


def _most_general(hits: list[Concept]) -> list[Concept]:
    """``hits`` without the codes that extend another hit of the same scheme (E11.311 under E11.31)."""
    codes = {(c.scheme, c.code.replace(".", "")) for c in hits}
    bare = [(c, c.code.replace(".", "")) for c in hits]
    return [c for c, b in bare if not any((c.scheme, b[:k]) in codes for k in range(3, len(b)))]


def _lifted(cm_hits: list[Concept]) -> list[Concept]:
    """WHO ICD-10 parents of ICD-10-CM hits: the CM code's first four characters, where WHO has that code
    with the same description (the two agree there). This is how "diabetic retinopathy" reaches E10.3 and
    E11.3, whose WHO descriptions only say "with ophthalmic complications" (no inclusion terms here)."""
    _, _, who, cm = _icd_search()
    parents = [p for p in (who.get(c.code[:5]) for c in cm_hits) if p]
    return list(dict.fromkeys(p for p in parents if cm.get(p.code.replace(".", "")) == _desc_key(p.label)))


def icd10_for(concept_or_text: Concept | str, limit: int = 12) -> list[Concept]:
    """ICD-10 codes whose description names the finding (WHO ICD-10, WHO parents reached through ICD-10-CM,
    ICD-10-CM; the most general matching code of each family). The ICD descriptions a text names come first;
    then the text is searched whole ("diabetic retinopathy"); failing that each finding it names is, and a
    code must then name all the text's anatomy ("lung cancer" -> "Malignant neoplasm of bronchus and lung").
    Non-findings give nothing. Precision over recall: a finding that only a broader heading covers
    ("fibroma" of the tibia) gives nothing, nor does a long description naming many organs."""
    if isinstance(concept_or_text, Concept):
        if concept_or_text.scheme in ("ICD-10", "ICD-10-CM"):
            return [concept_or_text]
        findings = [concept_or_text] if concept_or_text.kind == "finding" else []
        whole, sites = "", []
    else:
        words = tokens(concept_or_text)
        found = [(key, cs) for key, cs, inner in _tagged(words) if not inner]
        findings = [c for _, cs in found for c in cs if c.kind == "finding"]
        whole, sites = " ".join(words), [k for k, cs in found if any(c.kind == "anatomy" for c in cs)]
    named = [c for c in findings if c.scheme in ("ICD-10", "ICD-10-CM")]
    hits = _icd_hits(whole, []) if whole and findings else []
    for concept in findings if not hits else ():
        queries = {normalise(concept.display), normalise(concept.label)} if concept not in named else set()
        queries |= {normalise(ICD_SYNONYMS[q]) for q in queries if q in ICD_SYNONYMS}
        hits += [c for q in sorted(queries) for c in _icd_hits(q, sites)]
    hits = _most_general([c for c in dict.fromkeys([*named, *hits]) if c.kind == "finding"])
    who, cm = ([c for c in hits if c.scheme == scheme] for scheme in ("ICD-10", "ICD-10-CM"))
    return [*who, *(c for c in _lifted(cm) if c not in who), *cm][:limit]


ontology._CACHES.append(_icd_search)
