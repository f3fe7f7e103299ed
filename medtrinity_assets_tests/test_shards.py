"""Shards of a source (issue 15): how inputs are cut into shards, and a DICOM source ingested shard
by shard giving the rows of one ingestion (each shard reading only its own folders)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from medtrinity_assets.core.parts import part_name, shard_count, source_parts, split_part, stale_parts
from medtrinity_assets.core.tables import PREPROCESSED_IMAGES, SOURCE_MANIFEST
from medtrinity_assets.ingest import count_shards, ingest_source
from medtrinity_assets.ingest.registry import SourceSpec
from medtrinity_assets.ingest.shards import assign


def test_units_fill_shards_in_order_and_never_split():
    units = [("a", 3), ("b", 3), ("c", 5), ("d", 12), ("e", 1)]
    assert assign(units, 6) == {"a": 0, "b": 0, "c": 1, "d": 2, "e": 3}  # d, heavier than a shard, alone
    assert assign(units, 100) == dict.fromkeys("abcde", 0)
    assert [part_name("src", k) for k in range(3)] == ["src", "src@001", "src@002"]
    assert split_part("src@002") == ("src", 2) and split_part("src") == ("src", 0)


@pytest.fixture()
def dicom_folders(tmp_path, demo_dir) -> Path:
    """Three folders of real DICOM files: one file, two files (a study's two series), one file."""
    root = tmp_path / "dicom"
    layout = {"a": ["ct_head"], "b": ["xray_tibia", "mr_abdomen_liver"], "c": ["mr_shoulder"]}
    for folder, sources in layout.items():
        (root / folder).mkdir(parents=True)
        for name in sources:
            (src,) = sorted((demo_dir / name).rglob("*.dcm"))[:1]
            shutil.copy(src, root / folder / f"{name}.dcm")
    return root


def _spec(root: Path, shard_size: int) -> SourceSpec:
    return SourceSpec(name="dicom_sharded", layout="dicom", root=str(root), modality="CT", organ="body",
                      license="test", shard_size=shard_size)


def test_a_dicom_source_in_shards_gives_the_rows_of_one_ingestion(dicom_folders, tmp_path):
    out = tmp_path / "out"  # one output root: group ids are keyed per root
    whole = ingest_source(_spec(dicom_folders, 10_000), out, workers=1)
    assert whole.shards == 1 and whole.manifest.height == 4

    spec = _spec(dicom_folders, 2)
    assert count_shards(spec) == 3  # a | b (two files: a full shard) | c
    results = [ingest_source(spec, out, shard=k, workers=1) for k in range(3)]
    assert shard_count(out, spec.name) == 3 and source_parts(out, spec.name)[1] == "dicom_sharded@001"
    folders = [{r.split("/")[0] for r in res.manifest["relpath"]} for res in results]
    assert folders == [{"a"}, {"b"}, {"c"}], "each shard reads only its own folders"
    merged = pl.concat([SOURCE_MANIFEST.read(out, p) for p in source_parts(out, spec.name)])
    assert merged.sort("record_id").equals(whole.manifest.sort("record_id"))
    images = pl.concat([PREPROCESSED_IMAGES.read(out, p) for p in source_parts(out, spec.name)])
    assert images.sort("record_id").equals(whole.images.sort("record_id"))

    beyond = ingest_source(spec, out, shard=5, workers=1)  # a key past the last shard: empty, not an error
    assert beyond.manifest.height == 0 and beyond.shards == 3

    assert [p.stem for p in stale_parts(out, spec.name)] == ["dicom_sharded@005"] * 2  # its empty tables
    shrunk = ingest_source(_spec(dicom_folders, 10_000), out, workers=1)  # the same source, one shard now
    assert shrunk.shards == 1 and source_parts(out, spec.name) == ["dicom_sharded"]
    stale = stale_parts(out, spec.name)  # left on disk (never deleted behind the user's back), never read
    assert {p.parent.name for p in stale} == {"source_manifest", "preprocessed_images"}
    assert sorted({p.stem for p in stale}) == ["dicom_sharded@001", "dicom_sharded@002", "dicom_sharded@005"]


def test_dicom_shards_are_planned_from_listings_and_look_at_their_own_files(tmp_path):
    """The plan (files per folder) comes from the folders' listings, only DICOMDIR entries looked at;
    a shard looks at its own files only. Both equal what looking at every file gives."""
    from collections import Counter

    from medtrinity_assets.ingest.readers import reader_for
    from medtrinity_assets.ingest.readers.dicom_headers import list_dicom
    from medtrinity_assets.ingest.readers.files import list_files
    from medtrinity_assets.ingest.shards import plan_shards
    from medtrinity_assets_tests.sources_builders import pydicom_file

    root = tmp_path / "src"
    for folder, n in (("a", 3), ("b/c", 2), ("d", 4), ("", 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            shutil.copy(pydicom_file("CT_small.dcm"), root / folder / f"s{k}.dcm")
    shutil.copy(pydicom_file("CT_small.dcm"), root / "DICOMDIR")  # an index: skipped
    (root / "b" / "DICOMDIR").symlink_to(root / "gone")  # cannot be looked at: a rejected input
    (root / "d" / "out.dcm").symlink_to("/etc/hostname")
    (root / "d" / ".hidden.dcm").write_bytes(b"x")
    root = root.resolve()
    spec = SourceSpec(name="dcm", layout="dicom", root=str(root), modality="CT", organ="head", license="test",
                      shard_size=3)
    reader = reader_for("dicom")
    every = list_dicom(list_files(root))
    units = sorted(Counter(reader.shard_unit(f.relpath) for f in every).items())
    assert reader.shard_units(spec, root) == units and ("b", 1) in units  # the DICOMDIR link counts
    plan = plan_shards(units, 3, reader.shard_unit)
    assert plan.count >= 3
    for shard in range(plan.count):
        keeps = plan.keeps(shard)
        assert list_dicom(list_files(root, keep=keeps)) == [f for f in every if keeps(f.relpath)]


def _msd_copies(tmp_path: Path, n: int) -> Path:
    """An MSD folder of ``n`` volumes made from nibabel's anatomical one (33 × 41 × 25, axial along the
    last axis), each flipped its own way (so that none duplicates another), with their labels."""
    import nibabel as nib
    import numpy as np

    from medtrinity_assets_tests.sources_builders import msd_source

    root = msd_source(tmp_path / "msd")
    for k in range(2, n + 1):
        for under in ("imagesTr", "labelsTr"):
            img = nib.load(root / under / "anat_001.nii.gz")
            data = np.flip(np.asarray(img.dataobj), axis=(k - 2) % 2)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine), root / under / f"anat_{k:03d}.nii.gz")
    return root


def _msd_spec(root: Path, shard_size: int, axis: str = "auto") -> SourceSpec:
    return SourceSpec(name="msd_sharded", layout="nifti_msd", root=str(root), modality="MRI", organ="brain",
                      license="test", shard_size=shard_size, slicing={"axis": axis})


def test_a_volume_weighs_its_slices_in_a_shard_plan(tmp_path):
    """A NIfTI shard holds about ``shard_size`` slices, not volumes: each volume weighs the slices
    its header gives along the axis the source cuts, and the shards' rows equal one ingestion's."""
    root = _msd_copies(tmp_path, 3)
    assert count_shards(_msd_spec(root, 10_000)) == 1
    assert count_shards(_msd_spec(root, 50)) == 2  # 25 + 25 axial slices | 25
    assert count_shards(_msd_spec(root, 30)) == 3  # 25 | 25 | 25
    assert count_shards(_msd_spec(root, 70, axis="coronal")) == 3  # 41 coronal slices each
    assert count_shards(_msd_spec(root, 70, axis="sagittal")) == 2  # 33 + 33 | 33

    out = tmp_path / "out"
    whole = ingest_source(_msd_spec(root, 10_000), out, workers=1)
    assert whole.shards == 1 and whole.counts["duplicate"] == 0
    spec = _msd_spec(root, 50)
    results = [ingest_source(spec, out, shard=k, workers=1) for k in range(2)]
    volumes = [{r.split("/")[-1] for r in res.manifest["relpath"]} for res in results]
    assert volumes == [{"anat_001.nii.gz", "anat_002.nii.gz"}, {"anat_003.nii.gz"}]
    assert all(res.images.height <= 50 for res in results), "a shard never yields more than its slices"
    merged = pl.concat([SOURCE_MANIFEST.read(out, p) for p in source_parts(out, spec.name)])
    assert merged.sort("record_id").equals(whole.manifest.sort("record_id"))


def test_a_shard_plan_reads_a_volume_header_again_only_when_the_file_changed(tmp_path, monkeypatch):
    """Every shard's run plans the whole source; a volume's slice count is read from its header once
    and remembered (keyed by a keyed hash of path, size and mtime: no path in the memo), so later
    plans read only new or changed files; a damaged memo is read past."""
    import os

    from medtrinity_assets.ingest.readers import nifti

    monkeypatch.setenv("MEDTRINITY_CACHE", str(tmp_path / "cache"))
    reads: list[str] = []
    real = nifti._header_counts
    monkeypatch.setattr(nifti, "_header_counts", lambda path, axis: reads.append(path) or real(path, axis))
    root = _msd_copies(tmp_path, 3)
    spec = _msd_spec(root, 30)
    assert count_shards(spec) == 3 and len(reads) == 3
    assert count_shards(spec) == 3 and len(reads) == 3, "an unchanged source reads no header"

    changed = root / "imagesTr" / "anat_002.nii.gz"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert count_shards(spec) == 3 and reads[3:] == [str(changed)]
    assert count_shards(_msd_spec(root, 70, axis="coronal")) == 3 and len(reads) == 7  # other counts: read

    memos = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert memos and all(b"anat_" not in p.read_bytes() and str(root).encode() not in p.read_bytes() for p in memos)
    for p in memos:
        if p.suffix == ".json":  # the memo (beside its hash and the key)
            p.write_bytes(b"damaged")
    assert count_shards(spec) == 3 and len(reads) == 10


def _odd_dicom_tree(root: Path) -> Path:
    """Folders of (unread) DICOM-named files at several depths, with what a listing must step around:
    hidden entries, a link to a folder (not followed), a link to a file, a DICOMDIR index (skipped),
    a DICOMDIR link that cannot be followed (a rejected input), files beside subfolders."""
    for folder, n in (("p1/s1", 3), ("p1/s2", 2), ("p1", 1), ("p2/s1/x", 4), ("p3", 2), ("", 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            (root / folder / f"im{k}.dcm").write_bytes(b"x")
    (root / "p1" / "s1" / ".hidden.dcm").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "a.dcm").write_bytes(b"x")
    (root / "p2" / "s1" / "linked").symlink_to(root / "p3", target_is_directory=True)
    (root / "p3" / "other.txt").symlink_to(root / "p1" / "im0.dcm")
    (root / "p1" / "s2" / "DICOMDIR").write_bytes(b"x")
    (root / "p2" / "DICOMDIR").symlink_to(root / "gone")
    return root.resolve()


@pytest.mark.parametrize("include", [[], ["p1/*", "*.dcm"]])
def test_dicom_folder_counts_are_remembered_and_equal_a_full_listing(tmp_path, monkeypatch, include):
    """A plan from the folder memo equals one from listing every file, cold and warm; a warm plan lists
    only folders with subfolders and folders that changed; a shard lists its own folders; a folder that
    cannot be listed is a rejected input of its parent's unit either way; the memo holds no path."""
    import os
    from collections import Counter

    from medtrinity_assets.ingest.readers import folder_units, reader_for
    from medtrinity_assets.ingest.readers.dicom_headers import is_dicomdir, list_dicom
    from medtrinity_assets.ingest.readers.files import list_files
    from medtrinity_assets.ingest.readers.plan_memo import PlanMemo
    from medtrinity_assets.ingest.shards import plan_shards
    from medtrinity_assets_tests.sources_builders import spy_on_listings

    monkeypatch.setenv("MEDTRINITY_CACHE", str(tmp_path / "cache"))
    root = _odd_dicom_tree(tmp_path / "src")
    listed = spy_on_listings(monkeypatch, root, refuse="p3")
    spec = SourceSpec(name="odd", layout="dicom", root=str(root), modality="CT", organ="head", license="test",
                      shard_size=3, include=include)
    reader = reader_for("dicom")
    every = list_dicom(list_files(root, include))
    assert any(f.relpath == "p3" and f.path is None for f in every), "the unlistable folder is an input"
    reference = sorted(Counter(reader.shard_unit(f.relpath) for f in every).items())
    plan = plan_shards(reference, 3, reader.shard_unit)
    assert plan.count >= 2

    def walk(shard=None):
        wanted = None if shard is None else plan.keeps_unit(shard)
        memo = PlanMemo(root, f"dicom_folders\0{sorted(include)}")
        found = folder_units.walk_folders(root, include, memo=memo, wanted=wanted,
                                          counts_file=lambda rel: not is_dicomdir(rel))
        memo.save()
        return found

    assert reader.shard_units(spec, root) == reference  # cold: nothing remembered (all changed just now)
    monkeypatch.setattr(folder_units, "SETTLE_S", 0.0)  # as if 2 s had passed since the tree was made
    assert reader.shard_units(spec, root) == reference  # remembers the folders, now settled
    listed.clear()
    assert reader.shard_units(spec, root) == reference
    always = {".", "p1", "p2", "p2/s1", "p3", "p1/s2"}  # subfolders, a DICOMDIR, unlistable
    assert set(listed) == always and len(listed) == len(always), "a settled leaf folder is not listed again"
    for shard in range(plan.count):
        listed.clear()
        keeps = plan.keeps(shard)
        assert list_dicom(walk(shard).found) == [f for f in every if keeps(f.relpath)]
        own = {unit for unit, k in plan.shard_of_unit.items() if k == shard}
        assert set(listed) - always <= {u or "." for u in own}

    (root / "p1" / "s1" / "im9.dcm").write_bytes(b"x")  # a new file: the folder changed
    listed.clear()
    units = dict(walk().units())
    counted = 4 if not include or "*.dcm" in include else 3
    assert "p1/s1" in listed and units["p1/s1"] == counted
    stamp = os.stat(root / "p1" / "s1")
    (root / "p1" / "s1" / "im10.dcm").write_bytes(b"x")  # another, its folder's mtime set back (cp -a, rsync -a)
    os.utime(root / "p1" / "s1", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    listed.clear()
    assert "p1/s1" in listed or dict(walk().units())["p1/s1"] == counted + 1
    assert dict(walk().units())["p1/s1"] == counted + 1, "the change time gives it away"

    (root / "p4").mkdir()  # a folder holding a dangling link (an input, refused later) is never remembered
    (root / "p4" / "a.dcm").write_bytes(b"x")
    (root / "p4" / "l.dcm").symlink_to(root / "gone")
    assert dict(walk().units())["p4"] == 2
    (root / "gone").mkdir()  # the link now names a folder, which the listing does not follow
    listed.clear()
    assert dict(walk().units())["p4"] == 1 and "p4" in listed
    assert walk().units() == sorted(Counter(reader.shard_unit(f.relpath) for f in list_dicom(list_files(root, include))).items())
    memos = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert memos and all(b"p1" not in p.read_bytes() and str(root).encode() not in p.read_bytes() for p in memos)
