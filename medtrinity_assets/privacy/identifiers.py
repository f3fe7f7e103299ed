"""Matching identifying values (names, IDs, dates, UIDs) in free text and in file paths.

A DICOM person name is stored as ``Family^Given^Middle^Prefix^Suffix`` (with optional ``=``
separated ideographic and phonetic groups), but it leaks in any order and spelling: "Li Na",
"NA, LI", a folder ``Na_Li`` or ``山田太郎``. So a person name contributes its name tokens
(family, given and middle names; not prefixes or suffixes such as "Dr"), each matched on its
own as a whole word, case-insensitively and Unicode-aware, whatever its length, plus the
whole value. In scripts written without spaces between words (CJK, Thai) a token is matched
anywhere, since word boundaries do not exist there.

One :class:`IdentifierMatcher` is compiled per source: its regular expression is a trie of
all values, so matching costs O(text length) whatever the number of patients.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from itertools import permutations

# scripts without spaces between words: a name in them is matched without word boundaries
_UNSPACED = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# name parts are separated by spaces and punctuation; "_" and "-" join one token (a pseudonym
# such as PANCREAS_0001 or CASE-12 is one code, not a name "PANCREAS")
_TOKEN_SPLIT = re.compile(r"[\s,.;:/\\()\[\]\"]+")
#: Placeholders that anonymisation tools and public datasets put in name fields: not names.
PLACEHOLDER_NAMES = frozenset(
    {"anonymous", "anonymized", "anonymised", "anon", "patient", "unknown", "test", "phantom",
     "case", "subject", "study", "series", "research", "none", "null", "removed", "deidentified"}
)


def is_unspaced(text: str) -> bool:
    """True when ``text`` holds a character of a script written without word spaces."""
    return bool(_UNSPACED.search(text))


def person_name_tokens(value: str) -> set[str]:
    """The name tokens of a DICOM person name (family, given, middle of every group).

    Tokens with a digit are left out (``CompressedSamples^CT1`` is a code, not a name), as are
    single Latin letters (initials); any token in an unspaced script is kept.
    """
    out: set[str] = set()
    for group in str(value).split("="):
        for component in group.split("^")[:3]:
            for token in _TOKEN_SPLIT.split(component):
                token = token.strip()
                if not token or any(c.isdigit() for c in token) or token.casefold() in PLACEHOLDER_NAMES:
                    continue
                letters = sum(c.isalpha() for c in token)
                if letters >= 2 or (letters >= 1 and is_unspaced(token)):
                    out.add(token)
    return out


def _flat(text: str) -> str:
    """Case-folded letters and digits only (any script)."""
    return "".join(c for c in text.casefold() if c.isalnum())


def _trie_pattern(words: Iterable[str]) -> str:
    """One regular expression matching any of ``words`` (already case-folded), built as a trie
    so that the engine never tries the alternatives one by one."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        group = "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: what follows is optional
            return group + "?"
        return branches[0] if len(branches) == 1 else group

    return emit(trie)


class IdentifierMatcher:
    """Finds, removes and path-redacts a set of identifying values.

    Each value (an ID, a date, a UID, a full person name, one name token) is matched as a whole
    word, or anywhere in unspaced scripts. Values with fewer than two letters or digits are
    ignored (they would match everywhere), except a single character of an unspaced script,
    which is a whole name there (李).
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        spaced: set[str] = set()
        unspaced: set[str] = set()
        self._flat_needles: set[str] = set()
        self._path_tokens: set[str] = set()
        for raw in values:
            v = str(raw).strip()
            flat = _flat(v)
            wide = is_unspaced(v)
            if len(flat) < (1 if wide else 2):
                continue
            (unspaced if wide else spaced).add(v.casefold())
            # paths: a long value anywhere inside a component, a short one as a whole token
            if len(flat) >= 3 or (wide and len(flat) >= 2):
                self._flat_needles.add(flat)
            else:
                self._path_tokens.add(flat)
        parts = []
        if spaced:
            parts.append(r"(?<!\w)" + _trie_pattern(sorted(spaced)) + r"(?!\w)")
        if unspaced:
            parts.append(_trie_pattern(sorted(unspaced)))
        self._rx = re.compile("|".join(parts), re.IGNORECASE) if parts else None
        self._lengths = sorted({len(n) for n in self._flat_needles})

    def search(self, text: str | None) -> bool:
        """Whether ``text`` contains one of the values."""
        return bool(text) and self._rx is not None and self._rx.search(str(text).casefold()) is not None

    def sub(self, text: str, repl: str = " ") -> str:
        """``text`` with every occurrence of a value replaced by ``repl``."""
        if not text or self._rx is None:
            return text
        folded = str(text).casefold()
        if len(folded) != len(text):  # case folding changed lengths (e.g. "ß"): match the original
            return self._rx.sub(repl, text)
        pieces, last = [], 0
        for m in self._rx.finditer(folded):
            pieces.append(text[last : m.start()])
            pieces.append(repl)
            last = m.end()
        pieces.append(text[last:])
        return "".join(pieces)

    def in_path_component(self, part: str) -> bool:
        """Whether a file or folder name carries a value: a long value anywhere in its letters
        and digits (``DOE_JANE`` carries ``Doe^Jane``), a short one as a whole token."""
        if any(_flat(t) in self._path_tokens for t in re.split(r"[^\w]+|_", part) if t):
            return True
        flat = _flat(part)[:255]
        for n in self._lengths:
            if n > len(flat):
                break
            if any(flat[i : i + n] in self._flat_needles for i in range(len(flat) - n + 1)):
                return True
        return False

    def redact_path(self, relpath: str) -> str:
        """``relpath`` with every component that carries a value replaced by ``~<sha1[:12]>``
        (stable, so whoever holds the source can still find the file)."""
        if self._rx is None:
            return relpath
        return "/".join(
            "~" + hashlib.sha1(p.encode("utf-8")).hexdigest()[:12] if p and self.in_path_component(p) else p
            for p in relpath.split("/")
        )


def expand_person_name(value: str) -> set[str]:
    """A person name with its name tokens and the tokens run together in any order (山田^太郎
    is also written 山田太郎 or 太郎山田; a folder ``NaLi`` carries "Li^Na")."""
    tokens = sorted(person_name_tokens(value))
    out = {str(value), *tokens}
    if 1 < len(tokens) <= 3:
        out.update("".join(p) for p in permutations(tokens))
    return out


def matcher_for(values: Iterable[str]) -> IdentifierMatcher:
    """A matcher over identifying values, where a value in DICOM person-name form (with ``^``
    or ``=``) also contributes its name tokens; see :func:`expand_person_name`."""
    expanded: set[str] = set()
    for v in values:
        if v is None:
            continue
        v = str(v)
        expanded |= expand_person_name(v) if ("^" in v or "=" in v) else {v}
    return IdentifierMatcher(expanded)
