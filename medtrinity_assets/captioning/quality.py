"""Claim-level quality checks of descriptions, PHI scan and an optional MLLM judge.

Claims are read back out of each caption's own words (paragraph and facets), whatever backend
wrote it, and compared with the measured ROI and the metadata:

- every facet present;
- image position (``horizontally ... left``, ``upper third of the image``) against the measured
  horizontal/vertical thirds;
- patient laterality (``left``/``right`` not describing the image frame and not part of a known
  label) against ``patient_lr``; a laterality claim on an image of unknown orientation fails;
  anterior/posterior and superior/inferior against their measured values when known;
- modality words against the metadata modality, body-region words against the organ;
- intensity polarity (hyper-/hypo-/iso-) and homogeneity against the measured words;
- sizes in mm/cm only when a diameter was measured, and never above it;
- length bounds; PHI (``Surname^Given`` names, titles with names, long identifier-like digit
  runs, dates, and any listed value).

Sentences quoting a retrieved passage (a chunk-id citation ``[chunk_id]``) state background
knowledge, not findings in this image, so they are excluded from the image-claim checks (but
not from the PHI scan).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import polars as pl

from medtrinity_assets.captioning.backends.base import run_sync
from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS, build_reference_text
from medtrinity_assets.captioning.wording import (
    homogeneity_mentions,
    intensity_polarities,
    intensity_polarity,
    label_text,
)
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
from medtrinity_assets.privacy import find_phi, matcher_for

CHECKS = QUALITY_CHECKS
MIN_FACET_CHARS = 8

_FRAME = r"(?:image|frame|picture|field of view|view|slice)"
_H = r"(left|right|central|centre|center|middle)"
_V = r"(upper|middle|lower|top|bottom|central|centre|center)"
_PART = r"(?:third|half|side|part|portion|region|aspect|area)"
_POSITION_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\bhorizontal(?:ly)?\b[^.;,]{0,40}?\b" + _H + r"\b", re.I), "h"),
    (re.compile(r"\b" + _H + r"\s+third\s+horizontally\b", re.I), "h"),
    (re.compile(r"\bvertical(?:ly)?\b[^.;,]{0,40}?\b" + _V + r"\b", re.I), "v"),
    (re.compile(r"\b" + _V + r"\s+third\s+vertically\b", re.I), "v"),
    (re.compile(r"\b(upper|lower|top|bottom)[- ](left|right)\s+(?:quadrant|corner|part|region|area)\s+of\s+the\s+"
                + _FRAME, re.I), "vh"),
    (re.compile(r"\b(left|right)\s+" + _PART + r"\s+of\s+the\s+" + _FRAME, re.I), "h"),
    (re.compile(r"\b(upper|lower|top|bottom)\s+" + _PART + r"\s+of\s+the\s+" + _FRAME, re.I), "v"),
    (re.compile(r"\b(central|centre|center|middle)\s+" + _PART + r"\s+of\s+the\s+" + _FRAME, re.I), "c"),
    (re.compile(r"\b(?:image|frame)[- ](left|right)\b", re.I), "h"),
]
_H_NORM = {"left": "left", "right": "right", "central": "centre", "centre": "centre", "center": "centre",
           "middle": "centre"}
_V_NORM = {"upper": "upper", "top": "upper", "lower": "lower", "bottom": "lower", "middle": "middle",
           "central": "middle", "centre": "middle", "center": "middle"}
_RELATIONAL = re.compile(r"\b(left|right)(?:\s+of|ward)\b", re.I)
_SIDE = re.compile(r"\b(left|right)\b", re.I)
_AP = re.compile(r"\b(anterior|posterior|superior|inferior)\b", re.I)
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?(mm|millimet(?:re|er)s?|cm|centimet(?:re|er)s?)\b", re.I)

_CITE = re.compile(r"\[(?:chunk\s*)?([\w.:\-]+)\]")
_QUOTE_CITE = re.compile(r"[\"“]([^\"”]*)[\"”]\s*,?\s*\[(?:chunk\s*)?([\w.:\-]+)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_HEXID = re.compile(r"[0-9a-f]{8,}")


def strip_citations(text: str, chunk_ids: Iterable[str]) -> str:
    """Remove quoted passages cited by chunk id, then any sentence that cites a chunk id.

    Without known chunk ids, any hex-like id of 8+ characters in brackets counts as a citation.
    """
    ids = {c for c in chunk_ids if c}

    def is_cite(cid: str) -> bool:
        return cid in ids if ids else bool(_HEXID.fullmatch(cid))

    text = _QUOTE_CITE.sub(lambda m: " " if is_cite(m.group(2)) else m.group(0), text)
    return " ".join(
        s for s in _SENTENCE.split(text) if not any(is_cite(m.group(1)) for m in _CITE.finditer(s))
    )


@lru_cache(maxsize=4096)
def _phrase_re(phrase: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", re.I)


def _mask_phrases(text: str, phrases: Iterable[str]) -> str:
    for p in sorted({p for p in phrases if p and len(p) >= 2}, key=len, reverse=True):
        text = _phrase_re(p).sub(" ", text)
    return text


def position_claims(text: str) -> tuple[list[tuple[str, str]], str]:
    """(claims as (axis, value), text with the claims removed)."""
    claims: list[tuple[str, str]] = []
    for rx, axis in _POSITION_PATTERNS:
        def take(m: re.Match, axis: str = axis) -> str:
            if axis == "vh":
                claims.append(("v", _V_NORM[m.group(1).lower()]))
                claims.append(("h", _H_NORM[m.group(2).lower()]))
            elif axis == "h":
                claims.append(("h", _H_NORM[m.group(1).lower()]))
            elif axis == "v":
                claims.append(("v", _V_NORM[m.group(1).lower()]))
            else:
                claims.append(("c", "centre"))
            return " "
        text = rx.sub(take, text)
    return claims, text


def _known_phrases(item: CaptionInput) -> list[str]:
    raw = [item.label, item.inside_label, *(r.get("other") for r in item.relations), *item.terms]
    out: list[str] = []
    for p in raw:
        if p:
            out.extend({str(p), label_text(p)})
    return out


def _facets_of(row: dict[str, Any]) -> dict[str, str | None]:
    facets: dict[str, str | None] = {k: row.get(f"facet_{k}") for k in FACETS}
    if not any(facets.values()) and row.get("facets"):
        try:
            parsed = json.loads(row["facets"])
            facets = {k: parsed.get(k) for k in FACETS}
        except (json.JSONDecodeError, AttributeError):
            pass
    return facets


def scan_phi(text: str, phi_values: Iterable[str] | Any = (), chunk_ids: Iterable[str] = ()) -> list[str]:
    """PHI kinds found in a description (never the values): the privacy module's one pattern set
    and the source's identifying values (a matcher, a hashed store or plain values). Chunk ids
    are removed first: they are hex strings, not identifiers."""
    for cid in chunk_ids:
        if cid:
            text = text.replace(cid, " ")
    return find_phi(text, phi_values)


def check_caption(
    row: dict[str, Any],
    item: CaptionInput | None,
    *,
    phi_values: Iterable[str] | Any = (),
    min_chars: int = 80,
    max_chars: int = 6000,
) -> dict[str, Any]:
    """Checks of one caption row against its input; see the module docstring."""
    issues: list[str] = []
    res: dict[str, Any] = {c: False for c in CHECKS}
    facets = _facets_of(row)
    text = row.get("text") or ""
    chunk_ids = list(row.get("retrieved_chunk_ids") or (item.chunk_ids if item else []))
    for k in FACETS:
        ok = bool(facets.get(k) and len(facets[k].strip()) >= MIN_FACET_CHARS)
        res[f"facet_{k}_present"] = ok
        if not ok:
            issues.append(f"facet {k} missing")
    full = " ".join([text, *(v for v in facets.values() if v)])
    phi = scan_phi(full, phi_values, chunk_ids)
    res["phi_found"] = bool(phi)
    issues.extend(f"phi: {k}" for k in phi)
    if row.get("status") != "ok":
        issues.insert(0, f"caption failed: {row.get('error') or 'unknown error'}")
        res.update(consistent=False, issues=issues)
        return res
    if item is None:
        issues.insert(0, "no input found for this caption")
        res.update(consistent=False, issues=issues)
        return res
    res["facets_present"] = all(res[f"facet_{k}_present"] for k in FACETS)

    n = len(text)
    res["length_ok"] = min_chars <= n <= max_chars
    if not res["length_ok"]:
        issues.append(f"length {n} outside [{min_chars}, {max_chars}]")

    claims_text = strip_citations(full, chunk_ids)
    masked = _mask_phrases(claims_text, _known_phrases(item))

    # image position
    pos, rest = position_claims(masked)
    h = _H_NORM.get((item.horizontal or "").lower())
    v = _V_NORM.get((item.vertical or "").lower())
    pos_ok = True
    for axis, val in pos:
        if axis == "h" and h is not None and val != h:
            pos_ok = False
            issues.append(f"image position: says horizontal {val}, measured {h}")
        elif axis == "v" and v is not None and val != v:
            pos_ok = False
            issues.append(f"image position: says vertical {val}, measured {v}")
        elif axis == "c" and h is not None and v is not None and h != "centre" and v != "middle":
            pos_ok = False
            issues.append(f"image position: says central, measured {v}/{h}")
        elif axis in ("h", "v") and (h if axis == "h" else v) is None:
            pos_ok = False
            issues.append("image position claimed but not measured")
    res["position_ok"] = pos_ok

    # patient laterality (what is left once image-frame and relational uses are removed)
    rest = _RELATIONAL.sub(" ", rest) if re.search(r"\bimage\b", claims_text, re.I) else rest
    sides = {m.lower() for m in _SIDE.findall(rest)}
    lr = (item.patient_lr or "").lower() or None
    lat_ok = True
    if sides:
        if lr is None:
            lat_ok = False
            issues.append(f"laterality claimed ({'/'.join(sorted(sides))}) but patient side unknown")
        elif sides != {lr}:
            lat_ok = False
            issues.append(f"laterality: says {'/'.join(sorted(sides))}, measured {lr}")
    for word in {m.lower() for m in _AP.findall(rest)}:
        measured = (item.patient_ap if word in ("anterior", "posterior") else item.patient_si) or ""
        if measured.lower() in ("anterior", "posterior", "superior", "inferior") and measured.lower() != word:
            lat_ok = False
            issues.append(f"orientation: says {word}, measured {measured.lower()}")
    res["laterality_ok"] = lat_ok

    # modality
    entry = modality_of(item.modality)
    facet_mod = facets.get("modality") or ""
    mentioned = modality_mentions(masked)
    mod_ok = True
    if entry is not None:
        allowed = allowed_modalities(entry.key)
        if not (modality_mentions(facet_mod) & allowed):
            mod_ok = False
            issues.append(f"modality facet does not name the recorded modality ({item.modality})")
        other = mentioned - allowed
        if other:
            mod_ok = False
            issues.append(f"modality: mentions {'/'.join(sorted(other))}, recorded {item.modality}")
    res["modality_ok"] = mod_ok

    # organ / body region
    organ_ok = True
    organ = (item.organ or "").strip()
    if organ and organ.lower() not in ("unspecified", "unknown"):
        facet_org = (facets.get("organ") or "").lower()
        if not any(t in facet_org for t in organ_terms(organ)):
            organ_ok = False
            issues.append(f"organ facet does not name the recorded organ ({organ})")
        region = organ_region(organ)
        if region is not None:
            allowed_r = set(region)
            for r in region:
                allowed_r |= compatible_regions(r)
            for p in _known_phrases(item):
                allowed_r |= regions_in(p)
            other_r = regions_in(masked) - allowed_r
            if other_r:
                organ_ok = False
                issues.append(f"organ: mentions {'/'.join(sorted(other_r))} anatomy, recorded {organ}")
    res["organ_ok"] = organ_ok

    # texture claims
    tex_ok = True
    pol = intensity_polarity(item.intensity_word)
    said = intensity_polarities(masked)
    if pol is not None and said - {pol}:
        tex_ok = False
        issues.append(f"intensity: caption contradicts measured '{item.intensity_word}'")
    homo = (item.texture_homogeneity_word or "").lower()
    said_h = homogeneity_mentions(masked)
    if homo in ("homogeneous", "heterogeneous") and said_h - {homo}:
        tex_ok = False
        issues.append(f"texture: caption contradicts measured '{homo}'")
    res["texture_ok"] = tex_ok

    # sizes
    size_ok = True
    for num, unit in _SIZE.findall(masked):
        mm = float(num) * (10.0 if unit.lower().startswith(("cm", "centi")) else 1.0)
        if item.longest_diameter_mm is None:
            size_ok = False
            issues.append("size in mm claimed but no physical size was measured")
            break
        if mm > item.longest_diameter_mm * 1.1 + 0.5:
            size_ok = False
            issues.append(f"size: says {mm:g} mm, longest measured diameter {item.longest_diameter_mm:g} mm")
    res["size_ok"] = size_ok

    res["consistent"] = all(res[c] for c in CHECKS)
    res["issues"] = issues
    return res


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
    rows_in = list(captions.iter_rows(named=True))
    items = [by_key.get((r["record_id"], str(r["roi_id"]))) for r in rows_in]
    out = []
    phi_matcher = phi_values if hasattr(phi_values, "search") else matcher_for(phi_values)  # once per batch
    for row, item in zip(rows_in, items, strict=True):
        res = check_caption(row, item, phi_values=phi_matcher, min_chars=min_chars, max_chars=max_chars)
        out.append({"record_id": row["record_id"], "roi_id": row["roi_id"], "backend": row.get("backend"),
                    "inputs_hash": row.get("inputs_hash"), **res})
    scores: list[dict[str, float] | None] = [None] * len(out)
    if judge is not None:
        todo = [i for i, (r, it) in enumerate(zip(rows_in, items, strict=True)) if it is not None and r["status"] == "ok"]
        got = judge.score([(items[i], rows_in[i]["text"] or "", _facets_of(rows_in[i])) for i in todo])
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


# -- judge ---------------------------------------------------------------------------------------
JUDGE_RUBRIC = (
    "You are grading a description of a medical image region against reference information (the "
    "measured attributes and metadata, which are correct). Score each of the five facets from 0 to 10: "
    "modality (correct imaging modality); organ (correct anatomy/tissue); roi_location (position, size "
    "and shape agree with the measurements); roi_texture (intensity and texture agree with the "
    "measurements); relationship (relations to other structures and the disease context are correct "
    "and grounded). 10 = fully correct and specific, 5 = partly correct or vague, 0 = wrong or missing. "
    'Reply with ONLY a JSON object: {"modality": n, "organ": n, "roi_location": n, "roi_texture": n, '
    '"relationship": n}.'
)


def parse_scores(text: str) -> dict[str, float] | None:
    from medtrinity_assets.captioning.prompt import _json_objects

    for obj, _, _ in _json_objects(text or ""):
        try:
            scores = {k: float(obj[k]) for k in FACETS}
        except (KeyError, TypeError, ValueError):
            continue
        if all(0.0 <= v <= 10.0 for v in scores.values()):
            return scores
    return None


class Judge:
    """An MLLM judge on any OpenAI-compatible endpoint (the same client as the captioner)."""

    def __init__(self, client: Any, *, temperature: float = 0.0, max_tokens: int = 256) -> None:
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens

    def score(self, items: list[tuple[CaptionInput, str, dict[str, Any]]]) -> list[dict[str, float] | None]:
        return run_sync(self.ascore(items))

    async def ascore(self, items: list[tuple[CaptionInput, str, dict[str, Any]]]) -> list[dict[str, float] | None]:
        import asyncio

        async with self.client.session():
            return list(await asyncio.gather(*(self._one(*it) for it in items)))

    async def _one(self, item: CaptionInput, text: str, facets: dict[str, Any]) -> dict[str, float] | None:
        from medtrinity_assets.captioning.backends.openai_compatible import ChatRequestError

        user = (
            "Reference information:\n" + build_reference_text(item)
            + "\n\nDescription to grade:\n" + text
            + "\n\nFacets as given:\n" + json.dumps(facets, ensure_ascii=False)
        )
        messages = [{"role": "system", "content": JUDGE_RUBRIC}, {"role": "user", "content": user}]
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        try:
            reply = await self.client.chat(messages, **params)
            scores = parse_scores(reply)
            if scores is None:
                reply = await self.client.chat(
                    [*messages, {"role": "assistant", "content": reply},
                     {"role": "user", "content": "Return ONLY the JSON object of five scores from 0 to 10."}],
                    **params,
                )
                scores = parse_scores(reply)
        except ChatRequestError:
            return None
        return scores
