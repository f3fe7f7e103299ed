"""What a source is now: its declaration and, for a local root, the files under it.

The registry sensor compares :func:`source_fingerprint` with the one recorded by the source's last
ingestion, so a new, changed or removed file requests that source's run just as an edited
declaration does. The file part is a hash of every file's relative path, size and modification
time (no file is opened): one ``stat`` per file, about a quarter of a second per 100,000 files. Remote roots
and sources declared with ``watch_files: false`` are compared by their declaration only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from medtrinity_assets.ingest.registry import SourceSpec


def _walk(folder: str, prefix: str = "") -> Iterator[tuple[str, int, int]]:
    """``(relative path, size, mtime in ns)`` of every file under ``folder``, in the order of their
    relative paths, hidden entries skipped, links to folders not followed.

    The order comes folder by folder (a subfolder's files sort as its name and a slash), so no list
    of the whole source is held; paths stay text (a ``Path`` per file tripled the cost)."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return
    found: list[tuple[str, str | None, os.stat_result | None]] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # .DS_Store, editors' swap files, our own mirrors' temp files
        try:
            if entry.is_dir(follow_symlinks=False):
                found.append((entry.name + "/", entry.path, None))
            elif entry.is_file():
                found.append((entry.name, None, entry.stat()))
        except OSError:
            continue
    found.sort(key=lambda item: item[0])
    for key, path, st in found:
        if st is None:
            yield from _walk(str(path), prefix + key)
        else:
            yield prefix + key, st.st_size, st.st_mtime_ns


def files_fingerprint(spec: SourceSpec) -> str:
    """Hash of the files under a local root ("" for a remote root, a missing one or ``watch_files: false``)."""
    if spec.is_remote or not spec.watch_files:
        return ""
    root = Path(spec.resolved_root())
    return tree_fingerprint(root) if root.exists() else ""


def tree_fingerprint(root: Path) -> str:
    """Hash of the relative path, size and modification time of a file, or of every file under a folder."""
    files = iter([(root.name, root.stat().st_size, root.stat().st_mtime_ns)]) if root.is_file() else _walk(str(root))
    digest = hashlib.sha256()
    while chunk := list(islice(files, 4096)):  # one update per few thousand files: the digest of one per file
        digest.update("".join(f"{rel}\0{size}\0{mtime}\n" for rel, size, mtime in chunk).encode())
    return digest.hexdigest()[:16]


def source_fingerprint(spec: SourceSpec, files: str | None = None) -> str:
    """The declaration's fingerprint combined with its files' (``files`` when already computed)."""
    files = files_fingerprint(spec) if files is None else files
    if not files:
        return spec.fingerprint()
    return hashlib.sha256(f"{spec.fingerprint()}:{files}".encode()).hexdigest()[:16]
