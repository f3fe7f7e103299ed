"""A second `medtrinity build` skips what is up to date and runs what changed (and what follows it):
a source's new file, a changed setting, a deleted output, or `--force`."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import skimage

from medtrinity_assets.cli import main

SAMPLES = Path(skimage.__file__).parent / "data"


def _source(reg: Path, root: Path, name: str, images: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    for image in images:
        shutil.copy(SAMPLES / image, root / "images" / image)
    (reg / f"{name}.yaml").write_text(
        f"name: {name}\nlayout: image_folder\nroot: {root}\nmodality: Histopathology\norgan: colon\n"
        "license: test\nsynthetic: false\n"
    )


@pytest.fixture()
def registry(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    reg = tmp_path / "registry"
    reg.mkdir()
    _source(reg, tmp_path / "a", "src_a", ["ihc.png"])
    _source(reg, tmp_path / "b", "src_b", ["cell.png"])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return reg, tmp_path / "out", tmp_path


def _build(capsys, reg: Path, out: Path, *extra: str) -> tuple[int, str, dict[str, int]]:
    """Exit code, what was printed, and the runs in the instance per source after the build."""
    code = main(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images", *extra])
    printed = capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:
        runs: dict[str, int] = {}
        for record in instance.get_run_records():
            source = record.dagster_run.tags.get("medtrinity/source", "")
            runs[source] = runs.get(source, 0) + 1
    return code, printed, runs


def test_a_rebuild_skips_what_is_up_to_date_and_runs_what_changed(registry, capsys):
    from medtrinity_assets.defs import stamps

    reg, out, base = registry
    code, printed, runs = _build(capsys, reg, out)
    assert code == 0 and "skipped" not in printed
    assert runs == {"src_a": 1, "src_b": 1}
    manifest = out / "source_manifest" / "src_a.parquet"
    made = manifest.stat().st_mtime_ns

    hashed: list[str] = []  # a skipped run is read by the content stamp its build recorded, not hashed again
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stamps, "sha256_file", lambda path: hashed.append(str(path)) or "")
        code, printed, runs = _build(capsys, reg, out)  # nothing changed: nothing runs
    assert hashed == []
    assert code == 0 and "2 of 2 run(s) skipped: up to date" in printed, printed
    assert "nothing to run, all 2 source(s) are up to date" in printed
    assert runs == {"src_a": 1, "src_b": 1}
    assert manifest.stat().st_mtime_ns == made

    shutil.copy(SAMPLES / "cell.png", base / "a" / "images" / "cell.png")  # a new file in one source
    code, printed, runs = _build(capsys, reg, out)
    assert code == 0 and "1 of 2 run(s) skipped" in printed, printed
    assert runs == {"src_a": 2, "src_b": 1}

    (out / "preprocessed_images" / "src_b.parquet").unlink()  # an output deleted: made again
    code, printed, runs = _build(capsys, reg, out)
    assert runs == {"src_a": 2, "src_b": 2}
    assert (out / "preprocessed_images" / "src_b.parquet").exists()

    settings = base / "settings.yaml"  # a setting ingestion does not read: nothing runs
    settings.write_text("knowledge:\n  top_k: 3\n")
    code, printed, runs = _build(capsys, reg, out, "--config", str(settings))
    assert code == 0 and "2 of 2 run(s) skipped" in printed, printed
    settings.write_text("knowledge:\n  top_k: 3\ncompute:\n  batch_size: 16\n")  # one it reads: all run
    code, printed, runs = _build(capsys, reg, out, "--config", str(settings))
    assert code == 0 and "skipped" not in printed
    assert runs == {"src_a": 3, "src_b": 3}

    code, printed, runs = _build(capsys, reg, out, "--config", str(settings), "--force")
    assert code == 0 and "skipped" not in printed
    assert runs == {"src_a": 4, "src_b": 4}


def test_a_touched_file_reruns_its_ingestion_and_nothing_after_it(registry, capsys):
    """A file touched but not changed runs its source's ingestion again (its time changed); that
    makes the same tables, so neither the shared expert models nor the source's ROIs run again."""
    import os

    reg, out, base = registry
    code, printed, runs = _build(capsys, reg, out, "--until", "roi_set")
    assert code == 0 and runs == {"src_a": 2, "src_b": 2, "": 1}  # ingest and ROIs per source; the experts
    image = base / "b" / "images" / "cell.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    code, printed, runs = _build(capsys, reg, out, "--until", "roi_set")
    assert code == 0 and "4 of 5 run(s) skipped" in printed, printed
    assert runs == {"src_a": 2, "src_b": 3, "": 1}


