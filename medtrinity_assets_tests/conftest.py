"""Shared fixtures: one Dagster instance for the whole session, demo data staged once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running_daemon(workspace: Path, log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """A real ``dagster-daemon run -w workspace`` while the block runs (its output in ``log``, its
    temporary files beside it; ``env`` added to this process's), stopped with its process group."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(log.parent),
           "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1", **env}
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def dagster_instance(tmp_path_factory):
    """One instance for every materialize()/build_asset_context() call (fast direct calls)."""
    import dagster as dg

    home = tmp_path_factory.mktemp("dagster_home")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions("shards", ["000"])  # every demo source is one shard
        yield instance


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The embedded demo sources, staged from installed packages (idempotent)."""
    from medtrinity_assets.demo.staging import DEFAULT_DEMO_DIR, stage_demo_data

    stage_demo_data(DEFAULT_DEMO_DIR)
    return DEFAULT_DEMO_DIR


@pytest.fixture(scope="session")
def demo_registry(demo_dir) -> Path:
    return REPO_ROOT / "data" / "sources"


def _required() -> bool:
    """Whether integration tests must run (``MEDTRINITY_REQUIRE_INTEGRATION=1``, set by ``.ci/run``)."""
    return os.environ.get("MEDTRINITY_REQUIRE_INTEGRATION") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI an integration test that skips (no PostgreSQL, Redis or Chromium found) fails
    instead: CI must exercise those paths."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("integration") and _required():
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In CI a test module that skips as a whole while it is collected (a client library of the
    ``test`` extra missing: ``pytest.importorskip`` at module level) fails instead: its tests
    would otherwise vanish from the run without a test report to fail."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(collector, pytest.Module) and _required():
        report.outcome = "failed"
        report.longrepr = f"test module skipped in CI: {report.longrepr}"
