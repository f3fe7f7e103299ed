"""Claim readers: what a description says about its image, read back out of its own words.

The quality checks (:mod:`medtrinity_assets.captioning.quality`) compare these claims with the
measured ROI. Readers here only read: image-position phrases, patient-side and orientation
words, sizes, and the facets of a caption row; they also remove what is not a claim about this
image (cited knowledge passages, known label names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from medtrinity_assets.captioning.inputs import CaptionInput
from medtrinity_assets.captioning.prompt import FACETS
from medtrinity_assets.captioning.wording import label_text
from medtrinity_assets.core.regex_gate import Gated, GateGroup, gated

_FRAME = r"(?:image|frame|picture|field of view|view|slice)"
_H = r"(left|right|central|centre|center|middle)"
_V = r"(upper|middle|lower|top|bottom|central|centre|center)"
_PART = r"(?:third|half|side|part|portion|region|aspect|area)"
_POSITION_PATTERNS: list[tuple[Gated, str]] = [  # gated: most texts name none of their words
    (gated(r"\bhorizontal(?:ly)?\b[^.;,]{0,40}?\b" + _H + r"\b", re.I), "h"),
    (gated(r"\b" + _H + r"\s+third\s+horizontally\b", re.I), "h"),
    (gated(r"\bvertical(?:ly)?\b[^.;,]{0,40}?\b" + _V + r"\b", re.I), "v"),
    (gated(r"\b" + _V + r"\s+third\s+vertically\b", re.I), "v"),
    (gated(r"\b(upper|lower|top|bottom)[- ](left|right)\s+(?:quadrant|corner|part|region|area)\s+of\s+the\s+"
           + _FRAME, re.I), "vh"),
    (gated(r"\b(left|right)\s+" + _PART + r"\s+of\s+the\s+" + _FRAME, re.I), "h"),
    (gated(r"\b(upper|lower|top|bottom)\s+" + _PART + r"\s+of\s+the\s+" + _FRAME, re.I), "v"),
    (gated(r"\b(central|centre|center|middle)\s+" + _PART + r"\s+of\s+the\s+" + _FRAME, re.I), "c"),
    (gated(r"\b(?:image|frame)[- ](left|right)\b", re.I), "h"),
]
_POSITIONS = GateGroup(rx for rx, _ in _POSITION_PATTERNS)
_H_NORM = {"left": "left", "right": "right", "central": "centre", "centre": "centre", "center": "centre",
           "middle": "centre"}
_V_NORM = {"upper": "upper", "top": "upper", "lower": "lower", "bottom": "lower", "middle": "middle",
           "central": "middle", "centre": "middle", "center": "middle"}
_RELATIONAL = gated(r"\b(left|right)(?:\s+of|ward)\b", re.I)
_IMAGE = gated(r"\bimage\b", re.I)
_SIDE = gated(r"\b(left|right)\b", re.I)
_AP = gated(r"\b(anterior|posterior|superior|inferior)\b", re.I)
_SIZE = gated(r"(?<![\w.])(\d+(?:\.\d+)?)\s?(mm|millimet(?:re|er)s?|cm|centimet(?:re|er)s?)\b", re.I)

_CITE = gated(r"\[(?:chunk\s*)?([\w.:\-]+)\]")
_QUOTE_CITE = gated(r"[\"“]([^\"”]*)[\"”]\s*,?\s*\[(?:chunk\s*)?([\w.:\-]+)\]")
_SENTENCE = re.compile(r"([.!?])(\s+)")  # a sentence's end and the whitespace after it
_HEXID = re.compile(r"[0-9a-f]{8,}")


def split_after(rx: re.Pattern, text: str) -> list[str]:
    """``text`` cut where ``rx`` matches, each piece keeping its first group (the end mark), the second
    (the whitespace after it) left out: what splitting at ``(?<=mark)whitespace`` gives, found without a
    lookbehind tried at every character (``rx``: ``(mark)(whitespace)``)."""
    parts = rx.split(text)
    return [parts[k] + parts[k + 1] for k in range(0, len(parts) - 1, 3)] + [parts[-1]]


def claim_sentences(text: str, chunk_ids: Iterable[str]) -> list[str]:
    """The sentences of ``text`` that make claims about the image, in order: without quoted passages
    cited by chunk id, then without any sentence that cites a chunk id.

    Without known chunk ids, any hex-like id of 8+ characters in brackets counts as a citation.
    """
    if "[" not in text:  # a citation needs one
        return split_after(_SENTENCE, text)
    ids = {c for c in chunk_ids if c}

    def is_cite(cid: str) -> bool:
        return cid in ids if ids else bool(_HEXID.fullmatch(cid))

    text = _QUOTE_CITE.sub(lambda m: " " if is_cite(m.group(2)) else m.group(0), text)
    return [s for s in split_after(_SENTENCE, text)
            if "[" not in s or not any(is_cite(m.group(1)) for m in _CITE.finditer(s))]


@lru_cache(maxsize=4096)
def _phrase_re(phrase: str) -> Gated:
    return gated(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", re.I)


def mask_phrases(text: str, phrases: Iterable[str]) -> str:
    """``text`` with every whole-word occurrence of ``phrases`` blanked out, longest first."""
    low = text.lower() if text.isascii() else None
    for p in sorted({p for p in phrases if p and len(p) >= 2}, key=len, reverse=True):
        if low is not None and p.isascii():
            text, low = _blank(text, low, p.lower())
        else:
            text = _phrase_re(p).sub(" ", text)
            low = text.lower() if text.isascii() else None
    return text


_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _blank(text: str, low: str, phrase: str) -> tuple[str, str]:
    """What ``_phrase_re(phrase).sub(" ", text)`` gives on ASCII ``text`` (``low``: lower-cased), found
    without the expression, with its lower-cased form: each occurrence of the lower-case ``phrase``, left
    to right, not next to a word character, becomes a space."""
    k, n, cuts = low.find(phrase), len(phrase), []
    while k >= 0:
        if (k == 0 or low[k - 1] not in _WORD_CHARS) and (k + n == len(low) or low[k + n] not in _WORD_CHARS):
            cuts.append(k)
            k = low.find(phrase, k + n)
        else:
            k = low.find(phrase, k + 1)
    if not cuts:
        return text, low
    starts, ends = [0, *(k + n for k in cuts)], [*cuts, len(text)]
    return (" ".join(text[a:b] for a, b in zip(starts, ends, strict=True)),
            " ".join(low[a:b] for a, b in zip(starts, ends, strict=True)))


def known_phrases(item: CaptionInput) -> list[str]:
    """Names the caption may quote without claiming anything: labels, related ROIs, terms."""
    raw = [item.label, item.inside_label, *(r.get("other") for r in item.relations),
           *(r.get("other_label") for r in item.relations), *item.terms]
    out: list[str] = []
    for p in raw:
        if p:
            out.extend({str(p), label_text(p)})
    return out


def position_claims(text: str) -> tuple[list[tuple[str, str]], str]:
    """(claims as (axis, value), text with the claims removed)."""
    found, rest = indexed_position_claims(text)
    return [(axis, value) for _, axis, value in found], rest


def indexed_position_claims(text: str) -> tuple[list[tuple[int, str, str]], str]:
    """(claims as (index of the expression that found it, axis, value), text with the claims removed):
    expression by expression, each along the text."""
    claims: list[tuple[int, str, str]] = []

    def taker(k: int) -> Callable[[re.Match], str]:
        axis = _POSITION_PATTERNS[k][1]

        def take(m: re.Match) -> str:
            if axis == "vh":
                claims.append((k, "v", _V_NORM[m.group(1).lower()]))
                claims.append((k, "h", _H_NORM[m.group(2).lower()]))
            elif axis == "h":
                claims.append((k, "h", _H_NORM[m.group(1).lower()]))
            elif axis == "v":
                claims.append((k, "v", _V_NORM[m.group(1).lower()]))
            else:
                claims.append((k, "c", "centre"))
            return " "
        return take

    return claims, _blank_each(_POSITIONS, text, taker)


def _blank_each(group: GateGroup, text: str, repl: Callable[[int], Any]) -> str:
    """``text`` with each member's matches replaced in turn (member ``k``'s by ``repl(k)``), trying only
    the members that may match the text as it then is: a match blanked out may leave another member's
    words ("the view" out of "viewimage-left" leaves "image-left")."""
    live = group.live(text)
    for k, rx in enumerate(group.members):
        if k in live:
            text, before = rx.sub(repl(k), text), text
            if text is not before and text != before:
                live = group.live(text)
    return text


def horizontal_third(word: str | None) -> str | None:
    """A horizontal-third word in the claims' terms (``left``/``centre``/``right``), or None."""
    return _H_NORM.get((word or "").lower())


