"""Sources whose root is a URL: which protocols may be read, and the local mirror of a remote root.

A registry file is input like any other: whoever can write one must not be able to make the
pipeline copy private files. So a root URL is read only through a protocol the operator enabled
(:class:`RootPolicy`: by default the object stores whose fsspec driver is installed — ``s3``,
``gs``, ``az`` — and nothing else; ``http(s)``, ``memory``, ``sftp``... must be enabled), and a
``file://`` or ``local://`` URL only inside a folder the operator allowed (none by default: write
a plain path instead, which is read in place and never copied).

The imaging readers work on local files (DICOM, NIfTI and PIL decoders seek freely), so a remote
source is mirrored, file by file and streamed to disk, into ``<out>/_remote_cache/<source>/``:
only after the layout's required entry is found remotely, only the entries the layout reads, and
with the output's file permissions (:func:`medtrinity_assets.core.storage.file_mode`). Files
already mirrored with the same size are not fetched again; a mirror that fails, or whose source
fails, is removed (:func:`discard_mirror`). Paths that would leave the cache folder are refused.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from medtrinity_assets.core.storage import temp_file
from medtrinity_assets.ingest.readers.base import SourceRootMissing, missing_layout
from medtrinity_assets.ingest.registry import SourceSpec

CHUNK = 1 << 20
CACHE_DIR = "_remote_cache"
LOCAL_URL_PROTOCOLS = frozenset({"file", "local"})
#: fsspec drivers of object stores and the protocols they serve
OBJECT_STORES = {"s3fs": ("s3", "s3a"), "gcsfs": ("gs", "gcs"), "adlfs": ("az", "abfs", "abfss")}


class RootRefused(ValueError):
    """A source's root uses a protocol, or points to a place, the operator did not allow."""


def installed_object_stores() -> frozenset[str]:
    return frozenset(p for mod, protos in OBJECT_STORES.items() if importlib.util.find_spec(mod) for p in protos)


def protocols_of(url: str) -> list[str]:
    """Every protocol of an fsspec URL, chained ones included (``simplecache::s3://b`` -> simplecache, s3)."""
    return [part.split("://", 1)[0].lower() for part in url.split("::") if "://" in part]


@dataclass(frozen=True)
class RootPolicy:
    """Which root URLs a registry may use (set by the operator, never by a registry file)."""

    protocols: frozenset[str] | None = None  # None: the installed object stores
    local_bases: tuple[str, ...] = ()  # folders that file:// and local:// roots may point into

    def allowed(self) -> frozenset[str]:
        return installed_object_stores() if self.protocols is None else frozenset(self.protocols)

    def local_path(self, spec: SourceSpec) -> Path:
        """The folder a ``file://``/``local://`` root names, when it lies in an allowed base."""
        path = Path(unquote(urlparse(spec.root.split("::")[-1]).path)).resolve()
        for base in self.local_bases:
            b = Path(base).expanduser().resolve()
            if path == b or b in path.parents:
                return path
        where = ", ".join(self.local_bases) or "none is configured"
        raise RootRefused(
            f"source '{spec.name}': root {spec.root} is a local URL outside the allowed folders ({where}); "
            "write the folder as a plain path, or allow its base in the registry resource's local_url_bases"
        )

    def check(self, spec: SourceSpec) -> None:
        refused = [p for p in protocols_of(spec.root) if p not in self.allowed()]
        if refused:
            enabled = ", ".join(sorted(self.allowed())) or "none"
            raise RootRefused(
                f"source '{spec.name}': protocol {refused[0]!r} of root {spec.root} is not enabled "
                f"(enabled: {enabled}; add it to the registry resource's remote_protocols)"
            )


def prepare_root(
    spec: SourceSpec,
    cache_root: str | Path,
    policy: RootPolicy,
    requires: Sequence[str] = (),
    reads: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SourceSpec:
    """``spec`` with a root the readers can open: a plain path as it is, an allowed local URL as
    its path, a remote root mirrored (see the module docstring)."""
    if not spec.is_remote:
        return spec
    if set(protocols_of(spec.root)) <= LOCAL_URL_PROTOCOLS:
        return spec.model_copy(update={"root": str(policy.local_path(spec))})
    policy.check(spec)
    return mirror_remote_root(spec, cache_root, progress, requires=requires, reads=reads)


def _listing(fs, base: str, reads: Sequence[str] | None) -> list[tuple[str, dict]]:
    base_posix = PurePosixPath(base.rstrip("/"))
    out = []
    for path, info in fs.find(base, detail=True).items():
        if info.get("type") != "file":
            continue
        rel = PurePosixPath(path).relative_to(base_posix)
        if reads is not None and not any(fnmatch.fnmatchcase(rel.parts[0], r) for r in reads):
            continue
        out.append((path, info))
    return sorted(out)


def _require(fs, base: str, spec: SourceSpec, requires: Sequence[str]) -> None:
    if not requires:
        return
    error = missing_layout(spec, spec.root, (PurePosixPath(p).name for p in fs.ls(base, detail=False)), requires)
    if error is not None:
        raise error


def _copy(fs, path: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(target, ".part")
    try:
        with fs.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mirror_remote_root(
    spec: SourceSpec,
    cache_root: str | Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    requires: Sequence[str] = (),
    reads: Sequence[str] | None = None,
) -> SourceSpec:
    """A copy of ``spec`` whose root is a local mirror of its remote root (protocol checks are the
    caller's: see :func:`prepare_root`)."""
    import fsspec

    fs, _, (base,) = fsspec.get_fs_token_paths(spec.root)
    if not fs.exists(base) or not fs.isdir(base):
        raise SourceRootMissing(spec.name, spec.root)
    _require(fs, base, spec, requires)
    dest = Path(cache_root).resolve() / spec.name
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listing = _listing(fs, base, reads)
        base_posix = PurePosixPath(base.rstrip("/"))
        for i, (path, info) in enumerate(listing):
            rel = PurePosixPath(path).relative_to(base_posix)
            target = (dest / Path(*rel.parts)).resolve()
            if ".." in rel.parts or dest not in target.parents:
                continue
            size = info.get("size")
            if target.exists() and size is not None and target.stat().st_size == size:
                continue  # mirrored by an earlier run
            _copy(fs, path, target)
            if progress:
                progress(i + 1, len(listing))
    except BaseException:
        discard_mirror(cache_root, spec.name)
        raise
    return spec.model_copy(update={"root": str(dest)})


def discard_mirror(cache_root: str | Path, name: str) -> None:
    """Remove the local mirror of a source (after it failed)."""
    shutil.rmtree(Path(cache_root) / name, ignore_errors=True)
