"""Folders as shard units, planned without listing every file on every shard's run.

A reader whose shard unit is a folder (DICOM: a series stays whole) plans its shards from how many
inputs each folder holds, and every shard's run plans the whole source (a shard is a stretch of the
sorted folders). Listing every file of a 12M-file source costs about a minute, a thousand times over
for its thousand shards. Here a folder's count is kept in a :class:`HeaderMemo` keyed by the folder's
path, size and modification time (which change when an entry is added, removed or renamed in it):
a run looks at a folder without subfolders again only when it changed, so planning costs a ``stat``
per folder, and a shard lists only its own folders' files.

What the walk reports is what :func:`~medtrinity_assets.ingest.readers.files.list_files` reports,
folder by folder (hidden entries skipped, links to folders not followed, ``include`` globs, a folder
that cannot be listed as an input of its parent folder's unit), so a plan or a shard's inputs are the
same with a memo, without one, or from a full listing (the tests hold them to it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medtrinity_assets.ingest.readers.base import os_reason
from medtrinity_assets.ingest.readers.files import FoundFile, _found, _matches
from medtrinity_assets.ingest.readers.header_memo import HeaderMemo

#: a folder's count is remembered once it has not changed for this long (see :mod:`.header_memo`)
SETTLE_S = 2.0


@dataclass
class FolderWalk:
    """Inputs per folder (relative path, ``""`` for the root) and the inputs of the wanted folders."""

    counts: dict[str, int] = field(default_factory=dict)
    found: list[FoundFile] = field(default_factory=list)

    def units(self) -> list[tuple[str, int]]:
        return sorted((unit, n) for unit, n in self.counts.items() if n)


def walk_folders(
    root: Path,
    include: Sequence[str] = (),
    *,
    memo: HeaderMemo | None = None,
    wanted: Callable[[str], bool] | None = None,
    counts_file: Callable[[str], bool] | None = None,
) -> FolderWalk:
    """Count the inputs of every folder under the resolved ``root`` and list those of the folders
    ``wanted`` says yes to (as :class:`FoundFile`, looked at as ``list_files`` looks, sorted).

    ``counts_file(relpath)`` says whether a listed file is an input (default: all); one it says no to
    is looked at (resolved) and counts only when that fails, as a rejected input. A folder holding such
    a file is never remembered (a link's target can come or go without the folder changing).
    """
    real_root = str(root) if os.path.realpath(root) == str(root) else None  # else every file is resolved
    walk = FolderWalk()
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else str(root)
        take = wanted is not None and wanted(rel)
        known = None if memo is None or take else memo.known(path)
        if known is not None and known[1] == 0:  # unchanged, no subfolder: its count is enough
            walk.counts[rel] = walk.counts.get(rel, 0) + known[0]
            continue
        try:
            folder = _Folder(root, rel, path, include, counts_file)
        except OSError as exc:  # not listable: an input of its parent folder's unit
            _add_unlisted(walk, rel, os_reason(exc), wanted)
            continue
        walk.counts[rel] = walk.counts.get(rel, 0) + folder.count
        if take:
            real = None if real_root is None else (os.path.join(real_root, rel) if rel else real_root)
            walk.found.extend(folder.found(root, real))
        if memo is not None and folder.stable:
            memo.remember(path, (folder.count, len(folder.subfolders)), settle_s=SETTLE_S)
        stack.extend(reversed(folder.subfolders))
    walk.found.sort(key=lambda f: f.relpath)
    return walk


def _add_unlisted(walk: FolderWalk, rel: str, reason: str, wanted: Callable[[str], bool] | None) -> None:
    unit = rel.rsplit("/", 1)[0] if "/" in rel else ""
    walk.counts[unit] = walk.counts.get(unit, 0) + 1
    if wanted is not None and wanted(unit):
        walk.found.append(FoundFile(rel or ".", None, reason))


class _Folder:
    """One folder's listing: its input files' names, those of its subfolders to walk (relative paths,
    sorted), its count of inputs and whether that count may be remembered. Raises OSError when the
    folder cannot be listed."""

    def __init__(self, root: Path, rel: str, path: str, include: Sequence[str],
                 counts_file: Callable[[str], bool] | None) -> None:
        with os.scandir(path) as entries:
            listed = [(e.name, _is_dir(e), e.is_symlink()) for e in entries if not e.name.startswith(".")]
        self.path, self.prefix = path, f"{rel}/" if rel else ""
        self.subfolders = sorted(self.prefix + name for name, is_dir, link in listed if is_dir and not link)
        names = [name for name, is_dir, _ in listed if not is_dir]
        if include:
            names = [name for name in names if _matches(self.prefix + name, include)]
        self.refused: dict[str, FoundFile] = {}  # files counted only because looking at them failed
        self.stable = True
        if counts_file is not None:
            others = [name for name in names if not counts_file(self.prefix + name)]
            self.stable = not others
            for name in others:
                looked = _found(root, self.prefix + name, path, name, path)
                if looked.path is None:
                    self.refused[name] = looked
            skip = set(others) - set(self.refused)
            names = [name for name in names if name not in skip]
        self.names = sorted(names)
        self.count = len(self.names)

    def found(self, root: Path, real_dir: str | None) -> list[FoundFile]:
        """The folder's inputs as ``list_files`` gives them (``real_dir``: the folder's resolved path)."""
        return [self.refused.get(name) or _found(root, self.prefix + name, self.path, name, real_dir)
                for name in self.names]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
