"""Scrub and detect PHI in free text with one pattern set and a source's identifying values."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from medtrinity_assets.privacy.identifiers import IdentifierMatcher, matcher_for
from medtrinity_assets.privacy.patterns import JOINING, PHI_GROUP, PHI_PATTERNS

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
MAX_PASSES = 4


class ValueMatcher(Protocol):
    """Anything that finds a source's identifying values in text (a regex trie or salted hashes)."""

    def search(self, text: str | None) -> bool: ...


def _matcher(identifiers: Iterable[str] | ValueMatcher | None) -> ValueMatcher | None:
    if identifiers is None:
        return None
    if hasattr(identifiers, "search"):
        return identifiers  # type: ignore[return-value]
    return matcher_for(identifiers)  # type: ignore[arg-type]


def _tidy(text: str) -> str:
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip(" ,;:-_/")


def scrub_text(text: str | None, identifiers: Iterable[str] | IdentifierMatcher | None = ()) -> str:
    """``text`` without the source's identifying values and anything :data:`PHI_PATTERNS` matches.

    Removal can join pieces into a new match ("12/Mr X/2021"), so passes repeat until nothing
    changes: the result is a fixed point, which :func:`find_phi` never flags.
    """
    if not text:
        return ""
    matcher = _matcher(identifiers)
    out = _tidy(str(text))
    for _ in range(MAX_PASSES):
        before = out
        if isinstance(matcher, IdentifierMatcher):
            out = matcher.sub(out)
        for _kind, rx in PHI_PATTERNS:
            out = rx.sub(" ", out)
        out = _tidy(out)
        if out == before:
            break
    return out


def find_phi(text: str | None, identifiers: Iterable[str] | ValueMatcher | None = ()) -> list[str]:
    """Kinds of PHI found in ``text`` (``listed_value`` for a source's identifying value); never
    the values themselves."""
    if not text:
        return []
    found = set().union(*map(_kinds, _pieces(text)))
    matcher = _matcher(identifiers)
    if matcher is not None and matcher.search(text):
        found.add("listed_value")
    return sorted(found)


_PIECE_END = re.compile(r"([.;!?])(\s+)")
_LAST_WORD = re.compile(r"\w+\Z")
_JOINING = tuple(JOINING)
_LONGEST_JOINING = max(map(len, JOINING))
_KINDS: dict[str, frozenset[str]] = {}  # the pattern kinds of recent pieces


def _pieces(text: str) -> list[str]:
    """``text`` cut at the ends of its sentences and clauses that no PHI pattern's match goes on past:
    not after a word that ends in a :data:`~medtrinity_assets.privacy.patterns.JOINING` word ("Dr.",
    "12jan.") nor after one that is not ASCII (a case-insensitive match folds "ſ" to "s"). A pattern
    matches the text where it matches one of its pieces. Each piece keeps its end mark, not the
    whitespace after it."""
    if not text.isascii():
        return _pieces_by_split(text)
    out, start = [], 0
    for m in _PIECE_END.finditer(text):
        k = m.start()
        # a word that ends in a joining word ends in its letters (no regex needed for ASCII)
        if text[k] == "." and text[max(0, k - _LONGEST_JOINING) : k].lower().endswith(_JOINING):
            continue
        out.append(text[start : k + 1])
        start = m.end()
    out.append(text[start:])
    return out


def _pieces_by_split(text: str) -> list[str]:
    """:func:`_pieces` for any text: cut at every end, the cuts after a joining word undone."""
    cut = _PIECE_END.split(text)  # piece, its end mark, the whitespace after it, the next piece ...
    out = [cut[0] + cut[1]] if len(cut) > 1 else [cut[0]]
    for k in range(3, len(cut), 3):
        last, piece = out[-1], cut[k] + (cut[k + 1] if k + 1 < len(cut) else "")
        if cut[k - 2] == "." and _joins(last):
            out[-1] = last + cut[k - 1] + piece  # a match may go on past this end: not cut
        else:
            out.append(piece)
    return out


def _joins(before: str) -> bool:
    """Whether a match may go on past the ". " that ends ``before`` (the word before the period)."""
    word = _LAST_WORD.search(before, max(0, len(before) - 31), len(before) - 1)
    if word is None:  # a period after a mark or a space
        return False
    w = word.group()
    return not w.isascii() or w.lower().endswith(_JOINING)


def _kinds(piece: str) -> frozenset[str]:
    """The kinds of the PHI patterns that match ``piece`` (memoised: descriptions repeat their sentences)."""
    found = _KINDS.get(piece)
    if found is None:
        if len(_KINDS) >= 8192:
            _KINDS.clear()
        found = _KINDS[piece] = frozenset(PHI_PATTERNS[k][0] for k in PHI_GROUP.matching(piece))
    return found


def scrub_reason(reason: str | None, identifiers: IdentifierMatcher | None = None) -> str | None:
    """A quarantine reason with the source's identifying values removed. Reasons are the
    pipeline's own words plus a decoder's message: their numbers (sizes, limits) are kept."""
    if reason is None or identifiers is None:
        return reason
    return _SPACES.sub(" ", identifiers.sub(reason)).strip()
