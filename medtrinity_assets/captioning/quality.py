"""Claim-level quality checks of descriptions, PHI scan, and the optional MLLM judge's scores.

Claims are read back out of each caption's own words (paragraph and facets), whatever backend
wrote it, and compared with evidence the description was not written from wherever it exists
(:mod:`medtrinity_assets.captioning.evidence`), not with the attribute table:

- every facet present;
- image position (``horizontally ... left``, ``upper third of the image``) against the third that
  holds most of the ROI's own mask (else its centroid's), decoded from its RLE; none for a whole image;
- area ("covers 3.2% of the image area") and bounding-box span against the mask; "no region
  was localised" only for a whole image; an outline word only where one was measured (none for a
  box, a whole image or a region of the classical fallback) and only that word ("circular" for
  round);
- "lies within" / "encloses" against the containment recomputed from the masks of the image's
  regions (or the label map's enclosing label), "bordered by" / "borders" against the share of the
  ring around a region that the other covers, "lies above and left of the cyst in the image"
  against the centroids of the image's regions of that name; "one of two regions labelled white
  matter" against the image's localised regions with that label;
- patient laterality (``left``/``right`` not describing the image frame and not part of a known
  label) against ``patient_lr`` (from the header's orientation); a laterality claim on an image
  of unknown orientation fails; anterior/posterior and superior/inferior likewise;
- modality words against the metadata modality, body-region words against the organ;
- anatomy (ontology concepts) only as the metadata name it; findings (diseases) only as the
  metadata or the retrieved passages name them (:mod:`medtrinity_assets.core.ontology`);
- every other number from the inputs (metadata, ROI count, window);
- quotes: verbatim from a retrieved passage above the relevance floor, contradicting no measured word;
- intensity polarity (hyper-/hypo-/iso-, increased/decreased uptake, denser/paler staining) and
  homogeneity against the measured words;
- sizes in mm/cm only when a diameter was measured, and never above it;
- length bounds; PHI (``Surname^Given`` names, titles with names, long identifier-like digit
  runs, dates, and any listed value).

Sentences quoting a retrieved passage (a chunk-id citation ``[chunk_id]``) state background
knowledge, not findings in this image, so they are excluded from the image-claim checks (but
not from the PHI scan and the quote check).

The claim readers live in :mod:`medtrinity_assets.captioning.claims`, the reading of a whole
description (sentence by sentence) in :mod:`medtrinity_assets.captioning.reading`, the checks of the
region's geometry against its mask in :mod:`medtrinity_assets.captioning.region_checks`, the judge in
:mod:`medtrinity_assets.captioning.judge`.

Cost per ROI (against the embedded captioner's: ``benchmarks/caption_quality.py``): a description's
claims are read sentence by sentence (clause by clause), each distinct one once per process, its
measures (area, span, sizes) apart from its words (:mod:`medtrinity_assets.captioning.reading`); the
PHI patterns likewise, piece by piece where no match can go on past a piece's end
(:func:`medtrinity_assets.privacy.text.find_phi`); the claim and PHI expressions sit behind literal gates
(:mod:`medtrinity_assets.core.regex_gate`: a text without an expression's words is not scanned, a
reader's expressions are asked as one group, and a scan starts only where a match can); each mask is
read once, off its run lengths, the facts of a batch's regions counted in one pass over all their runs
(:func:`medtrinity_assets.captioning.evidence.batch_evidence`); and the ontology is read with a word
trie. None of it changes a result: the tests hold each fast path to its plain computation, and whole
tables to descriptions read in one piece with every expression scanning its whole text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from medtrinity_assets.captioning import evidence, phrasing, region_checks
from medtrinity_assets.captioning.claims import (
    caption_facets,
    claim_sentences,
    known_phrases,
    numbers_in,
    quoted_passages,
)
from medtrinity_assets.captioning.evidence import RegionFacts
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.judge import Judge
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.captioning.reading import Said, read_said
from medtrinity_assets.captioning.wording import intensity_polarity
from medtrinity_assets.core.tables import CAPTION_QUALITY, QUALITY_CHECKS
from medtrinity_assets.core.vocabulary import (
    allowed_modalities,
    compatible_regions,
    modality_mentions,
    modality_of,
    organ_region,
    organ_terms,
    regions_in,
)
from medtrinity_assets.core.workers import collector_paused
from medtrinity_assets.privacy import find_phi, matcher_for

CHECKS = QUALITY_CHECKS
MIN_FACET_CHARS = 8


def scan_phi(text: str, phi_values: Iterable[str] | Any = (), chunk_ids: Iterable[str] = ()) -> list[str]:
    """PHI kinds found in a description (never the values): the privacy module's one pattern set
    and the source's identifying values (a matcher, a hashed store or plain values). Chunk ids
    are removed first: they are hex strings, not identifiers."""
    for cid in chunk_ids:
        if cid:
            text = text.replace(cid, " ")
    return find_phi(text, phi_values)


def forget_texts() -> None:
    """Forget every text the checks have read (the sentence memo and the readers' own caches; not the
    ontology and vocabulary indexes): what a fresh process starts from, for a benchmark."""
    from medtrinity_assets.captioning import reading, wording
    from medtrinity_assets.core import ontology, vocabulary
    from medtrinity_assets.privacy import text as phi_text

    reading._memo.clear()
    phi_text._KINDS.clear()
    for cached in (wording._intensity_polarities, wording._homogeneity_mentions, vocabulary._modality_mentions,
                   vocabulary._regions_in):
        cached.cache_clear()
    ontology._index().memo.clear()
    ontology._index().pieces.clear()


def check_caption(
    row: dict[str, Any],
    item: CaptionInput | None,
    *,
    phi_values: Iterable[str] | Any = (),
    min_chars: int = 80,
    max_chars: int = 6000,
    facts: RegionFacts | None = None,
    nested: set[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Checks of one caption row against its input; see the module docstring. ``facts`` and
    ``nested`` are the region's mask evidence (recomputed from its RLE when not given)."""
    res: dict[str, Any] = {c: False for c in CHECKS}
    facets = caption_facets(row)
    text = row.get("text") or ""
    chunk_ids = list(row.get("retrieved_chunk_ids") or (item.chunk_ids if item else []))
    present, issues = _facet_presence(facets)
    res.update(present)
    full = claims_text_of(text, facets)
    phi = scan_phi(full, phi_values, chunk_ids)
    res["phi_found"] = bool(phi)
    issues.extend(f"phi: {k}" for k in phi)
    unchecked = _why_unchecked(row, item)
    if unchecked is not None:
        issues.insert(0, unchecked)
        res.update(consistent=False, issues=issues)
        return res
    res["facets_present"] = all(present.values())
    ev = _Evidence(facts if facts is not None else evidence.region_facts(item), nested)
    for check, found in _claim_issues(text, full, facets, chunk_ids, item, ev, (min_chars, max_chars)).items():
        res[check] = not found
        issues.extend(found)
    res["consistent"] = all(res[c] for c in CHECKS)
    res["issues"] = issues
    return res


