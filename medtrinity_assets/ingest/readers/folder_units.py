"""Folders as shard units, planned without listing every file on every shard's run.

A reader whose shard unit is a folder (DICOM: a series stays whole) plans its shards from how many
inputs each folder holds, and every shard's run plans the whole source (a shard is a stretch of the
sorted folders). Listing every file of a 12M-file source costs about a minute, a thousand times over
for its thousand shards. Here a folder's count is kept in a :class:`PlanMemo` keyed by the folder's
path, inode, size, modification and change times (the change time moves when an entry is added,
removed or renamed in it, or its permissions change): a run looks at a folder without subfolders
again only when it changed, so planning costs a ``stat`` per folder, and a shard lists only its own
folders' files.

A reader whose unit is a file (an image folder) cuts the sorted files into consecutive shards of
``shard_size``: shard ``k`` holds the files ranked ``k * size`` to ``(k + 1) * size`` in the order
``list_files`` gives them. :func:`walk_ranked` walks the folders in that order, adding up counts, and
lists a remembered folder without subfolders only when its files' ranks meet the shard's: a plan is
a total, not a table of every file. (A folder's files are one stretch of that order: every path in it
starts with the folder's path and a slash.)

What the walks report is what :func:`~medtrinity_assets.ingest.readers.files.list_files` reports,
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
from medtrinity_assets.ingest.readers.files import FoundFile, _found, _matches, resolved_inside
from medtrinity_assets.ingest.readers.plan_memo import PlanMemo

#: a folder's count is remembered once it has not changed for this long (see :mod:`.plan_memo`)
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
    under: str = "",
    memo: PlanMemo | None = None,
    wanted: Callable[[str], bool] | None = None,
    keep: Callable[[str], bool] | None = None,
    counts_file: Callable[[str], bool] | None = None,
) -> FolderWalk:
    """Count the inputs of every folder under the resolved ``root`` and list those of the folders
    ``wanted`` says yes to (as :class:`FoundFile`, looked at as ``list_files`` looks, sorted), and of
    those only the ones ``keep`` (a relative path -> bool) accepts, dropped before they are looked at.

    ``counts_file(relpath)`` says whether a listed file is an input (default: all); one it says no to
    is looked at (resolved) and counts only when that fails, as a rejected input. A folder holding such
    a file, or any link, is never remembered (a link's target can come or go without the folder changing).
    """
    walk = FolderWalk()
    if under and not (root / under).is_dir():
        return walk
    real_of = _resolver(root, under)
    stack = [under]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else str(root)
        take = wanted is not None and wanted(rel)
        known = None if memo is None or take else memo.known(path)
        if known is not None and known[1] == 0:  # unchanged, no subfolder: its count is enough
            walk.counts[rel] = walk.counts.get(rel, 0) + known[0]
            continue
        try:
            folder = _Folder(root, rel, path, real_of(rel), include, counts_file)
        except OSError as exc:  # not listable: an input of its parent folder's unit
            _add_unlisted(walk, rel, os_reason(exc), wanted, keep)
            continue
        walk.counts[rel] = walk.counts.get(rel, 0) + folder.count
        if take:
            walk.found.extend(folder.found(root, keep))
        if memo is not None and folder.stable:
            memo.remember(path, (folder.count, len(folder.subfolders)), settle_s=SETTLE_S)
        stack.extend(reversed(folder.subfolders))
    walk.found.sort(key=lambda f: f.relpath)
    return walk


def _resolver(root: Path, under: str) -> Callable[[str], str | None]:
    """Folder (relative path, at or below ``under``) -> its resolved path, as ``list_files`` finds it
    (:func:`~medtrinity_assets.ingest.readers.files.resolved_inside`; None: resolve every file)."""
    real_base = resolved_inside(root, os.path.join(root, under) if under else root)
    if real_base is None:
        return lambda rel: None
    return lambda rel: os.path.join(real_base, rel[len(under):].lstrip("/")) if rel != under else real_base


@dataclass
class RankedWalk:
    """How many inputs a folder holds, and those ranked in a shard's stretch, as ``list_files`` gives them."""

    total: int = 0
    found: list[FoundFile] = field(default_factory=list)


def walk_ranked(
    root: Path, under: str, include: Sequence[str] = (), *, memo: PlanMemo | None = None, lo: int = 0, hi: int = 0
) -> RankedWalk:
    """Count the inputs under ``root/under`` (in ``list_files``'s order) and list those ranked in
    ``[lo, hi)``; a remembered folder without subfolders outside that stretch costs a ``stat``."""
    walk = RankedWalk()
    path = os.path.join(root, under)
    if os.path.isdir(path):
        known = None if memo is None else memo.known(path)
        _rank_folder(root, under, known, include, memo, (lo, hi), _resolver(root, under), walk)
    return walk


def _rank_folder(root: Path, rel: str, known: tuple[int, ...] | None, include: Sequence[str], memo: PlanMemo | None,
                 stretch: tuple[int, int], real_of: Callable[[str], str | None], walk: RankedWalk) -> None:
    """Add folder ``rel`` (``known``: its remembered counts) to ``walk``: its files and subfolders in
    order of their paths (a subfolder's files sort as its name and a slash; one that cannot be listed
    is an input sorting as its name)."""
    lo, hi = stretch
    path = os.path.join(root, rel) if rel else str(root)
    if known is not None and known[1] == 0 and not (walk.total < hi and walk.total + known[0] > lo):
        walk.total += known[0]
        return
    real = real_of(rel)
    try:
        folder = _Folder(root, rel, path, real, include, None)
    except OSError as exc:
        _rank_unlisted(walk, rel, os_reason(exc), stretch)
        return
    if memo is not None and folder.stable:
        memo.remember(path, (folder.count, len(folder.subfolders)), settle_s=SETTLE_S)
    entries: list[tuple[str, str, str, tuple[int, ...] | None]] = [(name, "file", name, None) for name in folder.names]
    for sub in folder.subfolders:
        name = sub[len(folder.prefix):]
        sub_known = None if memo is None else memo.known(os.path.join(root, sub))
        reason = None if sub_known is not None else _unlistable(os.path.join(root, sub))
        entries.append((name, "unlisted", reason, None) if reason else (name + "/", "folder", sub, sub_known))
    for key, kind, what, sub_known in sorted(entries, key=lambda e: e[0]):
        if kind == "folder":
            _rank_folder(root, what, sub_known, include, memo, stretch, real_of, walk)
        elif kind == "unlisted":
            _rank_unlisted(walk, folder.prefix + key, what, stretch)
        else:
            if lo <= walk.total < hi:
                walk.found.append(_found(root, folder.prefix + key, path, key, real))
            walk.total += 1


def _unlistable(path: str) -> str | None:
    """Why a folder cannot be listed (None: it can)."""
    try:
        with os.scandir(path):
            return None
    except OSError as exc:
        return os_reason(exc)


def _rank_unlisted(walk: RankedWalk, rel: str, reason: str, stretch: tuple[int, int]) -> None:
    if stretch[0] <= walk.total < stretch[1]:
        walk.found.append(FoundFile(rel or ".", None, reason))
    walk.total += 1


def _add_unlisted(walk: FolderWalk, rel: str, reason: str, wanted: Callable[[str], bool] | None,
                  keep: Callable[[str], bool] | None) -> None:
    unit = rel.rsplit("/", 1)[0] if "/" in rel else ""
    walk.counts[unit] = walk.counts.get(unit, 0) + 1
    if wanted is not None and wanted(unit) and (keep is None or keep(rel or ".")):
        walk.found.append(FoundFile(rel or ".", None, reason))


class _Folder:
    """One folder's listing: its input files' names, those of its subfolders to walk (relative paths,
    sorted), its count of inputs and whether that count may be remembered. Raises OSError when the
    folder cannot be listed."""

    def __init__(self, root: Path, rel: str, path: str, real: str | None, include: Sequence[str],
                 counts_file: Callable[[str], bool] | None) -> None:
        with os.scandir(path) as entries:
            listed = [(e.name, _is_dir(e), _is_link(e)) for e in entries if not e.name.startswith(".")]
        self.path, self.real, self.prefix = path, real, f"{rel}/" if rel else ""
        self.subfolders = sorted(self.prefix + name for name, is_dir, link in listed if is_dir and not link)
        names = [name for name, is_dir, _ in listed if not is_dir]
        if include:
            names = [name for name in names if _matches(self.prefix + name, include)]
        self.refused: dict[str, FoundFile] = {}  # files counted only because looking at them failed
        # a link's target can come, go or change kind without the folder changing: never remembered
        self.stable = not any(link for _, _, link in listed)
        if counts_file is not None:
            others = [name for name in names if not counts_file(self.prefix + name)]
            self.stable = self.stable and not others
            for name in others:
                looked = _found(root, self.prefix + name, path, name, real)
                if looked.path is None:
                    self.refused[name] = looked
            skip = set(others) - set(self.refused)
            names = [name for name in names if name not in skip]
        self.names = sorted(names)
        self.count = len(self.names)

    def found(self, root: Path, keep: Callable[[str], bool] | None = None) -> list[FoundFile]:
        """The folder's inputs (those ``keep`` accepts) as ``list_files`` gives them."""
        return [self.refused.get(name) or _found(root, self.prefix + name, self.path, name, self.real)
                for name in self.names if keep is None or keep(self.prefix + name)]


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:  # as os.path.islink, which os.walk asks
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
