"""A description's claims about its image, read piece by piece, each distinct piece once.

Descriptions repeat their sentences: a captioner writes the same modality, organ, texture and
relation sentences for many regions (6,447 descriptions of a built shard hold 45,129 sentences,
6,419 of them distinct). None of the claim readers (:mod:`~medtrinity_assets.captioning.claims`,
:mod:`~medtrinity_assets.captioning.wording`, the vocabulary's and the ontology's words) reads
across the end of a sentence or of a clause ("; "), so a description's claims are those of its
pieces (sentences cut at their clauses), in order, and a piece is read once per process for every
context that changes its reading:

- the known names it contains (labels, related regions, terms: blanked out before reading, they
  are names, not claims);
- the measured intensity word, if it contains it (not an anatomy or finding word);
- the recorded modality (whose techniques are looked for).

A piece's measures (area, box span, sizes in mm or pixels) are read off it, and every other claim
off the piece without them, memoised apart (without the modality): the numbers make most pieces
that hold a measure distinct, their words do not. Whether "left of" is the image's or the
patient's depends on whether the description speaks of the image anywhere, so a piece's patient
sides are kept both ways and chosen per description.

:func:`whole_text` switches the memo off and reads every description as one piece: the reference
the piece-by-piece reading is tested against. The two differ only for a claim that spans two
pieces (an ontology phrase, "horizontally! Left"), which is not one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

from medtrinity_assets.captioning import claims as cl
from medtrinity_assets.captioning.wording import homogeneity_mentions, intensity_polarities
from medtrinity_assets.core import ontology
from medtrinity_assets.core.vocabulary import modality_by_key, modality_mentions, regions_in

_CLAUSE = re.compile(r"(;)(\s+)")  # a clause's end and the whitespace after it
_ACROSS = re.compile(r"[.;!?]\s")  # a piece's end inside a name ("St. Mary's")
MEMO_SIZE = 8192  # sentences read per process before the memo starts again (a few MB)


@dataclass(frozen=True, slots=True)
class Said:
    """What a text claims about its image, as the quality checks compare it (every field empty: no
    claim of that kind). ``filled`` names the fields that are not empty (a description's sentences
    are merged field by field, and most sentences fill few).

    ``positions`` and ``relations`` carry the index of the reader that found them first, so that
    sentences merge into the order a reading of the whole text gives (reader by reader)."""

    positions: tuple[tuple[int, str, str], ...] = ()  # (reader, axis, value)
    sides: frozenset[str] = frozenset()  # patient sides, "left of" counted as the patient's
    sides_in_image: frozenset[str] = frozenset()  # the same, "left of" read as the image's
    orientations: frozenset[str] = frozenset()
    orientations_in_image: frozenset[str] = frozenset()
    names_image: bool = False
    modalities: frozenset[str] = frozenset()
    techniques: tuple[str, ...] = ()
    regions: frozenset[str] = frozenset()
    polarities: frozenset[int] = frozenset()
    homogeneity: frozenset[str] = frozenset()
    sizes_mm: tuple[float, ...] = ()
    pixel_sizes: tuple[tuple[int, int], ...] = ()
    whole_image: bool = False
    outlines: tuple[str, ...] = ()
    areas: tuple[tuple[bool, float], ...] = ()
    spans: tuple[tuple[float, float, float, float], ...] = ()
    relations: tuple[tuple[int, str, str], ...] = ()  # (reader, relation, other label)
    anatomy: frozenset[str] = frozenset()
    findings: tuple[ontology.Concept, ...] = ()
    numbers: frozenset[str] = frozenset()
    filled: tuple[str, ...] = ()

    def patient_sides(self) -> frozenset[str]:
        return self.sides_in_image if self.names_image else self.sides

    def patient_orientations(self) -> frozenset[str]:
        return self.orientations_in_image if self.names_image else self.orientations

    def position_claims(self) -> list[tuple[str, str]]:
        return [(axis, value) for _, axis, value in self.positions]

    def relation_claims(self) -> list[tuple[str, str]]:
        return [(relation, other) for _, relation, other in self.relations]


def read_said(sentences: list[str], known: Iterable[str], intensity_word: str | None, modality: str | None) -> Said:
    """The claims of a text given as its ``sentences`` (a description without its cited passages:
    :func:`~medtrinity_assets.captioning.claims.claim_sentences`), its ``known`` names blanked out;
    ``intensity_word``: the region's measured one; ``modality``: the vocabulary key whose techniques
    are looked for (None: none)."""
    phrases = sorted({p for p in known if p and len(p) >= 2})
    if _WHOLE or any(map(_ACROSS.search, phrases)):  # a name that no single piece could hold: read whole
        return _read(" ".join(sentences), tuple(phrases), intensity_word or "", modality)
    pieces = [c for s in sentences for c in (cl.split_after(_CLAUSE, s) if ";" in s else (s,))]
    names: list[tuple[str, str | None]] = []  # (name, lower-cased) or (name, None): not ASCII, may be anywhere
    word = intensity_word or ""
    if phrases or word:  # a name (or the word) in no piece is blanked out of none
        low = " ".join(pieces).lower()
        names = [(p, p.lower() if p.isascii() else None) for p in phrases]
        names = [(p, pl) for p, pl in names if pl is None or not low.isascii() or pl in low]
        word = word if not (word.isascii() and low.isascii()) or word.lower() in low else ""
    word_low = word.lower() if word.isascii() else None
    said = [_sentence(s, names, word, word_low, modality) for s in pieces]
    return said[0] if len(said) == 1 else _merged(said, modality)


def _sentence(s: str, names: list[tuple[str, str | None]], word: str, word_low: str | None,
              modality: str | None) -> Said:
    """A sentence's claims, memoised under the context that changes them (see the module docstring):
    the ``names`` in it (each with its lower-cased form, None where it is not ASCII) and the
    intensity ``word`` if it is in it."""
    if names or word:
        if s.isascii():
            low = s.lower()
            present = tuple(p for p, pl in names if pl is None or pl in low)
            word = word if word_low is None or word_low in low else ""
        else:
            present = tuple(p for p, _ in names)
    else:
        present = ()
    key = (s, present, word, modality)
    found = _memo.get(key)
    return found if found is not None else _remember(key, _read(s, present, word, modality))


def _read(text: str, phrases: tuple[str, ...], intensity_word: str, modality: str | None) -> Said:
    """Every reader over one piece of text: the measures (area, box span, sizes: numbers a region's
    description gives it alone, checked on their own) off the piece, every other claim off the piece
    without them (memoised: "spans 9-27% of the image width and 28-45% of its height" makes every
    piece distinct, its words do not), the modality's techniques off that too."""
    areas, spans, sizes, pixel_sizes, rest = cl.measures(text, cl.mask_phrases(text, phrases))
    words, masked = (_read_words(rest, phrases, intensity_word) if _WHOLE
                     else _words(rest, phrases, intensity_word))
    entry = modality_by_key(modality) if modality else None
    found = dict(names_image=cl.names_image(text), sizes_mm=tuple(sizes), pixel_sizes=tuple(pixel_sizes),
                 areas=tuple(areas), spans=tuple(spans),
                 techniques=tuple(entry.techniques_in(masked)) if entry is not None else ())
    filled = {**{name: value for name, value in found.items() if value},
              **{name: getattr(words, name) for name in words.filled}}
    return Said(**filled, filled=tuple(filled))


