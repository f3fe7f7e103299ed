"""``medtrinity prune``: content files no table names are listed, then removed with --apply; every
file a table names (by path or by hash) stays, and so do new files and every file when no table is found."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import polars as pl
import pytest
from PIL import Image

from medtrinity_assets.cli import main
from medtrinity_assets.core.prune import PruneRefused, plan_prune, prune
from medtrinity_assets.core.tables import PREPROCESSED_IMAGES
from medtrinity_assets.ingest.pipeline import ingest_source
from medtrinity_assets_tests.sources_builders import SKIMAGE_DATA, folder_source, make_spec


def _content(out) -> set[str]:
    return {p.relative_to(out).as_posix() for kind in ("images", "masks") for p in (out / kind).glob("*/*.png")}


def _age(out, days: float = 2) -> None:
    """Make every content file look written ``days`` ago (a previous build's)."""
    then = time.time() - days * 86400
    for rel in _content(out):
        os.utime(out / rel, (then, then))


def test_a_rebuild_leaves_files_prune_lists_then_removes(tmp_path, capsys):
    root = folder_source(tmp_path / "src", names=("ihc.png", "cell.png"))
    spec = make_spec(tmp_path, "fold", "image_folder", root, modality="Microscopy", organ="cell")
    out = tmp_path / "out"
    ingest_source(spec, out, workers=1)
    before = _content(out)
    _age(out)
    cell = np.asarray(Image.open(SKIMAGE_DATA / "cell.png"))
    Image.fromarray(255 - cell).save(root / "images" / "cell.png")  # the source's file changed
    ingest_source(spec, out, workers=1)
    named = set(PREPROCESSED_IMAGES.read(out, "fold")["image_path"])
    old = before - named
    assert len(old) == 1 and _content(out) == named | old  # the build removed nothing

    # a triplets table naming a file by its hash keeps it (the export names images so)
    sha = "f" * 64
    by_hash = out / "images" / "ff" / f"{sha}.png"
    by_hash.parent.mkdir(exist_ok=True)
    shutil.copy(out / next(iter(old)), by_hash)
    os.utime(by_hash, (time.time() - 86400,) * 2)
    (out / "triplets").mkdir()
    pl.DataFrame({"image_sha256": [sha]}).write_parquet(out / "triplets" / "fold.parquet")

    assert main(["prune", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "1 named by none" in said and "--apply" in said
    assert old <= _content(out)  # listing removes nothing
    assert main(["prune", "--out", str(out), "--apply"]) == 0
    assert "removed" in capsys.readouterr().out
    assert _content(out) == named | {f"images/ff/{sha}.png"}
    assert not plan_prune(out).unreferenced  # again: nothing left to remove


def test_new_files_and_roots_without_tables_are_never_pruned(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "images" / "ab").mkdir(parents=True)
    orphan = out / "images" / "ab" / ("ab" + "0" * 62 + ".png")
    orphan.write_bytes(b"png")
    with pytest.raises(PruneRefused, match="no table"):
        plan_prune(out)
    assert main(["prune", "--out", str(out), "--apply"]) == 2
    assert "prune refused" in capsys.readouterr().err and orphan.exists()
    PREPROCESSED_IMAGES.write(PREPROCESSED_IMAGES.empty(), out, "fold")
    plan = plan_prune(out)  # the file was just written: a build may be about to name it
    assert plan.young == 1 and not plan.unreferenced and prune(plan) == 0 and orphan.exists()
    assert [p.name for p in plan_prune(out, min_age_s=0).unreferenced] == [orphan.name]


def test_nothing_is_removed_while_a_run_is_in_progress(tmp_path, monkeypatch, capsys):
    """A build may be about to name an old file again (ingestion reuses a file it finds in place)."""
    import dagster as dg

    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    PREPROCESSED_IMAGES.write(PREPROCESSED_IMAGES.empty(), out, "fold")
    (out / "images" / "ab").mkdir(parents=True)
    orphan = out / "images" / "ab" / ("ab" + "0" * 62 + ".png")
    orphan.write_bytes(b"png")
    with dg.DagsterInstance.get() as instance:
        instance.add_run(dg.DagsterRun(job_name="ingest_job", run_id="0" * 36, status=dg.DagsterRunStatus.STARTED))
    assert main(["prune", "--out", str(out), "--min-age-hours", "0", "--apply"]) == 2
    assert "in progress" in capsys.readouterr().err and orphan.exists()
    with dg.DagsterInstance.get() as instance:
        instance.report_run_canceled(instance.get_run_by_id("0" * 36))
    assert main(["prune", "--out", str(out), "--min-age-hours", "0", "--apply"]) == 0
    assert not orphan.exists()


def test_a_root_whose_tables_name_no_content_is_refused(tmp_path):
    """Tables without a column that names images or masks (another layout) never make every file look unnamed."""
    out = tmp_path / "out"
    (out / "images" / "ab").mkdir(parents=True)
    (out / "images" / "ab" / ("ab" + "0" * 62 + ".png")).write_bytes(b"png")
    (out / "notes").mkdir()
    pl.DataFrame({"path": ["images/ab/x.png"]}).write_parquet(out / "notes" / "a.parquet")
    with pytest.raises(PruneRefused, match="no table"):
        plan_prune(out, min_age_s=0)