def claims_text_of(text: str, facets: dict[str, str | None]) -> str:
    """The text whose claims are checked: the paragraph, then each facet it does not already hold
    as whole sentences (a facet copied into the paragraph would only be read twice)."""
    extra = [v for v in facets.values() if v and not _holds_sentences(text, v.strip())]
    return " ".join([text, *extra])


def _holds_sentences(text: str, part: str) -> bool:
    """Whether ``part`` occurs in ``text`` between whitespace (or the text's ends)."""
    k = text.find(part) if part else -1
    while k >= 0:
        end = k + len(part)
        if (k == 0 or text[k - 1].isspace()) and (end == len(text) or text[end].isspace()):
            return True
        k = text.find(part, k + 1)
    return False


def _facet_presence(facets: dict[str, str | None]) -> tuple[dict[str, bool], list[str]]:
    """``facet_<k>_present`` for every facet (at least :data:`MIN_FACET_CHARS` characters), and
    an issue per missing one."""
    present: dict[str, bool] = {}
    issues: list[str] = []
    for k in FACETS:
        ok = bool(facets.get(k) and len(facets[k].strip()) >= MIN_FACET_CHARS)
        present[f"facet_{k}_present"] = ok
        if not ok:
            issues.append(f"facet {k} missing")
    return present, issues