def _words(rest: str, phrases: tuple[str, ...], intensity_word: str) -> tuple[Said, str]:
    """:func:`_read_words`, memoised (the measures are out of ``rest``: many pieces share it)."""
    key = ("words", rest, phrases, intensity_word)
    found = _memo.get(key)
    return found if found is not None else _remember(key, _read_words(rest, phrases, intensity_word))  # type: ignore[return-value]


def _remember(key: tuple, found: Any) -> Any:
    """``found`` kept under ``key`` (the memo starts again once it holds :data:`MEMO_SIZE` readings)."""
    if len(_memo) >= MEMO_SIZE:
        _memo.clear()
    _memo[key] = found
    return found


def _read_words(rest: str, phrases: tuple[str, ...], intensity_word: str) -> tuple[Said, str]:
    """The claims of a text without its measures (image positions, patient sides, modality words,
    body regions, texture words, outline words, relations, anatomy and findings, and every other
    number), and the text with its known names blanked out."""
    masked = cl.mask_phrases(rest, phrases)
    positions, unplaced = cl.indexed_position_claims(masked)
    unrelational = cl.without_relational(unplaced)
    termed = cl.mask_phrases(masked, [intensity_word])
    found = dict(
        positions=tuple(positions),
        sides=frozenset(cl.side_claims(unplaced)), sides_in_image=frozenset(cl.side_claims(unrelational)),
        orientations=frozenset(cl.orientation_claims(unplaced)),
        orientations_in_image=frozenset(cl.orientation_claims(unrelational)),
        modalities=frozenset(modality_mentions(masked)),
        regions=frozenset(regions_in(masked)),
        polarities=frozenset(intensity_polarities(masked)), homogeneity=frozenset(homogeneity_mentions(masked)),
        whole_image=cl.says_whole_image(rest), outlines=tuple(cl.outline_claims(rest)),
        relations=tuple(cl.indexed_nesting_claims(rest)),
        anatomy=frozenset(ontology.anatomy_words(termed)), findings=tuple(ontology.finding_concepts(termed)),
        numbers=frozenset(cl.numbers_in(masked)),
    )
    filled = {name: value for name, value in found.items() if value}
    return Said(**filled, filled=tuple(filled)), masked