def vertical_third(word: str | None) -> str | None:
    """A vertical-third word in the claims' terms (``upper``/``middle``/``lower``), or None."""
    return _V_NORM.get((word or "").lower())


def without_relational(text: str) -> str:
    """``text`` without its relational ``left of``/``rightward`` uses (sides in the image, not the patient)."""
    return _RELATIONAL.sub(" ", text)


def names_image(text: str) -> bool:
    """Whether ``text`` speaks of the image (then "left of" is a side in it)."""
    return bool(_IMAGE.search(text))


def side_claims(text: str) -> set[str]:
    """Patient sides (``left``/``right``) named in ``text``."""
    return {m.lower() for m in _SIDE.findall(text)}


def orientation_claims(text: str) -> set[str]:
    """Anterior/posterior/superior/inferior words named in ``text``."""
    return {m.lower() for m in _AP.findall(text)}


def size_claims_mm(text: str) -> list[float]:
    """Every size stated in mm or cm, in mm, in order."""
    return [
        float(num) * (10.0 if unit.lower().startswith(("cm", "centi")) else 1.0)
        for num, unit in _SIZE.findall(text)
    ]


def caption_facets(row: dict[str, Any]) -> dict[str, str | None]:
    """The five facets of a caption row: its ``facet_<k>`` columns, else its ``facets`` JSON."""
    facets: dict[str, str | None] = {k: row.get(f"facet_{k}") for k in FACETS}
    if not any(facets.values()) and row.get("facets"):
        try:
            parsed = json.loads(row["facets"])
            facets = {k: parsed.get(k) for k in FACETS}
        except (json.JSONDecodeError, AttributeError):
            pass
    return facets