def _why_unchecked(row: dict[str, Any], item: CaptionInput | None) -> str | None:
    """Why a row's claims cannot be checked (a failed caption, no input), or None."""
    if row.get("status") != "ok":
        return f"caption failed: {row.get('error') or 'unknown error'}"
    if item is None:
        return "no input found for this caption"
    return None


@dataclass(frozen=True)
class _Evidence:
    """What the region's own mask says (None: no mask to recompute from) and which regions of its
    image it lies within or encloses (None: not computed, containment claims not checked)."""

    facts: RegionFacts | None
    nested: set[tuple[str, str]] | None


def _claim_issues(
    text: str,
    full: str,
    facets: dict[str, str | None],
    chunk_ids: list[str],
    item: CaptionInput,
    ev: _Evidence,
    length: tuple[int, int],
) -> dict[str, list[str]]:
    """Issues per check (none: the check passed), in the order they are reported.

    Claims are read from ``full`` (paragraph and facets) without cited passages and known names,
    sentence by sentence (:mod:`medtrinity_assets.captioning.reading`).
    """
    known = known_phrases(item)
    entry = modality_of(item.modality)
    said = read_said(claim_sentences(full, chunk_ids), known, item.intensity_word, entry.key if entry else None)
    return {
        "length_ok": _length_issues(len(text), *length),
        "position_ok": region_checks.position_issues(said.position_claims(), item, ev.facts),
        "laterality_ok": _side_issues(said, item) + _orientation_issues(said, item),
        "modality_ok": _modality_issues(said, facets, item),
        "organ_ok": _organ_issues(said, facets, item, known),
        "texture_ok": _texture_issues(said, item),
        "size_ok": region_checks.size_issues(said, item) + region_checks.extent_issues(said, item, ev.facts),
        "relations_ok": region_checks.nesting_issues(said, item, ev.nested),
        "terms_ok": _term_issues(said, item),
        "numbers_ok": _number_issues(said, item),
        "quotes_ok": _quote_issues(full, item),
    }


def _length_issues(n: int, min_chars: int, max_chars: int) -> list[str]:
    """The paragraph's length against its bounds."""
    if min_chars <= n <= max_chars:
        return []
    return [f"length {n} outside [{min_chars}, {max_chars}]"]


def _side_issues(said: Said, item: CaptionInput) -> list[str]:
    """Patient left/right claims against ``patient_lr``; any claim fails when it is unknown."""
    sides = said.patient_sides()
    lr = (item.patient_lr or "").lower() or None
    if not sides:
        return []
    if lr is None:
        return [f"laterality claimed ({'/'.join(sorted(sides))}) but patient side unknown"]
    if sides != {lr}:
        return [f"laterality: says {'/'.join(sorted(sides))}, measured {lr}"]
    return []


def _orientation_issues(said: Said, item: CaptionInput) -> list[str]:
    """Anterior/posterior and superior/inferior claims against their measured values, when known."""
    issues: list[str] = []
    for word in sorted(said.patient_orientations()):
        measured = (item.patient_ap if word in ("anterior", "posterior") else item.patient_si) or ""
        if measured.lower() in ("anterior", "posterior", "superior", "inferior") and measured.lower() != word:
            issues.append(f"orientation: says {word}, measured {measured.lower()}")
    return issues


def _modality_issues(said: Said, facets: dict[str, str | None], item: CaptionInput) -> list[str]:
    """The modality facet must name the recorded modality, and the text no other one."""
    entry = modality_of(item.modality)
    if entry is None:
        return []
    issues: list[str] = []
    allowed = allowed_modalities(entry.key)
    if not (modality_mentions(facets.get("modality") or "") & allowed):
        issues.append(f"modality facet does not name the recorded modality ({item.modality})")
    other = said.modalities - allowed
    if other:
        issues.append(f"modality: mentions {'/'.join(sorted(other))}, recorded {item.modality}")
    if said.techniques:  # how the image was made: only as its metadata say ("contrast-enhanced" is a claim)
        meta, rx = evidence.metadata_text(item), dict(entry.techniques)
        issues += [f"modality: says {t}, which the metadata do not" for t in said.techniques if not rx[t].search(meta)]
    return issues


