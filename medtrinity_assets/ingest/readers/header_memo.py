"""What a shard plan read from file headers, kept between runs.

Every shard's run plans its whole source (a shard is a stretch of the sorted inputs), and a NIfTI
volume's weight in that plan is its slice count, read from its header: about 0.3 ms a file, so
30 s of every shard's run for a source of 100,000 volumes, which has about a thousand shards. The
memo keeps each file's counts in the user cache, one file per source root and purpose, so a run
reads only the headers of files that are new or changed since a run last planned.

An entry is keyed by a keyed hash (BLAKE2b, with a secret made once and kept beside the memos,
readable by this user only) of the file's absolute path, size and modification time in ns: the
memo holds no path (folder names can carry patient names), and a rewritten file is read again.
The memo's bytes are checked against their stored SHA-256 before use; a memo that is missing,
damaged or unwritable only means that headers are read again.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import polars as pl

from medtrinity_assets.core import user_cache

_FOLDER = "plans"
_KEY_BYTES = 32


def _secret() -> bytes | None:
    """The memos' hashing key, made on first use (None when the cache cannot be written, or while
    another process is still writing it: the memo is then off for this run)."""
    path = user_cache.user_cache_dir() / _FOLDER / "memo.key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data if len(data) == _KEY_BYTES else None
    except (OSError, RuntimeError):  # RuntimeError: no home directory
        return None
    data = secrets.token_bytes(_KEY_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


class HeaderMemo:
    """Integer counts read from files' headers (see the module docstring) for the files under
    ``root``, for one ``purpose`` (what the counts depend on besides the file, e.g. the cut axis)."""

    def __init__(self, root: Path, purpose: str) -> None:
        self._key = _secret()
        self._path: Path | None = None
        self._known: dict[str, tuple[int, ...]] = {}
        self._new: dict[str, tuple[int, ...]] = {}
        self._seen: set[str] = set()
        if self._key is not None:
            name = self._digest(f"{Path(root).resolve()}\0{purpose}")
            self._path = user_cache.user_cache_dir() / _FOLDER / f"{name}.parquet"
            self._known = self._load(self._path)

    def _digest(self, text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), key=self._key or b"", digest_size=16).hexdigest()

    @staticmethod
    def _load(path: Path) -> dict[str, tuple[int, ...]]:
        from medtrinity_assets.core.storage import sha256_bytes

        try:
            data = path.read_bytes()
            if sha256_bytes(data) != path.with_name(path.name + ".sha256").read_text().strip():
                return {}
            frame = pl.read_parquet(io.BytesIO(data))
            return {k: tuple(v) for k, v in zip(frame["key"], frame["counts"].to_list(), strict=True)}
        except Exception:  # noqa: BLE001 - any damage means the headers are read again
            return {}

    def get(self, path: Path, read: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
        """The counts of the file ``path``: remembered when the file is unchanged, else ``read()``."""
        if self._key is None:
            return read()
        try:
            st = os.stat(path)
        except OSError:
            return read()
        key = self._digest(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}")
        self._seen.add(key)
        found = self._known.get(key) or self._new.get(key)
        if found is None:
            found = self._new[key] = tuple(int(c) for c in read())
        return found

    @property
    def read_now(self) -> int:
        """Files whose headers this memo had to read (new or changed since the last save)."""
        return len(self._new)

    def save(self) -> None:
        """Store the counts of the files asked about since this memo was made, when any had to be
        read (entries of files no longer asked about are dropped: a plan asks about every file of
        its source); never raises."""
        if self._path is None or not self._new:
            return
        from medtrinity_assets.core.storage import atomic_write_bytes, sha256_bytes

        entries = {k: v for k, v in {**self._known, **self._new}.items() if k in self._seen}
        frame = pl.DataFrame({"key": list(entries), "counts": [list(v) for v in entries.values()]},
                             schema={"key": pl.String, "counts": pl.List(pl.Int64)})
        buf = io.BytesIO()
        frame.write_parquet(buf)
        data = buf.getvalue()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path, data)
            atomic_write_bytes(self._path.with_name(self._path.name + ".sha256"), sha256_bytes(data).encode())
        except (OSError, RuntimeError):
            return
        self._known, self._new = {**self._known, **self._new}, {}