def test_a_build_further_than_the_last_one_runs_only_what_that_did_not_make(registry, capsys):
    """``--until preprocessed_images``, then ``--until coarse_captions``: the second build runs the
    coarse captions only, not the ingestion that shares their phase (per-asset stamps)."""
    reg, out, _ = registry
    code, printed, runs = _build(capsys, reg, out)  # --until preprocessed_images
    manifest = out / "source_manifest" / "src_a.parquet"
    made = manifest.stat().st_mtime_ns
    code = main(["build", "--sources", str(reg), "--out", str(out), "--until", "coarse_captions"])
    printed = capsys.readouterr().out
    assert code == 0 and "skipped" not in printed, printed
    assert "2 run(s) made only what was not up to date: 4 asset partition(s) kept" in printed, printed
    assert manifest.stat().st_mtime_ns == made
    assert (out / "coarse_captions" / "src_a.parquet").exists()
    with dg.DagsterInstance.get() as instance:
        for key in ("preprocessed_images", "coarse_captions"):  # once per source each
            records = instance.fetch_materializations(dg.AssetKey(key), limit=10).records
            assert len(records) == 2 and len({r.partition_key for r in records}) == 2, key
    code = main(["build", "--sources", str(reg), "--out", str(out), "--until", "coarse_captions"])
    assert code == 0 and "2 of 2 run(s) skipped" in capsys.readouterr().out


def test_a_setting_naming_a_folder_counts_with_its_files(tmp_path, monkeypatch):
    """A user's corpus folder named in the settings: a changed file there changes the settings'
    fingerprint (the knowledge runs again); the worker count, an API key, the pool switch and the
    pictures' URL do not, the device does."""
    from medtrinity_assets.defs.resources import ComputeResource, KnowledgeConfig
    from medtrinity_assets.defs.stamps import settings_fingerprint

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.md").write_text("The liver is the largest gland.")

    def fingerprint(workers: int = 2) -> str:
        resources = {"knowledge": KnowledgeConfig(corpus_paths=[str(corpus)]), "compute": ComputeResource(workers=workers)}
        return settings_fingerprint(resources, {})

    first = fingerprint()
    assert fingerprint(workers=1) == first
    monkeypatch.setenv("MEDTRINITY_API_KEY", "secret")
    assert fingerprint() == first
    monkeypatch.setenv("MEDTRINITY_REPORTS_URL", "/medtrinity-reports")  # where pictures are shown from
    monkeypatch.setenv("MEDTRINITY_GPU_POOL", "off")  # when a step may run
    assert fingerprint() == first
    monkeypatch.setenv("MEDTRINITY_DEVICE", "cpu")  # where the models compute: their results may differ
    assert fingerprint() != first
    monkeypatch.delenv("MEDTRINITY_DEVICE")
    (corpus / "notes.md").write_text("The liver is the largest gland of the body.")
    assert fingerprint() != first


@pytest.mark.parametrize("retry, skipped", [(0, True), (3, False)])
def test_rows_left_to_try_again_make_a_partition_run_again(retry, skipped):
    """A materialization that reports rows to try again (descriptions a model server failed to
    write, images the OCR engine failed to check) is not up to date, whatever its stamp."""
    from medtrinity_assets.defs.reporting import retry_metadata
    from medtrinity_assets.defs.stamps import stamp_tags, up_to_date

    @dg.asset
    def captions() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=retry_metadata(retry))

    key = dg.AssetKey("captions")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([captions], instance=instance, tags=stamp_tags({key: "stamp-1"}))
        assert up_to_date(instance, key, None, "stamp-2") is None  # another stamp
        made = up_to_date(instance, key, None, "stamp-1")
        assert (made and made.run_id) == (result.run_id if skipped else None)


def test_the_code_fingerprint_does_not_depend_on_the_working_directory(tmp_path):
    """A build started from another folder (one holding a package's metadata, as a project
    checkout does) is the same version, so it skips what is up to date."""
    import subprocess
    import sys

    from medtrinity_assets.defs.stamps import code_fingerprint

    (tmp_path / "other_project.egg-info").mkdir()
    code = "from medtrinity_assets.defs.stamps import code_fingerprint; print(code_fingerprint())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == code_fingerprint()


def _expert_models_run(capsys, reg: Path, out: Path, *extra: str) -> str:
    """The id of the run that made ``expert_models`` after a build ``--until expert_models``."""
    code = main(["build", "--sources", str(reg), "--out", str(out), "--until", "expert_models", *extra])
    assert code == 0, capsys.readouterr().out
    capsys.readouterr()
    with dg.DagsterInstance.get() as instance:
        return instance.fetch_materializations(dg.AssetKey("expert_models"), limit=1).records[0].run_id


