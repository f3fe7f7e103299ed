"""Literal gates for regular expressions: skip a scan that cannot match, and start the scan only
where a match can start.

A pattern's *needles* are lower-case strings one of which every match contains, read off the
parsed pattern (its literals, ``\\d``, alternations, optional and repeated groups), with every digit
written as ``0``; a pattern may have several needle sets, each of which every match meets. A needle
next to ``\\b`` is looked for in the text with its non-word characters as spaces (``" ct "``: "CT" as
a whole word). On ASCII text (where ``str.lower`` folds exactly what a case-insensitive match
folds) a pattern without its needles in the text cannot match, so ``search``, ``sub``, ``findall``
... give their no-match answer without scanning.

When every match *starts* with one of a few strings (``\\b(?:left|right)\\b``), the matches are also
found by trying the expression only where those strings occur (``Pattern.match`` at each place, in
order, as a scan would try them), instead of at every character. Non-ASCII text and a pattern
without needles run the expression as it is: a gate never changes a result, it only saves
the scan. The quality checks run about a hundred expressions over each description, most of which
name words a given description never uses (a date, "quadrant", "scintigraphy").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from re import _constants as sre
from re import _parser
from typing import Any, NamedTuple

_MAX_STRINGS = 64  # alternatives kept for one stretch of literals
_MAX_SETS = 3  # needle sets checked per pattern (every one must be met)
_MAX_STARTS = 48  # places to try a pattern at; with more, the scan runs as it is
_B = "\uffff"  # a word boundary inside a needle (never a literal: non-ASCII literals are unknown)
_ZERO_WIDTH = (sre.AT, sre.ASSERT, sre.ASSERT_NOT)
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0_")  # \w on ASCII text, lower case, digits as 0
_DIGITS = str.maketrans("123456789", "000000000")  # needles and texts write every digit as 0
_WHITESPACE = frozenset(chr(c) for c in range(128) if chr(c).isspace())  # \s on ASCII text
_LOW = {c: ord(chr(c).lower().translate(_DIGITS)) for c in range(128)}
_SPACED = {c: v if chr(v) in _WORD_CHARS else 32 for c, v in _LOW.items()}  # non-word characters: spaces


class _Info(NamedTuple):
    """What a node of a parsed pattern tells (None: too many or unknown)."""

    exact: set[str] | None  # every string it matches
    sets: list[set[str]]  # needle sets: every match has a needle of each (best first)
    lead: set[str] | None  # strings one of which every match starts with


_NOTHING = _Info(None, [], None)


def _lit(code: int) -> str | None:
    """An ASCII literal as it stands in a needle, or None (other literals are not followed)."""
    return chr(code).lower().translate(_DIGITS) if code < 128 else None


def _chars(items: list) -> set[str] | None:
    """What a class of ASCII literals (or ``\\d``) matches, or None."""
    out = set()
    for op, av in items:
        if op is sre.CATEGORY and av in (sre.CATEGORY_DIGIT, sre.CATEGORY_UNI_DIGIT):
            out.add("0")  # on ASCII text \d is [0-9]
        elif op is sre.CATEGORY and av in (sre.CATEGORY_SPACE, sre.CATEGORY_UNI_SPACE):
            out.update(_WHITESPACE)
        elif op is sre.LITERAL and av < 128:
            out.add(_lit(av))
        else:
            return None
    return out


def _useful(strings: set[str] | None) -> bool:
    return bool(strings) and all(s.strip(_B) for s in strings)  # type: ignore[union-attr]


def _known(exact: set[str] | None) -> _Info:
    return _Info(exact, [exact], exact) if _useful(exact) else _Info(exact, [], None)  # type: ignore[list-item]


def _product(a: set[str] | None, b: set[str] | None) -> set[str] | None:
    if a is None or b is None or len(a) * len(b) > _MAX_STRINGS:
        return None
    return {x + y for x in a for y in b}


def _beginnings(strings: set[str] | None) -> set[str] | None:
    """``strings``, or (when too many) their beginnings: what starts with one starts with the other."""
    for size in (None, 8, 6, 4, 3, 2):
        cut = None if strings is None else {s[:size] for s in strings}
        if cut is None or len(cut) <= _MAX_STRINGS:
            return cut
    return None


def _power(strings: set[str], k: int) -> set[str] | None:
    """Every concatenation of ``k`` of ``strings`` (None when too many)."""
    out: set[str] | None = {""}
    for _ in range(k):
        out = _product(out, strings)
    return out


def _repeat(low: int, high: int, sub: Any) -> _Info:
    """``sub`` ``low`` to ``high`` times: every string when few, else the first ``low`` in a row."""
    inner = _sequence(sub)
    if inner.exact is not None and high - low <= 4:
        powers = [_power(inner.exact, k) for k in range(low, high + 1)]
        if all(p is not None for p in powers) and sum(map(len, powers)) <= _MAX_STRINGS:  # type: ignore[arg-type]
            union = set().union(*powers)  # type: ignore[arg-type]
            return _known(union) if _useful(union) or not low else _Info(union, inner.sets, inner.lead)
    if low == 0:
        return _NOTHING
    first = _power(inner.exact, low) if inner.exact is not None else None
    if not _useful(first):
        return _Info(None, inner.sets, inner.lead)
    return _Info(None, [first, *inner.sets], first)  # type: ignore[list-item]


def _branch(alternatives: list) -> _Info:
    parts = [_sequence(alt) for alt in alternatives]
    if all(p.exact is not None for p in parts):
        return _known(set().union(*(p.exact for p in parts)))  # type: ignore[misc]
    best = [p.sets[0] if p.sets else None for p in parts]  # one needle set: the best of each alternative
    leads = [p.lead for p in parts]
    return _Info(None, [set().union(*best)] if all(best) else [],  # type: ignore[arg-type]
                 set().union(*leads) if all(lead is not None for lead in leads) else None)  # type: ignore[arg-type]


def _node(op: Any, av: Any) -> _Info:
    if op is sre.LITERAL:
        return _known({_lit(av)} if av < 128 else None)  # type: ignore[arg-type]
    if op is sre.IN:
        return _known(_chars(av))
    if op in _ZERO_WIDTH:
        return _Info({_B} if op is sre.AT and av is sre.AT_BOUNDARY or _not_word(op, av) else {""}, [], None)
    if op is sre.SUBPATTERN or op is sre.ATOMIC_GROUP:
        return _sequence(av[-1] if op is sre.SUBPATTERN else av)
    if op is sre.BRANCH:
        return _branch(av[1])
    if op in _REPEATS:
        return _repeat(*av)
    return _NOTHING


def _not_word(op: Any, av: Any) -> bool:
    """Whether a lookaround asserts that the character there is not a word character (``(?<!\\w)``,
    ``(?![\\w.])``): next to a word character of the needle, that is a word boundary."""
    if op is not sre.ASSERT_NOT or len(av[1]) != 1 or av[1][0][0] is not sre.IN:
        return False
    return any(o is sre.CATEGORY and a in (sre.CATEGORY_WORD, sre.CATEGORY_UNI_WORD) for o, a in av[1][0][1])


def _rank(strings: set[str]) -> tuple[float, int]:
    """Most selective first: the longest shortest needle (a boundary counts as a character, a digit, of
    which texts have many, as half of one), then the fewest needles."""
    return -min(len(n) - n.count("0") / 2 for n in strings), len(strings)


def _sequence(items: Any) -> _Info:
    """A run of nodes: literal stretches are joined (``\\bhorizontal``); every stretch, and every
    needle set of a node that is not one, is a needle set of the run; what the run starts with is its
    first stretch (or that followed by what the first other node starts with)."""
    run, exact_all, sets, lead = {""}, True, [], None
    for op, av in items:
        info = _node(op, av)
        joined = _product(run, info.exact)
        if joined is not None:
            run = joined
            continue
        if exact_all:  # the first node that is not part of the opening stretch
            lead = run if _useful(run) else _product(run, _beginnings(info.lead))
        sets += ([run] if _useful(run) else []) + info.sets
        exact_all, run = False, (info.exact if info.exact is not None else {""})
    if exact_all:
        lead = run if _useful(run) else None
    sets += [run] if _useful(run) else []
    unique = {frozenset(found): found for found in sets}.values()
    return _Info(run if exact_all else None, sorted(unique, key=_rank)[:_MAX_SETS], lead)  # type: ignore[arg-type]


def _needle(n: str) -> tuple[bool, str]:
    """How a needle is looked for: ``(False, s)``, ``s`` in the lower-cased text, or, for a needle with a
    word boundary, ``(True, s)``, ``s`` in the spaced text, with a space for a boundary next to a word
    character at either end (the spaced text is the lower-cased one, character by character)."""
    core = n.strip(_B)
    left, right = n.startswith(_B) and core[0] in _WORD_CHARS, n.endswith(_B) and core[-1] in _WORD_CHARS
    if not (left or right or _B in core):
        return False, core
    return True, " " * left + core.replace(_B, "").translate(_SPACED) + " " * right


Needles = tuple[tuple[tuple[bool, str], ...], ...]  # needle sets, as _needle looks for them
Starts = tuple[tuple[bool, int, str], ...]  # (in the spaced text, shift to the match's start, string)


def _start(n: str) -> tuple[bool, int, str]:
    """How a string a match starts with is looked for (see :func:`_needle`), and where the match starts
    from where it is found: a leading space stands for the character before the match."""
    spaced, s = _needle(n)
    return spaced, 0 if not spaced or (n.startswith(_B) and n.strip(_B)[0] in _WORD_CHARS) else -1, s


def needles(rx: re.Pattern) -> tuple[Needles, Starts] | None:
    """``(needle sets, starts)`` of ``rx`` (see the module docstring; ``starts`` empty when unknown), or
    None when the pattern has no needles or cannot be read."""
    if not isinstance(rx.pattern, str):
        return None
    try:
        info = _sequence(_parser.parse(rx.pattern, rx.flags))
    except Exception:  # an expression this reader does not follow is never gated
        return None
    sets = tuple(tuple(sorted({_needle(n) for n in found})) for found in info.sets
                 if not all(_WHITESPACE.issuperset(n) for n in found))  # every text has those
    return (sets, tuple(sorted({_start(n) for n in info.lead or ()}))) if sets else None


def _few(found: list[str], prefix_only: bool = False, most: int = 12) -> tuple[str, ...]:
    """Needles to look for instead of ``found``: without those that contain another (begin with
    another: ``prefix_only``), and, when there are many, their beginnings (a text with a needle has
    its beginning there)."""
    options = []
    for size in (None, 8, 6, 5, 4, 3):
        cut = sorted({n[:size] for n in found}, key=len)
        options.append([n for i, n in enumerate(cut)
                        if not any(n.startswith(m) if prefix_only else m in n for m in cut[:i])])
    return tuple(next((kept for kept in options if len(kept) <= most), options[0]))


class _Folded:
    """An ASCII text as needles are looked for in it, each form made when first asked for (from the
    text, or from the forms of the text it was edited from): ``low``, lower-cased with digits as 0;
    ``spaced``, that with non-word characters as spaces, padded by one space (index ``i + 1`` there is
    index ``i`` in the text); and the words of that."""

    __slots__ = ("text", "origin", "_low", "_spaced", "_words")

    def __init__(self, text: str, origin: tuple[_Folded, list[tuple[int, int, str]]] | None = None) -> None:
        self.text, self.origin = text, origin  # origin: the folded text it was edited from, and the edits
        self._low: str | None = None
        self._spaced: str | None = None
        self._words: frozenset[str] | None = None

    @property
    def low(self) -> str:
        if self._low is None:
            if self.origin is None:
                self._low = self.text.translate(_LOW)
            else:
                old, edits = self.origin
                self._low = _splice(old.low, [(start, end, r.translate(_LOW)) for start, end, r in edits])
        return self._low

    @property
    def spaced(self) -> str:
        if self._spaced is None:
            if self.origin is None:
                self._spaced = " " + self.text.translate(_SPACED) + " "
            else:
                old, edits = self.origin
                self._spaced = _splice(old.spaced, [(start + 1, end + 1, r.translate(_SPACED)) for start, end, r in edits])
        return self._spaced

    @property
    def words(self) -> frozenset[str]:
        if self._words is None:
            self._words = frozenset(self.spaced.split())
        return self._words


_folded: dict[str, _Folded] = {}  # the recent texts


def _fold(text: str, origin: tuple[_Folded, list[tuple[int, int, str]]] | None = None) -> _Folded:
    found = _folded.get(text)
    if found is None:
        if len(_folded) >= 32:
            _folded.clear()
        found = _folded[text] = _Folded(text, origin)
    return found


def _split(found: tuple[tuple[bool, str], ...]) -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...]]:
    """A needle set as (its whole words; needles in the lower-cased text; other needles in the spaced
    text)."""
    low = [n for sp, n in found if not sp]
    as_spaced = {n.translate(_SPACED) for n in low}  # the spaced text has what the lower-cased one has
    if len(as_spaced) < len(low) and all(n.strip() for n in as_spaced):  # fewer needles there
        found, low = (*((True, n) for n in as_spaced), *((sp, n) for sp, n in found if sp)), []
    spaced = [n for sp, n in found if sp]
    words = [n for n in spaced if n.startswith(" ") and n.endswith(" ") and " " not in n.strip()]
    return frozenset(n.strip() for n in words), _few(low), _few([n for n in spaced if n not in words])


def _splice(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each ``(start, end, replacement)`` made, in order."""
    pieces, last = [], 0
    for start, end, replacement in edits:
        pieces += [text[last:start], replacement]
        last = end
    return "".join(pieces) + text[last:]


