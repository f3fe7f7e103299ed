"""Faults at the orchestration level, on a persistent SQLite instance as a user has it.

- A run worker killed (SIGKILL) in the middle of a source's description batch, in a run a real
  ``dagster-daemon`` dequeued and launched through its code server: the code server marks the run
  failed, the daemon's run retries (``dagster.yaml``) relaunch it from the failure on their own,
  the retry re-executes only the steps that had not finished, and the description chunks already
  on disk are reused, not recomputed.
- Runs at the documented concurrency (``dagster.yaml``: 4), queued and then launched together by a
  real daemon, write to one SQLite instance at once without "database is locked".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import pytest
import yaml

from medtrinity_assets.defs.resources import CaptionerResource
from medtrinity_assets_tests.conftest import REPO_ROOT, running_daemon

pytestmark = pytest.mark.integration

SOURCE = "synthetic_phantoms"
CONCURRENT = ["microscopy_cells", "xray_tibia", "histology_ihc", "fundus_retina"]
OUT_ENV = "MEDTRINITY_FAULT_TEST_OUT"


class SlowCaptionerResource(CaptionerResource):
    """The embedded captioner, slowed down so a kill lands mid-batch (test only)."""

    backend: ClassVar[str] = "embedded"
    delay_s: float = 0.02

    def get(self) -> Any:
        from medtrinity_assets.captioning.backends.embedded import SlowEmbeddedCaptioner

        return SlowEmbeddedCaptioner(delay_s=self.delay_s)


def fault_definitions() -> dg.Definitions:
    from medtrinity_assets.definitions import build_definitions
    from medtrinity_assets_tests.test_pipeline import make_resources, small_knowledge

    out = Path(os.environ[OUT_ENV])
    resources = make_resources(out, knowledge=small_knowledge(out.parent / "corpus"))
    resources["captioner"] = SlowCaptionerResource(chunk_size=4)
    return build_definitions(resources)


@pytest.fixture(scope="module")
def home(tmp_path_factory, demo_dir):
    """A persistent instance (the repository's dagster.yaml) with one source ingested and the shared models built."""
    from medtrinity_assets.defs.plan import RunPlan
    from medtrinity_assets.defs.runner import run_plan
    from medtrinity_assets_tests.test_pipeline import FAST_EXPERTS

    root = tmp_path_factory.mktemp("faults")
    home, out = root / "home", root / "out"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", OUT_ENV)}
    os.environ.update({"DAGSTER_HOME": str(home), OUT_ENV: str(out)})
    try:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("sources", [SOURCE, *CONCURRENT])
            instance.add_dynamic_partitions("shards", ["000"])
            defs = fault_definitions()
            full = RunPlan.from_assets(defs.assets, until="triplets")
            before_enrichment = RunPlan([p for p in full.phases if p.name not in ("enrichment", "summary")], full._graph)
            reports = run_plan(defs, before_enrichment, [SOURCE], instance, run_config=FAST_EXPERTS)
            assert all(r.success for r in reports), [r.reason for r in reports]
        yield home, out
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _chunks(out: Path) -> dict[str, int]:
    """The description chunks durable on disk: file name -> rows."""
    import polars as pl

    parts = out / "caption_batch" / f"{SOURCE}.parquet.parts"
    return {p.name: pl.read_parquet(p).height for p in parts.glob("*.parquet")} if parts.exists() else {}


def _steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {e.dagster_event.step_key for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}


RETRY_LOCATION = """
import dagster as dg
from medtrinity_assets_tests.test_faults import fault_definitions

# the daemon under test only queues, launches and retries runs: no sensor or schedule of its own
def without_automation(full: dg.Definitions) -> dg.Definitions:
    return dg.Definitions(assets=full.assets, asset_checks=full.asset_checks, jobs=full.jobs,
                          resources=full.resources, executor=full.executor)


defs = without_automation(fault_definitions())
"""


def _workspace(tmp_path: Path) -> Path:
    """A workspace file naming the test's code location (``RETRY_LOCATION``)."""
    location = tmp_path / "retry_location.py"
    location.write_text(RETRY_LOCATION)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(location), "attribute": "defs", "working_directory": str(REPO_ROOT),
        "location_name": "faults"}}]}))
    return workspace


@pytest.fixture
def daemon(home, tmp_path):
    """A ``dagster-daemon`` over the instance, with a workspace of the test's code location; yields
    the workspace file (its log beside it)."""
    workspace = _workspace(tmp_path)
    with running_daemon(workspace, tmp_path / "daemon.log"):
        yield workspace