def test_a_shared_asset_follows_every_registered_source(registry, capsys):
    """The expert models read every registered source: a declaration they read (the organ they
    group by) runs them again; a build of one source (``--only``) reads the others as they are, so
    it neither retrains them for nothing nor keeps them after another source's tables changed."""
    reg, out, base = registry
    first = _expert_models_run(capsys, reg, out)
    declaration = reg / "src_b.yaml"
    declaration.write_text(declaration.read_text().replace("organ: colon", "organ: liver"))
    second = _expert_models_run(capsys, reg, out)
    assert second != first
    assert _expert_models_run(capsys, reg, out, "--only", "src_a") == second
    shutil.copy(SAMPLES / "astronaut.png", base / "b" / "images" / "astronaut.png")
    assert main(["build", "--sources", str(reg), "--out", str(out), "--until", "preprocessed_images", "--only", "src_b"]) == 0
    third = _expert_models_run(capsys, reg, out, "--only", "src_a")
    assert third != second
    assert _expert_models_run(capsys, reg, out) == third


class _Value(dg.ConfigurableResource):
    value: str


_TABLE: dict[str, Path] = {}  # where _verified_table writes (not a setting: a named file counts with its time)


@dg.asset
def _verified_table(settings: _Value) -> dg.MaterializeResult:
    """Writes its file, then refuses a bad value (as the export refuses a dataset that fails verification)."""
    path = _TABLE["path"]
    path.write_text(settings.value)
    if settings.value == "bad":
        raise dg.Failure(description="verification failed")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path))})


def test_a_file_a_failed_run_rewrote_is_made_again(tmp_path):
    """A run that fails after rewriting its asset's file leaves no materialization: the asset made
    before with the same stamp is not up to date any more, its file having changed since."""
    from medtrinity_assets.defs.plan import RunPlan
    from medtrinity_assets.defs.runner import run_plan

    path = _TABLE["path"] = tmp_path / "table.txt"

    def build(instance: dg.DagsterInstance, value: str):
        plan = RunPlan.from_assets([_verified_table])
        resources = {"settings": _Value(value=value)}
        defs = dg.Definitions(assets=[_verified_table], jobs=plan.jobs(), resources=resources)
        [report] = run_plan(defs, plan, [], instance, stamp_base="code", skip_up_to_date=True)
        return report

    with dg.DagsterInstance.ephemeral() as instance:
        assert build(instance, "good").success
        assert not build(instance, "bad").success and path.read_text() == "bad"
        again = build(instance, "good")
        assert again.success and not again.skipped and path.read_text() == "good"
        assert build(instance, "good").skipped


def test_a_shard_reads_its_own_shard_of_what_it_reads(tmp_path):
    """A shard's ROIs, descriptions and checks read that shard of ingestion's tables: another shard's
    new tables leave their stamps as they were; the shard's own change, or a shared model's, does not."""
    from medtrinity_assets.definitions import defs as loaded
    from medtrinity_assets.defs.partitions import shard_partition
    from medtrinity_assets.defs.plan import RunPlan
    from medtrinity_assets.defs.resources import SourceRegistry
    from medtrinity_assets.defs.runner import _Stamps

    # the module's definitions read the registry of whichever test imported them first (gone since)
    defs = dg.Definitions(assets=loaded.assets, resources={**loaded.resources, "registry": SourceRegistry(registry_dir=str(tmp_path))})
    plan = RunPlan.from_assets(defs.assets)
    ingest, shared, enrichment = plan.phase("ingest"), plan.phase("shared_models"), plan.phase("enrichment")

    def stamps(instance: dg.DagsterInstance, shard0: str, shard1: str, models: str = "models") -> dict:
        made = _Stamps("code", plan, defs, {}, {"a": "files"}, instance)
        for shard, content in ((0, shard0), (1, shard1)):
            for key in ingest.keys:
                made.made(key, "a", shard_partition("a", shard), f"{key.to_user_string()}:{content}")
        for key in shared.keys:
            made.made(key, None, None, models)
        return made.of(enrichment, "a", shard_partition("a", 0))

    with dg.DagsterInstance.ephemeral() as instance:
        before = stamps(instance, "same", "old")
        assert stamps(instance, "same", "new") == before
        changed = stamps(instance, "new", "old")
        assert all(changed[key] != before[key] for key in enrichment.keys)
        retrained = stamps(instance, "same", "old", models="retrained")
        assert retrained[dg.AssetKey("roi_set")] != before[dg.AssetKey("roi_set")]
