"""Storage layout and durable writes shared by every stage.

Layout under an output root ``<out>`` (tables: see :mod:`medtrinity_assets.core.tables`):

- ``<out>/images/<sha[:2]>/<sha>.png`` — preprocessed images, content-addressed;
- ``<out>/masks/<sha[:2]>/<sha>.png`` — label maps aligned with their image.

Writes go to a temporary file in the same folder and are renamed into place, so a reader
never sees half a table and a killed run never leaves a truncated one. Temporary files are named
``.<name>.<pid>.<random>.tmp`` (:func:`temp_file`): :func:`sweep_temp_files` removes those of
processes that are gone (a killed build) without touching a concurrent build's.

Permissions, one policy for every file the pipeline writes (tables, images, masks, mirrors of
remote roots, models): what the process umask allows of ``0666`` (folders ``0777``), as for any
file a program creates; set ``umask 027`` or ``077`` to keep outputs from other users. The one
exception is ``<out>/_private/`` (a source's identifier hashes): always ``0700`` / ``0600``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import polars as pl


def record_id(source: str, relpath: str, slice_index: int | None = None, frame: str = "") -> str:
    """Stable id of a 2D record: source, path relative to its root and slice."""
    key = f"{source}\x1f{relpath}\x1f{'' if slice_index is None else slice_index}\x1f{frame}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def content_path(out: str | Path, kind: str, sha256: str, suffix: str = ".png") -> Path:
    """Path of a content-addressed file (``kind`` is ``images`` or ``masks``)."""
    return Path(out) / content_relpath(kind, sha256, suffix)


def content_relpath(kind: str, sha256: str, suffix: str = ".png") -> str:
    """:func:`content_path` relative to the output root, as text (ingestion names thousands a second)."""
    return f"{kind}/{sha256[:2]}/{sha256}{suffix}"


def relative_to_out(out: str | Path, path: str | Path) -> str:
    return Path(path).resolve().relative_to(Path(out).resolve()).as_posix()


_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.(?:tmp|part)$")
_LEGACY_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # written before temp names carried a pid


def file_mode() -> int:
    """The mode new output files get: ``0666`` less the process umask (see the module doc)."""
    return 0o666 & ~_umask()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux): reading
    it with ``os.umask`` means setting it, and writer threads that did so at once could leave it
    at 0 for the rest of the process (every later file writable by all)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restored by one thread at a time
        mask = os.umask(0)
        os.umask(mask)
    return mask


def temp_file(path: str | Path, suffix: str = ".tmp") -> tuple[int, str]:
    """``(fd, name)`` of a new temporary file beside ``path``, named with this process's pid and
    given the output file mode (mkstemp alone would make it 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    os.fchmod(fd, file_mode())
    return fd, tmp


def sweep_temp_files(out: str | Path, before: float | None = None) -> int:
    """Remove temporary files under ``out`` left by processes that no longer run (a build killed
    mid-write), last modified before ``before`` (default: now); returns how many."""
    import psutil

    before = time.time() if before is None else before
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(out):
        for name in filenames:
            if not name.startswith("."):
                continue
            m = _TEMP_RE.match(name)
            if m is not None and psutil.pid_exists(int(m.group(1))):
                continue  # a running process (maybe a concurrent build) is writing it
            if m is None and not _LEGACY_TEMP_RE.match(name):
                continue
            path = Path(dirpath) / name
            try:
                if path.stat().st_mtime < before:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
    return removed


@contextmanager
def held_lock(path: str | Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (made if missing) while the block runs: another
    process, or another open of it in this one, waits at the start of its block until this one
    leaves (calling ``waiting`` first, so that it can say why it waits). For work that replaces a
    whole folder (two runs of one asset at once); an advisory ``flock``, released by the kernel
    when its holder dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor of this open releases the lock


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file opened on a temporary name beside ``path``, fsynced and renamed onto it on success
    (removed on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes durably: temp file in the same folder, fsync, rename."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def write_content_file(path: str | Path, data: bytes) -> bool:
    """Write a content-addressed file once. Returns False when it already existed."""
    return write_content_files([(str(path), data)]) == 1


_TEMP_NAMES = itertools.count()  # per-process sequence of temporary names (see write_content_files)
_FOLDERS: set[str] = set()  # folders this process has made for content files


def write_content_files(files: Iterable[tuple[str, bytes]]) -> int:
    """Write content-addressed files once, as ingestion writes thousands a second: the durable write
    of :func:`atomic_file` (a temporary file beside the path, fsync, rename) made of plain ``os``
    calls, a temporary name from a per-process sequence (created exclusively, with the output file
    mode that ``O_CREAT`` gives under the umask) and each fan-out folder made once. Returns how many
    were written (absent before)."""
    written = 0
    for path, data in files:
        tmp = _write_temp(path, data, sync=True)
        if tmp is None:
            continue
        try:
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        written += 1
    return written


def _temp_path(folder: str, name: str, owner: int | None = None) -> str:
    """A new temporary name beside ``folder/name``, as :data:`_TEMP_RE` reads it (swept after a
    crash). It carries the pid of ``owner``, the process that will rename or remove it (this one by
    default), so a sweep leaves it alone while that process runs; the sequence is mixed with this
    process's pid, as processes forked from one parent share it (creation is exclusive anyway)."""
    seq = (os.getpid() * 2654435761 + next(_TEMP_NAMES)) % 16**8
    return f"{folder}/.{name}.{owner or os.getpid()}.{seq:08x}.tmp"


def secret_key(path: str | Path, size: int = 32) -> bytes:
    """The random key kept in the file ``path``, made on first use: ``size`` random bytes in a
    temporary file (mode 0600, fsynced) linked into place, so the file appears whole or not at all,
    and of processes making it at once, every one gets the first one's key. Raises OSError."""
    path = Path(path)
    with suppress(FileNotFoundError):
        return path.read_bytes()
    key = secrets.token_bytes(size)
    tmp = _temp_path(str(path.parent), path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first
            key = path.read_bytes()
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
    return key


def _write_temp(path: str, data: bytes, sync: bool = False, owner: int | None = None) -> str | None:
    """``data`` in a new temporary file beside ``path`` (fsynced with ``sync``; named for ``owner``,
    see :func:`_temp_path`), or None when ``path`` exists."""
    if os.path.exists(path):
        return None
    folder, name = os.path.split(path)
    if folder not in _FOLDERS:
        os.makedirs(folder, exist_ok=True)
        _FOLDERS.add(folder)
    fd, tmp = _open_temp(folder, name, owner)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _open_temp(folder: str, name: str, owner: int | None) -> tuple[int, str]:
    """A new temporary file beside ``folder/name``, created exclusively: ``(fd, path)``."""
    for _attempt in range(8):
        tmp = _temp_path(folder, name, owner)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileNotFoundError:  # the folder was removed since this process made it
            _FOLDERS.discard(folder)
            os.makedirs(folder, exist_ok=True)
            _FOLDERS.add(folder)
        except FileExistsError:  # another process's name (sequences of forked processes can meet)
            continue
    tmp = _temp_path(folder, name, owner)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def stage_content(path: str, data: bytes, owner: int | None = None) -> str | None:
    """Write a content-addressed file's ``data`` to a temporary file beside ``path`` for a
    :class:`ContentBatch` (maybe of the ``owner`` process) to make durable and move into place
    with :meth:`ContentBatch.add`, or to remove with :func:`discard_staged`; None when ``path``
    already exists. Ingestion's workers stage the PNGs they encode, so the bytes never cross to
    the parent."""
    return _write_temp(path, data, owner=owner)


def discard_staged(tmp: str | None) -> None:
    """Remove a file :func:`stage_content` wrote and nobody will keep (a duplicate)."""
    if tmp is not None:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def _sync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentBatch:
    """Content-addressed files written once and made durable together: each goes to a temporary
    file, and every ``size`` files (and at :meth:`commit`) the filesystem is synced once (Linux
    ``syncfs``; elsewhere each file's ``fsync``) before the files are renamed into place. A path
    that appears is therefore complete, as with :func:`write_content_files`, for one sync per batch
    instead of one per file (ingestion writes thousands of small PNGs a second; on a network or
    spinning disk a sync costs milliseconds). A crash leaves temporary files, which
    :func:`sweep_temp_files` removes. Thread-safe: writer threads add, any thread commits."""

    def __init__(self, root: str | Path, size: int = 512) -> None:
        self.root, self.size = str(root), max(1, int(size))
        self._pending: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.written = 0

    def write(self, files: Iterable[tuple[str, bytes]]) -> int:
        """Write ``files`` to temporary names; commits a batch when one is full. Returns how many
        files were committed by this call."""
        return self.add([(tmp, path) for path, data in files if (tmp := _write_temp(path, data)) is not None])

    def add(self, staged: Iterable[tuple[str, str]]) -> int:
        """Take ``(temporary file, path)`` pairs written already (:func:`stage_content`), to be
        synced and renamed with the batch; commits a batch when one is full. Returns how many files
        were committed by this call."""
        with self._lock:
            self._pending += staged
            full = len(self._pending) >= self.size
        return self.commit() if full else 0

    def commit(self) -> int:
        """Sync and rename every pending file; returns how many were new."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            _sync_all(self.root, [tmp for tmp, _ in batch])
        except BaseException:
            for tmp, _ in batch:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise
        written = 0
        for tmp, path in batch:
            if os.path.exists(path):  # the same content twice in one batch: the first is kept
                os.unlink(tmp)
                continue
            os.replace(tmp, path)
            written += 1
        with self._lock:
            self.written += written
        return written


def _sync_all(root: str, paths: list[str]) -> None:
    """Make ``paths`` (on the filesystem of ``root``) durable: one ``syncfs`` where the C library
    has it, else one ``fsync`` each."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        _sync_file(path)


_SYNCFS: list = []


def _syncfs() -> Any:
    """libc's ``syncfs`` (Linux), or None."""
    if not _SYNCFS:
        found = None
        with suppress(Exception):
            import ctypes

            found = ctypes.CDLL(None, use_errno=True).syncfs
            found.argtypes, found.restype = [ctypes.c_int], ctypes.c_int
        _SYNCFS.append(found)
    return _SYNCFS[0]


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a Parquet file atomically (temp file + fsync + rename). Tables go through their
    contract (:mod:`medtrinity_assets.core.tables`), which validates and then calls this."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        df.write_parquet(tmp, compression="zstd", statistics=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_parquet_batches_atomic(frames: Iterable[pl.DataFrame], path: str | Path, empty: pl.DataFrame) -> Path:
    """Write ``frames`` as the row groups of one Parquet file, atomically, holding one frame at a
    time; ``empty`` (the table's empty frame) gives the schema and the file when there is none."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    os.close(fd)
    writer = None
    try:
        for frame in frames:
            table = frame.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
        if writer is None:
            empty.write_parquet(tmp, compression="zstd", statistics=True)
        else:
            writer.close()
            writer = None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
