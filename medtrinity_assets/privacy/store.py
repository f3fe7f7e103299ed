"""A source's identifying values, kept between stages as salted hashes, never as values.

Ingestion reads every header of a source once; the identifying values it finds (patient and
clinician names with their name tokens, IDs, dates, UIDs, places) redact paths and scrub free
text right there, and are then stored for the final PHI check of the descriptions as keyed
BLAKE2b hashes of their tokens under ``<out>/_private/`` (folder 0700, files 0600). The key
is random per output root. A description is checked by hashing its own token n-grams with the
same key, so the check needs no value in clear and no second pass over the source. A project that
builds into several output roots can name one key for all of them (:data:`KEY_FILE_ENV`), so a
patient keeps one group id, and one split, across its roots.

Tokens are runs of word characters (case-folded), and single characters of scripts written
without spaces (CJK, Thai), so a value matches wherever its tokens appear in a row, whatever
punctuation separates them: ``Doe^Jane`` matches "Doe Jane", ``1.2.840.1`` matches "1.2.840.1".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from medtrinity_assets.privacy.identifiers import expand_person_name, is_unspaced

_UNSPACED_CLASS = r"\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_UNSPACED_CLASS}]|[^\W{_UNSPACED_CLASS}]+")
STORE_FORMAT = "medtrinity-identifiers-v1"


_ASCII_TOKENS = {c: ord(chr(c).lower()) if chr(c).isalnum() or chr(c) == "_" else 32 for c in range(128)}


def tokens(text: str) -> list[str]:
    """Case-folded tokens of ``text`` (see the module docstring)."""
    text = str(text)
    if text.isascii():  # the same tokens, without the expression: runs of word characters
        return text.translate(_ASCII_TOKENS).split()
    return _TOKEN.findall(text.casefold())


def _usable(value: str) -> bool:
    alnum = sum(c.isalnum() for c in value)
    return alnum >= (1 if is_unspaced(value) else 2)


def expand_values(values: Iterable[str]) -> set[str]:
    """Values with person names (``^`` or ``=`` form) expanded to their tokens and orders."""
    out: set[str] = set()
    for v in values:
        if v is None:
            continue
        v = str(v).strip()
        out |= expand_person_name(v) if ("^" in v or "=" in v) else {v}
    return {v for v in out if v and _usable(v)}


class HashedMatcher:
    """Finds identifying values in text from their keyed hashes (``search`` only)."""

    def __init__(self, key: bytes, values: set[str], firsts: set[str], max_tokens: int) -> None:
        self._key = key
        self._values = values
        self._firsts = firsts
        self._max = max_tokens
        self._seen: dict[bool, set[str]] = {False: set(), True: set()}  # tokens that start no value / one

    @property
    def size(self) -> int:
        return len(self._values)

    def _h(self, toks: Iterable[str]) -> str:
        return hashlib.blake2b("\x1f".join(toks).encode("utf-8"), key=self._key, digest_size=16).hexdigest()

    def _starting(self, toks: list[str]) -> set[str]:
        """The tokens of ``toks`` that a value starts with (memoised: descriptions reuse their words)."""
        if len(self._seen[False]) + len(self._seen[True]) >= 200_000:
            self._seen = {False: set(), True: set()}
        for tok in set(toks) - self._seen[False] - self._seen[True]:
            self._seen[self._h((tok,)) in self._firsts].add(tok)
        return self._seen[True].intersection(toks)

    def search(self, text: str | None) -> bool:
        if not text or not self._values:
            return False
        toks = tokens(text)
        firsts = self._starting(toks)
        for i, tok in enumerate(toks if firsts else ()):
            if tok not in firsts:
                continue
            for n in range(1, min(self._max, len(toks) - i) + 1):
                if self._h(toks[i : i + n]) in self._values:
                    return True
        return False


#: a file holding the pseudonym key of a project (32 to 64 random bytes, readable by its owner only):
#: output roots built with it give a patient the same group id, hence the same split
KEY_FILE_ENV = "MEDTRINITY_PSEUDONYM_KEY_FILE"


class PseudonymKeyError(ValueError):
    """The pseudonym key cannot be used: a bad key file, or not the key an output root was built with."""


def project_key() -> bytes | None:
    """The key in the file ``$MEDTRINITY_PSEUDONYM_KEY_FILE`` names (None when it is not set)."""
    name = os.environ.get(KEY_FILE_ENV, "").strip()
    if not name:
        return None
    path = Path(name).expanduser()
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as exc:
        raise PseudonymKeyError(f"{KEY_FILE_ENV}: cannot read {path} ({exc.strerror or exc})") from None
    if mode & 0o077:
        raise PseudonymKeyError(f"{KEY_FILE_ENV}: {path} is readable by others (mode {mode & 0o777:o}); "
                                f"run: chmod 600 {path}")
    if not 32 <= len(key) <= 64:
        raise PseudonymKeyError(f"{KEY_FILE_ENV}: {path} holds {len(key)} bytes, not 32 to 64 random bytes "
                                f"(make one with: head -c 32 /dev/urandom > {path})")
    return key


def key_check(key: bytes) -> str:
    """What an output root records of the key it was built with (it reveals nothing of the key)."""
    return hashlib.blake2b(b"medtrinity pseudonym key check", key=key, digest_size=16).hexdigest()


class IdentifierStore:
    """Per-source hashed identifier sets under ``<out>/_private/``, keyed by the output root's own
    random key, or by the project's key (:data:`KEY_FILE_ENV`), which is never copied into the root:
    the root records only :func:`key_check` of it, and refuses any other key afterwards, so that one
    root never mixes pseudonyms made with two keys."""

    def __init__(self, out: str | Path) -> None:
        self.dir = Path(out) / "_private"
        self._cached: bytes | None = None

    def _key(self, create: bool) -> bytes | None:
        if self._cached is None:
            self._cached = self._resolve_key(create)
        return self._cached

    def _resolve_key(self, create: bool) -> bytes | None:
        own, check = self.dir / "identifiers.key", self.dir / "key.check"
        project = project_key()
        if project is not None:
            recorded = check.read_text().strip() if check.exists() else None
            if own.exists() or (recorded is not None and recorded != key_check(project)):
                raise PseudonymKeyError(
                    f"{self.dir.parent} was built with another pseudonym key than {KEY_FILE_ENV} names; "
                    "use the key it was built with, or a new output root")
            if recorded is None and create:
                self._private_dir()
                from medtrinity_assets.core.storage import atomic_write_bytes

                atomic_write_bytes(check, key_check(project).encode())
                os.chmod(check, 0o600)
            return project
        if check.exists() and not own.exists():
            raise PseudonymKeyError(f"{self.dir.parent} was built with a project pseudonym key: set {KEY_FILE_ENV} "
                                    "to the file that holds it")
        if own.exists():
            return own.read_bytes()
        if not create:
            return None
        self._private_dir()
        from medtrinity_assets.core.storage import secret_key

        return secret_key(own)  # whole or not at all: two shards' runs may start on a fresh root at once

    def _private_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def path(self, source: str) -> Path:
        return self.dir / "identifiers" / f"{source}.json"

    def group_id(self, kind: str, value: str) -> str:
        """A pseudonymous group id (``patient:<hash>``, ``study:<hash>``) for a patient or study
        identifier: keyed BLAKE2b with this output root's key (or the project's), so equal
        identifiers give equal ids across sources and reruns, and the id reveals nothing without
        the key."""
        key = self._key(create=True)
        assert key is not None
        digest = hashlib.blake2b(f"{kind}\x1f{value}".encode(), key=key, digest_size=10).hexdigest()
        return f"{kind}:{digest}"

    def save(self, source: str, values: Iterable[str]) -> int:
        """Store the hashes of ``values`` (expanded) for ``source``; returns how many."""
        from medtrinity_assets.core.storage import atomic_write_bytes

        key = self._key(create=True)
        assert key is not None
        matcher = HashedMatcher(key, set(), set(), 0)
        token_lists = [t for t in (tokens(v) for v in expand_values(values)) if t]
        payload = {
            "format": STORE_FORMAT,
            "values": sorted({matcher._h(t) for t in token_lists}),
            "firsts": sorted({matcher._h(t[:1]) for t in token_lists}),
            "max_tokens": max((len(t) for t in token_lists), default=0),
        }
        path = self.path(source)
        atomic_write_bytes(path, json.dumps(payload).encode("utf-8"))
        os.chmod(path, 0o600)
        os.chmod(path.parent, 0o700)
        return len(payload["values"])

    def matcher(self, source: str) -> HashedMatcher:
        """The matcher of ``source`` (empty when ingestion stored nothing for it)."""
        key = self._key(create=False)
        path = self.path(source)
        if key is None or not path.exists():
            return HashedMatcher(b"", set(), set(), 0)
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != STORE_FORMAT:
            raise ValueError(f"{path}: not an identifier store (format {data.get('format')!r})")
        return HashedMatcher(key, set(data["values"]), set(data["firsts"]), int(data["max_tokens"]))


def identifier_store(out: str | Path) -> IdentifierStore:
    return IdentifierStore(out)
