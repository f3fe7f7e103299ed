"""The files of an index folder: their names, atomic writes, ``index.json`` and the embeddings.

The folder's layout is described in :mod:`medtrinity_assets.knowledge.index`. Every file is
written beside its final name and renamed into place once fsynced; its sha256 goes into
``index.json``, which is checked before any file is read back. ``embeddings.npy`` is read with
plain reads of a checked header (:class:`NpyRows`) or ``np.load(allow_pickle=False)``: nothing is
ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medtrinity_assets.core.storage import sha256_file, temp_file

INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "index.json"
FORMAT_VERSION = 1


class IndexIntegrityError(RuntimeError):
    """An index folder does not match its ``index.json`` record."""


def commit_file(tmp: str, path: Path) -> str:
    """fsync ``tmp``, rename it onto ``path``; returns the file's sha256."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


def tmp_beside(path: Path) -> str:
    """A new empty temporary file in ``path``'s folder (hidden, named after ``path``)."""
    fd, tmp = temp_file(path)
    os.close(fd)
    return tmp


def write_atomic(path: Path, writer: Callable[[str], object]) -> str:
    """Write through ``writer(tmp_path)`` then rename into place; returns the file's sha256."""
    tmp = tmp_beside(path)
    try:
        writer(tmp)
        return commit_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npy_header(fh: BinaryIO, n: int, d: int) -> None:
    """The ``.npy`` header of an ``n`` x ``d`` float32 C-order array; the rows follow as raw bytes."""
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})


def read_meta(index_dir: str | Path) -> dict:
    """The folder's ``index.json``, refused when unreadable or of another format version."""
    path = Path(index_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no index was built here")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(f"{path}: unreadable: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise IndexIntegrityError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def load_embeddings(index_dir: str | Path, meta: dict | None = None, mmap: bool = False) -> np.ndarray:
    """The stored embeddings (sha256-checked against ``index.json``), never unpickled."""
    index_dir = Path(index_dir)
    meta = meta or read_meta(index_dir)
    path = index_dir / EMBEDDINGS_FILE
    if sha256_file(path) != meta["files"][EMBEDDINGS_FILE]:
        raise IndexIntegrityError(f"{path}: sha256 does not match {META_FILE}")
    arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape != (meta["count"], meta["embedder"]["dim"]):
        raise IndexIntegrityError(f"{path}: unexpected array {arr.dtype} {arr.shape}")
    return arr


class NpyRows:
    """Rows of a float32 C-order ``.npy`` file, read with ``pread`` (never mmap, never unpickled).

    Plain reads land in the page cache, not in this process's resident set, so streaming a
    1.4 GiB embedding file through the index build costs one batch of RAM, not the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.fh = open(self.path, "rb")
        try:
            version = np.lib.format.read_magic(self.fh)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = reader(self.fh)
        except BaseException:
            self.fh.close()
            raise
        if dtype != np.float32 or fortran or len(shape) != 2:
            self.fh.close()
            raise IndexIntegrityError(f"{self.path}: unexpected array {dtype} {shape} fortran={fortran}")
        self.n, self.d = int(shape[0]), int(shape[1])
        self.offset = self.fh.tell()
        self.row_bytes = self.d * 4
        size = os.fstat(self.fh.fileno()).st_size
        if size != self.offset + self.n * self.row_bytes:
            self.fh.close()
            raise IndexIntegrityError(f"{self.path}: size {size} does not match its header {shape}")

    def _read(self, first: int, count: int, out: np.ndarray) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, want, done = self.offset + first * self.row_bytes, count * self.row_bytes, 0
        while done < want:
            got = os.preadv(self.fh.fileno(), [view[done:want]], pos + done)
            if got <= 0:
                raise IndexIntegrityError(f"{self.path}: short read")
            done += got

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order); contiguous runs are read with one call each."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.d), dtype=np.float32)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        s_idx = idx[order]
        if s_idx[0] < 0 or s_idx[-1] >= self.n:
            raise IndexError(f"row index out of range 0..{self.n - 1}")
        buf = np.empty_like(out)
        breaks = np.flatnonzero(np.diff(s_idx) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(s_idx)], strict=True):
            self._read(int(s_idx[a]), int(b - a), buf[a:b])
        out[order] = buf
        return out

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive rows, ``size`` at a time, in one reused buffer (copy a batch to keep it)."""
        buf = np.empty((min(size, max(self.n, 1)), self.d), dtype=np.float32)
        for s in range(0, self.n, size):
            m = min(size, self.n - s)
            self._read(s, m, buf[:m])
            yield buf[:m]

    def close(self) -> None:
        self.fh.close()