def _organ_issues(said: Said, facets: dict[str, str | None], item: CaptionInput, known: list[str]) -> list[str]:
    """The organ facet must name the recorded organ, and the text no incompatible body region."""
    organ = (item.organ or "").strip()
    if not organ or organ.lower() in ("unspecified", "unknown"):
        return []
    issues: list[str] = []
    facet_org = (facets.get("organ") or "").lower()
    if not any(t in facet_org for t in organ_terms(organ)):
        issues.append(f"organ facet does not name the recorded organ ({organ})")
    region = organ_region(organ)
    if region is not None:
        other_r = said.regions - _allowed_regions(region, known)
        if other_r:
            issues.append(f"organ: mentions {'/'.join(sorted(other_r))} anatomy, recorded {organ}")
    return issues


def _allowed_regions(region: set[str], known: list[str]) -> set[str]:
    """The organ's regions, those compatible with them, and those its known names mention."""
    allowed_r = set(region)
    for r in region:
        allowed_r |= compatible_regions(r)
    for p in known:
        allowed_r |= regions_in(p)
    return allowed_r


def _texture_issues(said: Said, item: CaptionInput) -> list[str]:
    """Intensity polarity and homogeneity claims against the measured words."""
    issues: list[str] = []
    pol = intensity_polarity(item.intensity_word)
    if pol is not None and said.polarities - {pol}:
        issues.append(f"intensity: caption contradicts measured '{item.intensity_word}'")
    homo = (item.texture_homogeneity_word or "").lower()
    if homo in ("homogeneous", "heterogeneous") and said.homogeneity - {homo}:
        issues.append(f"texture: caption contradicts measured '{homo}'")
    return issues


def _term_issues(said: Said, item: CaptionInput) -> list[str]:
    """Anatomy only from the metadata (organ and its synonyms, labels, terms, concepts), findings
    only from the metadata or the retrieved passages (ontology concepts,
    :mod:`medtrinity_assets.core.ontology`). Anatomy the metadata do not name cannot be checked
    against the image, so it is not allowed: "splenic" in a liver image fails."""
    from medtrinity_assets.core import ontology

    if not said.anatomy and not said.findings:  # nothing to ground (most descriptions): the metadata need no reading
        return []
    meta = evidence.metadata_text(item) + " . " + " . ".join(organ_terms(item.organ or ""))
    issues = [f"anatomy not in the metadata: {word}" for word in sorted(said.anatomy - ontology.anatomy_words(meta))]
    if said.findings:
        grounded = {(c.scheme, c.code) for c in ontology.finding_concepts(meta + " . " + evidence.passages_text(item))}
        ungrounded = [c for c in said.findings if (c.scheme, c.code) not in grounded]
        issues += [f"finding not in the metadata nor the passages: {d}" for d in dict.fromkeys(c.display for c in ungrounded)]
    return issues


def _number_issues(said: Said, item: CaptionInput) -> list[str]:
    """Every number outside the checked area/span/size claims must come from the inputs (the
    metadata, the ROI count, the window)."""
    odd = said.numbers - {str(item.roi_count)}  # the ROI count is an input (most descriptions state no other number)
    if not odd:
        return []
    allowed = set(numbers_in(evidence.metadata_text(item))) | set(numbers_in(item.window or ""))
    odd = odd - allowed
    return [f"numbers not from the inputs: {', '.join(sorted(odd))}"] if odd else []


def _quote_issues(full: str, item: CaptionInput) -> list[str]:
    """Each quoted passage sentence must be in a retrieved passage above the relevance floor,
    verbatim, and contradict none of the measured words."""
    from medtrinity_assets.knowledge.quotes import contradicts, measured_words
    from medtrinity_assets.knowledge.retrieval import DEFAULT_MIN_SIMILARITY

    quoted = quoted_passages(full) if "[" in full else []  # a cited quote needs a "["
    if not quoted:
        return []
    by_id = {p.chunk_id: p for p in item.passages}
    measured = measured_words(item.intensity_word, item.texture_homogeneity_word,
                              greyscale=phrasing.greyscale_photograph(item))
    issues = []
    for sentence, cid in quoted:
        passage = by_id.get(cid)
        if passage is None:
            issues.append(f"quotes passage {cid}, which was not retrieved for this region")
            continue
        if passage.score is not None and passage.score < DEFAULT_MIN_SIMILARITY:
            issues.append(f"quotes passage {cid} below the relevance floor ({passage.score:.2f})")
        if " ".join(sentence.replace("'", '"').split()) not in " ".join(passage.text.replace("'", '"').split()):
            issues.append(f"quoted sentence is not in passage {cid}")
        why = contradicts(sentence, measured)
        if why:
            issues.append(f"quote contradicts the measured region: {why}")
    return issues