_AREA = gated(r"\b(?:covers?|covering|occupies|occupying)\s+(less than\s+)?(\d+(?:\.\d+)?)\s?%\s+of\s+the\s+image",
              re.I)
_SPAN = gated(r"\bspans?\s+(\d+(?:\.\d+)?)\s?-\s?(\d+(?:\.\d+)?)\s?%\s+of\s+the\s+image\s+width\s+and\s+"
              r"(\d+(?:\.\d+)?)\s?-\s?(\d+(?:\.\d+)?)\s?%\s+of\s+its\s+height", re.I)
_NESTED = gated(r"\b(lies|lying|located|situated|sits)\s+within\s+the\s+([a-z][a-z \-]{1,60}?)"
                r"(?=\s+in the image|[.;,:)]|$)|\b(encloses|enclosing|surrounds)\s+(?:the\s+|another\s+)?"
                r"([a-z][a-z \-]{1,60}?)(?=\s+region\b|\s+in the image|[.;,:)]|$)", re.I)
_BORDERED = gated(r"\b(bordered by|borders|bordering)\s+(?:the\s+)?([a-z][a-z \-]{1,60}?)"
                  r"(?=\s+in the image|[.;,:)]|$)", re.I)
_DIRECTION = gated(r"\b(?:lies|lying|located|situated|sits|sitting|positioned)\s+(?:(?:to\s+the\s+)?(left|right)\s+of|"
                   r"(above|below)(?:\s+and\s+(?:to\s+the\s+)?(left|right)\s+of)?)\s+(?:the\s+|another\s+)?"
                   r"([a-z][a-z \-]{1,60}?)(?=\s+region\b|\s+in the image|[.;,:)]|$)", re.I)
_ONE_OF = gated(r"\bone of (two|several) regions labell?ed\s+(?:as\s+)?([a-z][a-z0-9 \-]{0,60}?)"
                r"(?=\s+in (?:the|this) image|[.;,:)]|$)", re.I)
_OUTLINE = gated(r"\b(round|oval|irregular|lobulated|elongated|circular|spiculated)\s+(?:outline|shape|contour|margin)",
                 re.I)
_WHOLE = gated(r"\bno region was locali[sz]ed\b|\bcovers the (?:whole|entire) image\b|"
               r"\bwhole image is the region of interest\b", re.I)
_PIXELS = gated(r"\b(\d+)\s*(?:by|x)\s*(\d+)[- ]pixels?\b", re.I)
_RELATIONS = GateGroup([_NESTED, _BORDERED, _DIRECTION, _ONE_OF])
_MEASURES = GateGroup([_AREA, _SPAN, _SIZE, _PIXELS])
_NUMBER = re.compile(r"(?<![\w.\-/])(\d+(?:\.\d+)?)(?![\w])")


