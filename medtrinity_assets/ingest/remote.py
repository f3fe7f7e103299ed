"""Sources whose root is an fsspec URL (s3://, gs://, https://, memory://, file://...).

The imaging readers work on local files (DICOM, NIfTI and PIL decoders seek freely), so a
remote source is first mirrored, file by file and streamed to disk, into a cache folder under
the output root. Files already mirrored with the same size are not fetched again, so a rerun
only transfers what changed. Paths that would leave the cache folder are refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from medtrinity_assets.ingest.registry import SourceSpec

CHUNK = 1 << 20


def mirror_remote_root(
    spec: SourceSpec, cache_root: str | Path, progress: Callable[[int, int], None] | None = None
) -> SourceSpec:
    """A copy of ``spec`` whose root is a local mirror of its remote root."""
    if not spec.is_remote:
        return spec
    import fsspec

    fs, _, (base,) = fsspec.get_fs_token_paths(spec.root)
    if not fs.exists(base) or not fs.isdir(base):
        from medtrinity_assets.ingest.readers.base import SourceRootMissing

        raise SourceRootMissing(spec.name, spec.root)
    dest = Path(cache_root).resolve() / spec.name
    dest.mkdir(parents=True, exist_ok=True)
    listing = [(p, info) for p, info in fs.find(base, detail=True).items() if info.get("type") == "file"]
    base_posix = PurePosixPath(base.rstrip("/"))
    for i, (path, info) in enumerate(sorted(listing)):
        rel = PurePosixPath(path).relative_to(base_posix)
        if ".." in rel.parts:
            continue
        target = (dest / Path(*rel.parts)).resolve()
        if dest not in target.parents:
            continue
        size = info.get("size")
        if target.exists() and size is not None and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        with fs.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        tmp.replace(target)
        if progress:
            progress(i + 1, len(listing))
    return spec.model_copy(update={"root": str(dest)})