def _bordering_said(rows: list[dict[str, Any]]) -> set[str]:
    """The images whose descriptions use the word "border" (a bordering claim needs it): only their
    regions' bordering is recomputed."""
    return {r["record_id"] for r in rows
            if any("border" in (v or "").lower() for v in (r.get("text"), *caption_facets(r).values()))}


#: the caption columns the checks read (a row's others, its timestamp among them, cost time to convert)
_READ = frozenset({"record_id", "roi_id", "backend", "inputs_hash", "retrieved_chunk_ids", "text", "facets", "status",
                   "error", *(f"facet_{k}" for k in FACETS)})


@collector_paused()
def _checked_rows(rows_in: list[dict[str, Any]], items: list[CaptionInput | None],
                  by_key: dict[tuple[str, str], CaptionInput], phi_matcher: Any, length: tuple[int, int]) -> list[dict]:
    """The rule checks of each caption row (:func:`check_caption`), the regions' mask evidence read once
    for all of them."""
    images = {r["record_id"] for r in rows_in}  # every region of their images, described here or not
    facts, nested = evidence.batch_evidence((i for i in by_key.values() if i.record_id in images),
                                            _bordering_said(rows_in))
    out = []
    for row, item in zip(rows_in, items, strict=True):
        key = (row["record_id"], str(row["roi_id"]))
        res = check_caption(row, item, phi_values=phi_matcher, min_chars=length[0], max_chars=length[1],
                            facts=facts.get(id(item)), nested=nested.get(key, set()))
        out.append({"record_id": row["record_id"], "roi_id": row["roi_id"], "backend": row.get("backend"),
                    "inputs_hash": row.get("inputs_hash"), **res})
    return out


def check_captions(
    captions: pl.DataFrame,
    inputs: dict[tuple[str, Any], CaptionInput],
    *,
    phi_values: Iterable[str] | Any = frozenset(),
    judge: Judge | None = None,
    min_chars: int = 80,
    max_chars: int = 6000,
) -> pl.DataFrame:
    """One row of checks per caption: ``record_id, roi_id, backend, <check> bools, facet_<k>_present,
    consistent, phi_found, passed, issues (list[str])`` and ``judge_<facet>`` scores (null without a
    judge) with ``judge_mean``."""
    by_key = {(rid, str(roi)): item for (rid, roi), item in inputs.items()}
    rows_in = list(captions.select([c for c in captions.columns if c in _READ]).iter_rows(named=True))
    items = [by_key.get((r["record_id"], str(r["roi_id"]))) for r in rows_in]
    phi_matcher = phi_values if hasattr(phi_values, "search") else matcher_for(phi_values)  # once per batch
    out = _checked_rows(rows_in, items, by_key, phi_matcher, (min_chars, max_chars))
    scores: list[dict[str, float] | None] = [None] * len(out)
    if judge is not None:
        todo = [i for i, (r, it) in enumerate(zip(rows_in, items, strict=True)) if it is not None and r["status"] == "ok"]
        got = judge.score([(items[i], rows_in[i]["text"] or "", caption_facets(rows_in[i])) for i in todo])
        for i, s in zip(todo, got, strict=True):
            scores[i] = s
            if s is None:
                out[i]["issues"] = [*out[i]["issues"], "judge failed"]
    for res, s in zip(out, scores, strict=True):
        for k in FACETS:
            res[f"judge_{k}"] = None if s is None else float(s[k])
        res["judge_mean"] = None if s is None else sum(float(s[k]) for k in FACETS) / len(FACETS)
        res["passed"] = bool(res["consistent"] and not res["phi_found"])
    return CAPTION_QUALITY.frame(out)
