"""Storage layout and durable writes shared by every stage.

Layout under an output root ``<out>`` (tables: see :mod:`medtrinity_assets.core.tables`):

- ``<out>/images/<sha[:2]>/<sha>.png`` — preprocessed images, content-addressed;
- ``<out>/masks/<sha[:2]>/<sha>.png`` — label maps aligned with their image.

Writes go to a temporary file in the same folder and are renamed into place, so a reader
never sees half a table and a killed run never leaves a truncated one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import polars as pl


def record_id(source: str, relpath: str, slice_index: int | None = None, frame: str = "") -> str:
    """Stable id of a 2D record: source, path relative to its root and slice."""
    key = f"{source}\x1f{relpath}\x1f{'' if slice_index is None else slice_index}\x1f{frame}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def content_path(out: str | Path, kind: str, sha256: str, suffix: str = ".png") -> Path:
    """Path of a content-addressed file (``kind`` is ``images`` or ``masks``)."""
    return Path(out) / kind / sha256[:2] / f"{sha256}{suffix}"


def relative_to_out(out: str | Path, path: str | Path) -> str:
    return Path(path).resolve().relative_to(Path(out).resolve()).as_posix()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes durably: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_content_file(path: str | Path, data: bytes) -> bool:
    """Write a content-addressed file once. Returns False when it already existed."""
    path = Path(path)
    if path.exists():
        return False
    atomic_write_bytes(path, data)
    return True


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a Parquet file atomically (temp file + fsync + rename). Tables go through their
    contract (:mod:`medtrinity_assets.core.tables`), which validates and then calls this."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