def _merged(parts: list[Said], modality: str | None) -> Said:
    """The claims of consecutive sentences as one text's: lists in the order one reading of the whole
    text gives (reader by reader, then along the text), sets joined."""
    found: dict[str, list] = {}
    for p in parts:
        for name in p.filled:
            found.setdefault(name, []).append(getattr(p, name))
    merged = {name: values[0] if len(values) == 1 else _MERGE[name](values) for name, values in found.items()}
    if len(found.get("techniques", ())) > 1:
        merged["techniques"] = _techniques(found["techniques"], modality)
    return Said(**merged, filled=tuple(merged))


def _joined(values: list) -> frozenset:
    return frozenset().union(*values)


def _chained(values: list) -> tuple:
    return tuple(chain.from_iterable(values))


def _by_reader(values: list) -> tuple:
    return tuple(sorted(chain.from_iterable(values), key=_reader))


def _reader(claim: tuple) -> int:
    return claim[0]


_MERGE = {
    **dict.fromkeys(("sides", "sides_in_image", "orientations", "orientations_in_image", "modalities", "regions",
                     "polarities", "homogeneity", "anatomy", "numbers"), _joined),
    **dict.fromkeys(("sizes_mm", "pixel_sizes", "outlines", "areas", "spans", "techniques"), _chained),
    **dict.fromkeys(("names_image", "whole_image"), any),
    **dict.fromkeys(("positions", "relations"), _by_reader),
    "findings": lambda values: tuple(dict.fromkeys(chain.from_iterable(values))),  # each concept once
}


def _techniques(values: list[tuple[str, ...]], modality: str | None) -> tuple[str, ...]:
    """The techniques named in any sentence, in the vocabulary's order (as one reading gives them)."""
    said = set(chain.from_iterable(values))
    entry = modality_by_key(modality or "")
    order = {name: k for k, (name, _) in enumerate(entry.techniques)} if entry is not None else {}
    return tuple(sorted(said, key=lambda t: (order.get(t, len(order)), t)))


_memo: dict[tuple, Said] = {}
_WHOLE: list[bool] = []  # non-empty inside whole_text()


@contextmanager
def whole_text() -> Iterator[None]:
    """Read every description as one piece, without the memo (the reference; see the module docstring)."""
    _WHOLE.append(True)
    try:
        yield
    finally:
        _WHOLE.pop()