def _edited(text: str, edits: list[tuple[int, int, str]]) -> str:
    """:func:`_splice`, the result's folded forms to be made from those of ``text`` (a character folds
    alone), so that a chain of substitutions folds its text once."""
    out = _splice(text, edits)
    old = _folded.get(text)
    if old is not None and all(r.isascii() for _, _, r in edits):
        _fold(out, (old, edits))
    return out


class Gated:
    """A compiled expression behind a literal gate (see the module docstring); otherwise it behaves as
    the :class:`re.Pattern` it wraps."""

    __slots__ = ("rx", "_sets", "_starts", "_last")

    def __init__(self, rx: re.Pattern) -> None:
        self.rx = rx
        sets, starts = needles(rx) or ((), ())
        self._sets = tuple(_split(found) for found in sets)
        groups = {(sp, shift) for sp, shift, _ in starts}
        self._starts = tuple((sp, shift, _few([n for p, h, n in starts if (p, h) == (sp, shift)], prefix_only=True, most=24))
                             for sp, shift in sorted(groups))
        self._last: tuple[str, list[int] | None] | None = None  # the last text asked about, and its places

    def __getattr__(self, name: str) -> Any:  # pattern, flags, groups, groupindex
        if name in Gated.__slots__:
            raise AttributeError(name)
        return getattr(self.rx, name)

    def __repr__(self) -> str:
        return f"Gated({self.rx!r})"

    def places(self, text: str) -> list[int] | None:
        """Where in ``text`` a match can start, in order (``[]``: no match can be in it), or None when
        the expression is to scan it as it is."""
        if not self._sets or not _read_by_gates(text):
            return None
        last = self._last
        if last is not None and last[0] is text:
            return last[1]
        found = self._places_in(text)
        self._last = (text, found)
        return found

    def _places_in(self, text: str) -> list[int] | None:
        folded = _fold(text)
        for words, in_low, in_spaced in self._sets:
            if not (words and not words.isdisjoint(folded.words)) and not (in_low and any(map(folded.low.__contains__, in_low))) \
                    and not (in_spaced and any(map(folded.spaced.__contains__, in_spaced))):
                return []
        if not self._starts:
            return None
        found: set[int] = set()
        for spaced, shift, strings in self._starts:
            source = folded.spaced if spaced else folded.low
            for n in strings:
                k = source.find(n)
                while k >= 0:
                    found.add(k + shift)
                    if len(found) > _MAX_STARTS:
                        return None
                    k = source.find(n, k + 1)
        return sorted(found)

    def _matches(self, text: str, places: list[int]) -> Any:
        """The matches a scan finds, trying the expression only at ``places``: each match is the first
        that starts at a place at or after the end of the one before."""
        end = 0
        for p in places:
            if p >= end:
                m = self.rx.match(text, p)
                if m is not None:
                    yield m
                    end = m.end()

    def search(self, text: str, *args: Any) -> re.Match | None:
        places = self.places(text)
        if places is None or (args and places):
            return self.rx.search(text, *args)
        return next(self._matches(text, places), None) if places else None

    def match(self, text: str, *args: Any) -> re.Match | None:
        return None if self.places(text) == [] else self.rx.match(text, *args)

    def findall(self, text: str, *args: Any) -> list:
        places = self.places(text)
        if places is None or (args and places):
            return self.rx.findall(text, *args)
        n = self.rx.groups
        return [m.group() if n == 0 else m.groups("")[0] if n == 1 else m.groups("") for m in self._matches(text, places)] \
            if places else []

    def finditer(self, text: str, *args: Any) -> Any:
        places = self.places(text)
        if places is None or (args and places):
            return self.rx.finditer(text, *args)
        return self._matches(text, places)

    def sub(self, repl: Any, text: str, count: int = 0) -> str:
        places = self.places(text)
        if places is None:
            return self.rx.sub(repl, text, count)
        if not places:
            return text
        literal = repl if isinstance(repl, str) and "\\" not in repl else None  # as re.sub takes it
        edits = []
        for k, m in enumerate(self._matches(text, places)):
            if count and k >= count:
                break
            edits.append((m.start(), m.end(), repl(m) if callable(repl) else literal or m.expand(repl)))
        return _edited(text, edits) if edits else text

    def split(self, text: str, maxsplit: int = 0) -> list[str]:
        return [text] if self.places(text) == [] else self.rx.split(text, maxsplit)


