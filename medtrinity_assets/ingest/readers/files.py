"""Safe paths under a source root: listing, containment, the root check."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medtrinity_assets.ingest.readers.base import InputRejected, SourceRootMissing, os_reason


def check_root(name: str, root: str) -> Path:
    if "://" in root:
        raise NotImplementedError(
            f"source '{name}': remote roots ({root}) are not read by the imaging stage yet"
        )
    path = Path(root)
    if not path.is_dir():
        raise SourceRootMissing(name, root)
    return path.resolve()


def resolve_inside(root: Path, relpath: str) -> Path:
    """Absolute path of ``relpath`` under ``root``; raises ``path_escapes_root`` when it leaves it."""
    rel = relpath.replace("\\", "/").strip()
    if not rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise InputRejected("path_escapes_root", "absolute or empty path")
    candidate = root / rel
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:
        raise InputRejected("path_escapes_root", f"cannot resolve: {type(exc).__name__}") from None
    if resolved != root and root not in resolved.parents:
        raise InputRejected("path_escapes_root", "resolves outside the source root")
    return resolved


def _matches(relpath: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(relpath, p) or Path(relpath).match(p) for p in patterns)


@dataclass
class FoundFile:
    relpath: str
    path: str | None  # resolved, absolute; None with a reason
    reason: str | None = None


def _found(root: Path, rel: str, folder: str, name: str, real_dir: str | None) -> FoundFile:
    """File ``name`` listed in ``folder``: resolved in its (resolved, inside the root) folder
    ``real_dir`` when it is not a link, else through :func:`resolve_inside` and looked at through
    the link."""
    try:
        if real_dir is not None and not stat.S_ISLNK(os.lstat(os.path.join(folder, name)).st_mode):
            return FoundFile(rel, os.path.join(real_dir, name))
        path = resolve_inside(root, rel)
        os.stat(path)  # a dangling link or a file gone since the listing
        return FoundFile(rel, str(path))
    except InputRejected as exc:
        return FoundFile(rel, None, exc.reason)
    except OSError as exc:
        return FoundFile(rel, None, os_reason(exc))


def list_files(
    root: Path,
    include: Sequence[str] = (),
    under: str = "",
    suffixes: Sequence[str] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> list[FoundFile]:
    """Files under ``root/under`` (sorted, hidden ones skipped), honouring ``include`` globs.

    Symlinks whose target leaves the root are returned with a ``path_escapes_root`` reason;
    directory symlinks are not followed. A file that cannot be looked at (a dangling link, one
    that vanished, no permission) and a folder that cannot be listed come back with an
    ``unreadable`` reason instead of stopping the scan. ``keep`` (a relative path -> bool) drops
    entries before they are looked at: one shard of a large source looks at its own files only.

    ``root`` is resolved (:func:`check_root`). A file costs one ``lstat``: a folder the walk reached
    without following a link lies where its resolved top folder says, so a file there that is not a
    link resolves to that folder and its name; only links are resolved (:func:`resolve_inside`) and
    looked through.
    """
    found = []
    for entry in _walk(root, include, under, suffixes):
        if keep is not None and not keep(entry[0]):
            continue
        found.append(_found(root, *entry) if len(entry) == 4 else FoundFile(*entry))
    return found


def list_relpaths(
    root: Path, include: Sequence[str] = (), under: str = "", suffixes: Sequence[str] | None = None
) -> list[str]:
    """The relative paths :func:`list_files` returns, in its order, without looking at any file
    (the folders' listings alone): enough to plan a source's shards."""
    return [entry[0] for entry in _walk(root, include, under, suffixes)]


def resolved_inside(root: Path, start: str | Path) -> str | None:
    """The resolved path of the folder ``start`` a walk begins at, when it lies inside the resolved
    ``root`` (a walk that follows no link then finds every folder where this says), else None: every
    file found is to be resolved on its own (``images/`` a link out of the root)."""
    real = os.path.realpath(start)
    inside = real == str(root) or real.startswith(str(root).rstrip("/") + "/")
    return real if inside else None


def _walk(
    root: Path, include: Sequence[str], under: str, suffixes: Sequence[str] | None
) -> list[tuple[str, str, str, str | None] | tuple[str, None, str]]:
    """Every entry :func:`list_files` reports, sorted by relative path: ``(rel, folder, name,
    resolved folder or None)`` for a listed file, ``(rel, None, reason)`` for a folder that could
    not be listed."""
    base = root / under if under else root
    if not base.is_dir():
        return []
    found: list = []
    real_base = resolved_inside(root, base)

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else base
        rel = where.relative_to(root).as_posix() if root in where.parents else (under or ".")
        found.append((rel, None, os_reason(exc)))

    ends = tuple(suffixes) if suffixes is not None else None
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False, onerror=unlisted):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        inner = os.path.relpath(dirpath, base)
        rel_dir = os.path.normpath(os.path.join(under, inner)) if under else inner
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        real_dir = None if real_base is None else real_base if inner == "." else os.path.join(real_base, inner)
        for fname in sorted(filenames):
            if fname.startswith(".") or (ends is not None and not fname.lower().endswith(ends)):
                continue
            rel = prefix + fname
            if include and not _matches(rel, include):
                continue
            found.append((rel, dirpath, fname, real_dir))
    found.sort(key=lambda entry: entry[0])
    return found