def area_claims(text: str) -> list[tuple[bool, float]]:
    """``(is an upper bound, percent)`` of every "covers X% of the image" claim."""
    return [(bool(m.group(1)), float(m.group(2))) for m in _AREA.finditer(text)]


def span_claims(text: str) -> list[tuple[float, float, float, float]]:
    """``(x0, x1, y0, y1)`` in percent of every bounding-box span claim."""
    return [tuple(float(g) for g in m.groups()) for m in _SPAN.finditer(text)]  # type: ignore[misc]


def indexed_nesting_claims(text: str) -> list[tuple[int, str, str]]:
    """``(reader, "lies within" | "encloses" | "bordered by" | "borders" | a direction | "one of two" |
    "one of several", other label)`` of every containment, bordering and direction ("lies above and
    left of the spleen in the image") claim, and of every claim that the region is one of several with
    its label ("one of two regions labelled white matter": the label is then its own); ``reader``: the
    index of the reader that found it (containment, bordering, direction, label count), reader by
    reader, each along the text."""
    out: list[tuple[int, str, str]] = []
    live = _RELATIONS.live(text)
    if not live:
        return out
    for m in _NESTED.finditer(text) if 0 in live else ():
        if m.group(2):
            out.append((0, "lies within", m.group(2).strip().lower()))
        else:
            out.append((0, "encloses", m.group(4).strip().lower()))
    for m in _BORDERED.finditer(text) if 1 in live else ():
        relation = "bordered by" if m.group(1).lower().endswith("by") else "borders"
        out.append((1, relation, m.group(2).strip().lower()))
    for m in _DIRECTION.finditer(text) if 2 in live else ():
        side = f"{(m.group(1) or m.group(3)).lower()} of" if m.group(1) or m.group(3) else ""
        level = (m.group(2) or "").lower()
        out.append((2, f"{level} and {side}" if level and side else level or side, m.group(4).strip().lower()))
    out += [(3, f"one of {m.group(1).lower()}", m.group(2).strip().lower()) for m in _ONE_OF.finditer(text)] \
        if 3 in live else []
    return out


def outline_claims(text: str) -> list[str]:
    """Shape words said of an outline."""
    return [m.group(1).lower() for m in _OUTLINE.finditer(text)]


def says_whole_image(text: str) -> bool:
    """Whether the text says that no region was localised (the whole image is the region)."""
    return bool(_WHOLE.search(text))


def pixel_size_claims(text: str) -> list[tuple[int, int]]:
    """``(width, height)`` of every "33 by 41 pixels" claim about the image's size."""
    return [(int(w), int(h)) for w, h in _PIXELS.findall(text)]


def measures(text: str, masked: str) -> tuple[list, list, list[float], list[tuple[int, int]], str]:
    """``(area claims, span claims, sizes in mm, pixel sizes, text without them)`` of ``text``, the sizes
    read off ``masked`` (``text`` with its known names blanked out): :func:`area_claims`,
    :func:`span_claims`, :func:`size_claims_mm`, :func:`pixel_size_claims` and :func:`without_claims`,
    their expressions' words looked for once."""
    live = _MEASURES.live(text)
    if not live:
        return [], [], [], [], text
    areas, spans = area_claims(text) if 0 in live else [], span_claims(text) if 1 in live else []
    rest = without_claims(text)  # (the group's answer for ``text`` is remembered)
    masked_live = live if masked is text else _MEASURES.live(masked)
    return (areas, spans, size_claims_mm(masked) if 2 in masked_live else [],
            pixel_size_claims(masked) if 3 in masked_live else [], rest)


def without_claims(text: str) -> str:
    """``text`` without its area, span, size and pixel-size claims (their numbers are checked on
    their own)."""
    return _blank_each(_MEASURES, text, lambda _: " ")


def numbers_in(text: str) -> list[str]:
    """Every stand-alone number in ``text`` (not part of a word such as T1 or an id)."""
    return _NUMBER.findall(text)


def quoted_passages(text: str) -> list[tuple[str, str]]:
    """``(sentence, chunk id)`` of every quoted and cited passage sentence."""
    return [(m.group(1), m.group(2)) for m in _QUOTE_CITE.finditer(text)]
