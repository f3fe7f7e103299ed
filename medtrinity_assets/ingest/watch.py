"""What a source is now: its declaration and, for a local root, the files under it.

The registry sensor compares :func:`source_fingerprint` with the one recorded by the source's last
ingestion, so a new, changed or removed file requests that source's run just as an edited
declaration does. The file part is a hash of every file's relative path, size and modification
time (no file is opened): one ``stat`` per file, about a second per 100,000 files. Remote roots
and sources declared with ``watch_files: false`` are compared by their declaration only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medtrinity_assets.ingest.registry import SourceSpec


def _walk(root: Path):
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .DS_Store, editors' swap files, our own mirrors' temp files
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file():
                try:
                    st = entry.stat()
                except OSError:
                    continue
                yield Path(entry.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns


def files_fingerprint(spec: SourceSpec) -> str:
    """Hash of the files under a local root ("" for a remote root, a missing one or ``watch_files: false``)."""
    if spec.is_remote or not spec.watch_files:
        return ""
    root = Path(spec.resolved_root())
    if not root.exists():
        return ""
    digest = hashlib.sha256()
    items = [(root.name, root.stat().st_size, root.stat().st_mtime_ns)] if root.is_file() else sorted(_walk(root))
    for rel, size, mtime in items:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def source_fingerprint(spec: SourceSpec, files: str | None = None) -> str:
    """The declaration's fingerprint combined with its files' (``files`` when already computed)."""
    files = files_fingerprint(spec) if files is None else files
    if not files:
        return spec.fingerprint()
    return hashlib.sha256(f"{spec.fingerprint()}:{files}".encode()).hexdigest()[:16]
