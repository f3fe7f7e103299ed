"""The documented production instance (``deploy/postgres/dagster.yaml``) on a real PostgreSQL
server: the demo graph's phases run into it and every run, materialization and check is stored
in PostgreSQL.

The server: ``MEDTRINITY_TEST_POSTGRES_URL`` (``.ci/run`` starts one with ``.ci/postgres.sh``),
else one started here with the same script when Debian's ``postgresql`` is installed. Each test
run works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

from medtrinity_assets_tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration
psycopg2 = pytest.importorskip("psycopg2", reason="dagster-postgres not installed (pip install -e '.[test]')")

SOURCES = ["microscopy_cells", "synthetic_phantoms"]
SCRIPT = REPO_ROOT / ".ci" / "postgres.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    url = os.environ.get("MEDTRINITY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not (shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))):
        pytest.skip("no PostgreSQL server: apt-get install postgresql, or set MEDTRINITY_TEST_POSTGRES_URL")
    data = Path("/tmp") / f"medtrinity-pg-{uuid.uuid4().hex[:8]}"  # short: the socket path has a limit
    started = subprocess.run(["bash", str(SCRIPT), "start", str(data), str(_free_port())],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(data)], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def database(server_url):
    """A fresh database on the server (dropped afterwards): a test never touches existing data."""
    name = f"medtrinity_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlparse(server_url)._replace(path=f"/{name}")
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg_instance(database, tmp_path_factory):
    """The instance loaded from the documented ``dagster.yaml``, connection from the environment."""
    home = tmp_path_factory.mktemp("pg_home")
    shutil.copy(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_PG_HOST": database.hostname, "DAGSTER_PG_PORT": str(database.port),
           "DAGSTER_PG_USER": database.username, "DAGSTER_PG_PASSWORD": database.password or "",
           "DAGSTER_PG_DB": database.path.lstrip("/")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _count(database, sql: str) -> int:
    with psycopg2.connect(database.geturl()) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return int(cur.fetchone()[0])


def test_demo_graph_runs_into_a_postgres_instance(pg_instance, database, demo_registry, tmp_path):
    from medtrinity_assets.definitions import build_definitions
    from medtrinity_assets.defs.plan import RunPlan
    from medtrinity_assets.defs.runner import run_plan
    from medtrinity_assets_tests.test_pipeline import FAST_EXPERTS, QUIET, make_resources, small_knowledge

    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(pg_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    pg_instance.add_dynamic_partitions("sources", SOURCES)
    defs = build_definitions(make_resources(tmp_path / "out", knowledge=small_knowledge(tmp_path / "corpus")))
    plan = RunPlan.from_assets(defs.assets, until="triplets")
    reports = run_plan(defs, plan, SOURCES, pg_instance, run_config={**FAST_EXPERTS, **QUIET})
    assert reports and all(r.success for r in reports), [(r.phase, r.source, r.reason) for r in reports]
    assert {r.phase for r in reports} == {"ingest", "shared_models", "enrichment", "summary"}

    # what the UI reads: every partition of the late assets, from PostgreSQL
    for asset in ("source_manifest", "roi_set", "caption_batch", "caption_quality"):
        assert pg_instance.get_materialized_partitions(dg.AssetKey(asset)) == {f"000|{s}" for s in SOURCES}, asset
    assert pg_instance.get_materialized_partitions(dg.AssetKey("triplets")) == set(SOURCES)
    runs = pg_instance.get_runs()
    assert len(runs) == len(reports) and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # and it is really in the server's tables (not a local file)
    assert _count(database, "SELECT count(*) FROM runs") == len(reports)
    assert _count(database, "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'") > 0
    assert not list(Path(pg_instance.root_directory).glob("**/*.db")), "no SQLite storage expected"