def _launch(workspace: Path, job: str, *partitions: str) -> None:
    """Submit ``job`` for each of ``partitions`` to the instance's run queue, as ``dagster job launch``
    does (the commands at once)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(Path(sys.executable).parent / "dagster"), "job", "launch", "-w", str(workspace), "-l", "faults",
               "-j", job, "--tags"]
    procs = [subprocess.Popen([*command, json.dumps({"dagster/partition": p})], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in partitions]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]


def _wait_for(what: str, found: Callable[[], Any], log: Path, timeout_s: float = 240) -> Any:
    """``found()`` once it is truthy (polled), or a failure with the daemon's log."""
    deadline = time.monotonic() + timeout_s
    while not (value := found()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n" + log.read_text()[-4000:]
        time.sleep(0.2)
    return value


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's process id, from the code server's "Started process for run" event."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if (record.message or "").startswith("Started process for run"):
            return int(record.dagster_event.engine_event_data.metadata["pid"].value)
    return None


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it (a worker's machine gone: its step processes too)."""
    import psutil

    worker = psutil.Process(pid)
    for p in [*worker.children(recursive=True), worker]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def test_killed_worker_is_retried_by_the_daemon_from_failure_without_recomputing(home, daemon, tmp_path):
    _, out = home
    log = tmp_path / "daemon.log"
    _launch(daemon, "enrichment_job", f"000|{SOURCE}")
    with dg.DagsterInstance.get() as instance:
        def started() -> dg.DagsterRun | None:
            runs = instance.get_runs(dg.RunsFilter(job_name="enrichment_job", statuses=[dg.DagsterRunStatus.STARTED]))
            return runs[0] if runs else None

        run = _wait_for("the queued run started", started, log)
        pid = _wait_for("its worker's pid", lambda: _worker_pid(instance, run.run_id), log)
        _wait_for("a few description chunks on disk", lambda: len(_chunks(out)) >= 3, log)
        _kill_tree(pid)  # mid-batch
        before = _chunks(out)
        done_before = _steps(instance, run.run_id)
        assert {"roi_set", "retrieved_knowledge"} <= done_before and "caption_batch" not in done_before

        def retried() -> dg.DagsterRun | None:
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/parent_run_id": run.run_id}))
            return runs[0] if runs and runs[0].is_finished else None

        retry = _wait_for("the daemon's retry, finished", retried, log, timeout_s=300)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE  # by its code server
        assert retry.status == dg.DagsterRunStatus.SUCCESS, log.read_text()[-4000:]
        assert retry.tags.get("dagster/retry_number") == "1"
        redone = _steps(instance, retry.run_id)
        assert not (redone & done_before), redone & done_before  # finished steps were not recomputed
        assert {"caption_batch", "caption_quality"} <= redone
        (mat,) = [e.asset_materialization for e in instance.all_logs(
            retry.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if e.asset_materialization.asset_key == dg.AssetKey("caption_batch")]
        counts = mat.metadata["batch"].value
    # every description durable before the kill was reused; only the rest was computed
    assert counts["cached"] == sum(before.values()) > 0, (counts, before)
    assert counts["computed"] == counts["total"] - counts["cached"] > 0, counts


def test_concurrent_runs_share_the_sqlite_instance(home, tmp_path):
    """As many runs as the instance allows at once (``dagster.yaml``), queued, then dequeued and
    launched together by a real daemon (which writes to the same SQLite files meanwhile): all run
    at the same time, all succeed, and nothing anywhere says "database is locked"."""
    home_dir, _ = home
    limit = yaml.safe_load((home_dir / "dagster.yaml").read_text())["concurrency"]["runs"]["max_concurrent_runs"]
    sources = [f"000|{s}" for s in CONCURRENT[:limit]]  # shard 000 of each
    workspace = _workspace(tmp_path)
    _launch(workspace, "ingest_job", *sources)  # queued: no daemon runs yet
    log = tmp_path / "daemon.log"
    with dg.DagsterInstance.get() as instance:
        wanted = dg.RunsFilter(job_name="ingest_job", tags={"dagster/partition": sources})
        assert [r.status for r in instance.get_runs(wanted)] == [dg.DagsterRunStatus.QUEUED] * len(sources)
        with running_daemon(workspace, log):
            _wait_for("every queued run, finished", lambda: all(r.is_finished for r in instance.get_runs(wanted)),
                      log, timeout_s=300)
        records = instance.get_run_records(wanted)
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), log.read_text()[-4000:]
        assert max(r.start_time for r in records) < min(r.end_time for r in records)  # all ran at once
        for r in records:
            assert not any("database is locked" in (e.message or "") for e in instance.all_logs(r.dagster_run.run_id))
        assert set(sources) <= instance.get_materialized_partitions(dg.AssetKey("preprocessed_images"))
    assert "database is locked" not in log.read_text()