class GateGroup:
    """Gated expressions asked about the same texts (a reader's expressions): which of them can match a
    text, found at once from the text's words and the needles of each one's first needle set (a match
    of an expression meets every one of its sets). A reader of many expressions asks its group first
    and tries only those, at about the cost of asking one gate."""

    __slots__ = ("members", "_all", "_always", "_by_word", "_words", "_low", "_spaced", "_low_any", "_spaced_any",
                 "_last")

    def __init__(self, members: Iterable[Gated]) -> None:
        self.members = tuple(members)
        self._all = tuple(range(len(self.members)))
        self._always: list[int] = []  # members without needles: they may match anything
        self._by_word: dict[str, list[int]] = {}
        low: dict[int, tuple[str, ...]] = {}
        spaced: dict[int, tuple[str, ...]] = {}
        for i, m in enumerate(self.members):
            if not m._sets:
                self._always.append(i)
                continue
            words, in_low, in_spaced = m._sets[0]
            for w in words:
                self._by_word.setdefault(w, []).append(i)
            low[i], spaced[i] = in_low, in_spaced
        self._words = frozenset(self._by_word)
        self._low = tuple((i, ns) for i, ns in low.items() if ns)  # (member, its needles), each looked for
        self._spaced = tuple((i, ns) for i, ns in spaced.items() if ns)
        self._low_any = _few([n for _, ns in self._low for n in ns], most=64)  # a text without these has none
        self._spaced_any = _few([n for _, ns in self._spaced for n in ns], most=64)
        self._last: tuple[str, tuple[int, ...]] | None = None  # the last text asked about, and its members

    def live(self, text: str) -> tuple[int, ...]:
        """The indices of the members that may match ``text``, in order (every one for a text the gates
        do not read: not ASCII, or inside :func:`ungated`)."""
        if not _read_by_gates(text):
            return self._all
        if self._last is not None and self._last[0] is text:
            return self._last[1]
        folded = _fold(text)
        found = set(self._always)
        for w in folded.words & self._words:
            found.update(self._by_word[w])
        if self._low and any(map(folded.low.__contains__, self._low_any)):
            low = folded.low
            found.update(i for i, ns in self._low if i not in found and any(map(low.__contains__, ns)))
        if self._spaced and any(map(folded.spaced.__contains__, self._spaced_any)):
            spaced = folded.spaced
            found.update(i for i, ns in self._spaced if i not in found and any(map(spaced.__contains__, ns)))
        self._last = (text, tuple(sorted(found)))
        return self._last[1]

    def matching(self, text: str) -> list[int]:
        """The indices of the members whose search finds a match in ``text``, in order."""
        return [i for i in self.live(text) if self.members[i].search(text)]


_OFF: list[bool] = []  # non-empty inside ungated()


def _read_by_gates(text: Any) -> bool:
    """Whether the gates read ``text``: an ASCII string, outside :func:`ungated`."""
    return isinstance(text, str) and text.isascii() and not _OFF


@contextmanager
def ungated() -> Iterator[None]:
    """Every gated expression scans its text as it is (the reference the gates are tested against)."""
    _OFF.append(True)
    try:
        yield
    finally:
        _OFF.pop()


def gated(pattern: str | re.Pattern, flags: int = 0) -> Gated:
    """``re.compile(pattern, flags)`` behind a literal gate."""
    return Gated(pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, flags))
