"""What a shard plan counted (slices in file headers, inputs in folders), kept between runs.

Every shard's run plans its whole source (a shard is a stretch of the sorted inputs), and a NIfTI
volume's weight in that plan is its slice count, read from its header: about 0.3 ms a file, so
30 s of every shard's run for a source of 100,000 volumes, which has about a thousand shards. The
memo keeps each file's counts in the user cache, one file per source root and purpose, so a run
reads only the headers of files that are new or changed since a run last planned.

An entry is keyed by a keyed hash (BLAKE2b, with a secret made once and kept beside the memos,
readable by this user only) of the file's absolute path, inode, size, modification and change times
in ns: the memo holds no path (folder names can carry patient names), and a rewritten file is read
again, even when its modification time was set back.
The memo is a user-cache record, checked against its stored SHA-256 before use; a memo that is
missing, damaged or unwritable only means that headers are read again.

The same memo keeps a folder's counts for a plan made from listings
(:mod:`~medtrinity_assets.ingest.readers.folder_units`): a folder's change time changes when an
entry is added, removed or renamed in it, or its permissions change. Such counts are remembered only once the folder has been
still for ``settle_s`` (the clock that stamps a change ticks in milliseconds, so an entry added in the
same tick as the listing would otherwise leave a stale count behind).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from medtrinity_assets.core import user_cache

_FOLDER = "plans"
_KEY_BYTES = 32


def _secret() -> bytes | None:
    """The memos' hashing key, made on first use (None when the cache cannot be written)."""
    from medtrinity_assets.core.storage import secret_key

    path = user_cache.user_cache_dir() / _FOLDER / "memo.key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secret_key(path, _KEY_BYTES)
    except (OSError, RuntimeError):  # RuntimeError: no home directory
        return None
    return key if len(key) == _KEY_BYTES else None


class PlanMemo:
    """Integer counts of the files (read from their headers) or folders (from their listings) under
    ``root`` (see the module docstring), for one ``purpose`` (what the counts depend on besides the
    file or folder, e.g. the cut axis, the include globs), kept as a user-cache record
    (:mod:`~medtrinity_assets.core.user_cache`)."""

    def __init__(self, root: Path, purpose: str) -> None:
        self._key = _secret()
        self._name: str | None = None
        self._known: dict[str, tuple[int, ...]] = {}
        self._new: dict[str, tuple[int, ...]] = {}
        self._seen: set[str] = set()
        if self._key is not None:
            self._name = self._digest(f"{Path(root).resolve()}\0{purpose}")
            stored = user_cache.read_record(_FOLDER, self._name, self._name)
            if isinstance(stored, dict):
                self._known = {k: tuple(map(int, v)) for k, v in stored.items() if isinstance(v, list)}

    def _digest(self, text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), key=self._key or b"", digest_size=16).hexdigest()

    def _stamp(self, path: Path | str) -> tuple[str, int] | None:
        """The entry key of ``path`` as it is now (keyed hash of path, inode, size, mtime and ctime) and
        when it last changed, in ns. The ctime is there because the mtime can be set back (``cp -a``,
        ``rsync -a``, ``tar x``) and a ``chmod`` leaves it alone; nothing but the kernel sets a ctime."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = f"{os.path.abspath(path)}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
        return self._digest(stamp), max(st.st_mtime_ns, st.st_ctime_ns)

    def known(self, path: Path | str) -> tuple[int, ...] | None:
        """The counts remembered for ``path`` as it is now, or None."""
        stamp = None if self._key is None else self._stamp(path)
        if stamp is None:
            return None
        self._seen.add(stamp[0])
        return self._known.get(stamp[0]) or self._new.get(stamp[0])

    def remember(self, path: Path | str, counts: tuple[int, ...], settle_s: float = 0.0) -> None:
        """Keep ``counts`` for ``path`` as it is now, unless it changed less than ``settle_s`` ago."""
        stamp = None if self._key is None else self._stamp(path)
        if stamp is None or time.time_ns() - stamp[1] < settle_s * 1e9:
            return
        counts = tuple(int(c) for c in counts)
        self._seen.add(stamp[0])
        if self._known.get(stamp[0]) != counts:  # a memo is written only when something is new
            self._new[stamp[0]] = counts

    def get(self, path: Path, read: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
        """The counts of the file ``path``: remembered when the file is unchanged, else ``read()``."""
        found = self.known(path)
        if found is None:
            found = tuple(int(c) for c in read())
            self.remember(path, found)
        return found

    def save(self) -> None:
        """Store the counts of the files asked about since this memo was made, when any had to be
        read (entries of files no longer asked about are dropped: a plan asks about every file of
        its source); never raises."""
        if self._name is None or not self._new:
            return
        entries = {k: v for k, v in {**self._known, **self._new}.items() if k in self._seen}
        user_cache.write_record(_FOLDER, self._name, self._name, {k: list(v) for k, v in entries.items()})
        self._known, self._new = {**self._known, **self._new}, {}
