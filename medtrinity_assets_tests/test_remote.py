"""A source whose root is an fsspec URL is mirrored locally, then ingested like any other."""

from __future__ import annotations

from pathlib import Path

import fsspec
import polars as pl
import pytest

from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets.ingest.readers import SourceRootMissing
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.ingest.remote import mirror_remote_root


@pytest.fixture
def memory_source():
    import skimage

    fs = fsspec.filesystem("memory")
    data = Path(skimage.__file__).parent / "data"
    fs.pipe("/remote_bucket/fundus/images/retina.jpg", (data / "retina.jpg").read_bytes())
    fs.pipe("/remote_bucket/fundus/images/micro.png", (data / "microaneurysms.png").read_bytes())
    yield "memory://remote_bucket/fundus"
    fs.rm("/remote_bucket", recursive=True)


def spec_for(root: str) -> SourceSpec:
    return SourceSpec(
        name="remote_fundus", layout="image_folder", root=root, modality="Fundus", organ="retina", license="test"
    )


def test_remote_root_is_mirrored_and_ingested(memory_source, tmp_path):
    calls = []
    local = mirror_remote_root(spec_for(memory_source), tmp_path / "cache", progress=lambda d, t: calls.append(d))
    assert Path(local.root).is_dir() and not local.is_remote
    assert sorted(p.name for p in Path(local.root, "images").iterdir()) == ["micro.png", "retina.jpg"]
    assert len(calls) == 2
    result = ingest_source(local, tmp_path / "out", workers=1)
    assert (result.manifest["status"] == "ok").all() and result.images.height == 2
    # A rerun transfers nothing: the mirror is complete.
    calls.clear()
    again = mirror_remote_root(spec_for(memory_source), tmp_path / "cache", progress=lambda d, t: calls.append(d))
    assert again.root == local.root and calls == []
    assert pl.read_parquet(tmp_path / "out" / "source_manifest" / "remote_fundus.parquet").height == 2


def test_missing_remote_root_is_a_clear_error(tmp_path):
    with pytest.raises(SourceRootMissing, match="remote_fundus"):
        mirror_remote_root(spec_for("memory://nowhere/at/all"), tmp_path / "cache")
