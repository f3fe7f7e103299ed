"""The Celery executor: how the code location selects it, and the demo graph on real workers.

Without a service: ``MEDTRINITY_EXECUTOR`` selects the executor (Dagster's default when unset,
with neither integration library imported), and the Celery broker and backend come from the
environment.

Integration (marker ``integration``): ``redis-server`` listens on a free port of 127.0.0.1 (no
persistence). Two Celery workers start with ``dagster-celery worker start`` (concurrency 1 each):
``cpu`` consumes the default queue ``dagster``, ``gpu`` consumes only ``gpu``. The phases
``ingest`` (two demo sources), ``shared_models`` and ``enrichment`` run as the code location's
jobs with ``dagster job execute`` and ``MEDTRINITY_EXECUTOR=celery`` (the per-source runs of a
phase at the same time), into one SQLite instance under a temporary ``DAGSTER_HOME`` that the
workers share. Which worker ran each step is proven three ways: the run's event log (the queue
the executor submitted the step to, and the worker's own name), the pids on the step's events
(processes of that worker), and each worker's Celery log (the step keys of the tasks it ran).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medtrinity_assets_tests.executor_config import resolved_executor_config
from medtrinity_assets_tests.test_pipeline import FAST_EXPERTS

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["synthetic_phantoms", "microscopy_cells"]  # annotated phantoms train the expert model
#: job -> its partitions: each source's shard 000 (every test source is one shard), each source, or none
PHASES = [("ingest_job", "shard"), ("shared_models_job", None), ("enrichment_job", "shard"), ("summary_job", "source")]
PARTITIONS = {"shard": [f"000|{s}" for s in SOURCES], "source": list(SOURCES), None: [None]}
WORKERS = {"cpu": ["dagster"], "gpu": ["gpu"]}  # worker name -> queues it consumes
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 240
QUEUE_TAG = "dagster-celery/queue"
DEFAULT_QUEUE = "dagster"


# --- The executor the code location selects (no service needed) ---------------------------------


def test_default_is_dagsters_executor_and_the_extras_are_not_imported():
    """Unset ``MEDTRINITY_EXECUTOR``: the code location declares no executor (Dagster's default),
    and neither dagster_celery nor dagster_k8s is imported."""
    code = (
        "import sys, dagster as dg\n"
        "from medtrinity_assets.definitions import defs\n"
        "assert defs.resolve_job_def('ingest_job').executor_def is dg.multi_or_in_process_executor\n"
        "print(sorted(m for m in ('dagster_celery', 'dagster_k8s', 'celery', 'kubernetes') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDTRINITY_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_executor_selection():
    from medtrinity_assets.defs.executors import select_executor

    assert select_executor({}) is None
    assert select_executor({"MEDTRINITY_EXECUTOR": " Multiprocess "}) is None
    with pytest.raises(ValueError, match="MEDTRINITY_EXECUTOR"):
        select_executor({"MEDTRINITY_EXECUTOR": "dask"})


def test_celery_executor_defaults_come_from_the_environment():
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (the production extra)")
    from medtrinity_assets.defs.executors import DEFAULT_CELERY_BROKER, select_executor

    default = resolved_executor_config(select_executor({"MEDTRINITY_EXECUTOR": "celery"}), {})
    assert default["broker"] == DEFAULT_CELERY_BROKER == "redis://127.0.0.1:6379/0"
    assert default["backend"] == DEFAULT_CELERY_BROKER
    env = {"MEDTRINITY_EXECUTOR": "celery", "MEDTRINITY_CELERY_BROKER": "redis://broker:6380/2"}
    executor = select_executor(env)
    assert executor.name == "celery"
    assert resolved_executor_config(executor, {})["backend"] == "redis://broker:6380/2"
    env["MEDTRINITY_CELERY_BACKEND"] = "redis://broker:6380/3"
    assert resolved_executor_config(select_executor(env), {})["backend"] == "redis://broker:6380/3"
    # A run's execution config still overrides the defaults.
    run = resolved_executor_config(executor, {"broker": "redis://other:6379/0", "retries": {"disabled": {}}})
    assert run["broker"] == "redis://other:6379/0" and run["backend"] == "redis://broker:6380/2"
    assert run["retries"] == {"disabled": {}}


# --- The demo graph on real workers (integration) --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process group ``proc`` leads (it was started in a new session), then SIGKILL."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(proc.pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` is still running (zombies count as gone)."""
    import psutil

    for p in psutil.process_iter(["status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and _pgid(p.pid) == pgid:
            return True
    return False


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


@dataclass
class Cluster:
    home: Path
    out: Path
    logs: Path
    env: dict[str, str]
    instance: object
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    runs: list = field(default_factory=list)  # (job, source, DagsterRun)
    elapsed_s: float = 0.0

    def worker_log(self, name: str) -> Path:
        return self.logs / f"worker_{name}.log"

    def diagnostics(self) -> str:
        parts = [f"--- {p.name} ---\n{_tail(p)}" for p in sorted(self.logs.glob("*.log"))]
        return "\n".join(parts)

    def worker_pids(self, name: str) -> set[int]:
        """Every live process of worker ``name`` (the CLI, Celery's main process, its pool)."""
        import psutil

        root = psutil.Process(self.procs[name].pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for(predicate, what: str, cluster: Cluster, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                pytest.fail(
                    f"{name} exited (status {proc.returncode}) while waiting for {what}\n{cluster.diagnostics()}"
                )
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{cluster.diagnostics()}")


def _redis_ready(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, demo_dir, demo_registry):
    """Redis on a free port, a temporary instance, and the ``cpu`` and ``gpu`` workers (torn down
    with their process groups whatever happens)."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (the production extra)")
    import dagster as dg

    root = tmp_path_factory.mktemp("celery")
    home, out, logs = root / "dagster_home", root / "out", root / "logs"
    for d in (home, out, logs):
        d.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    (home / "medtrinity.json").write_text(
        json.dumps({"out_dir": str(out), "registry_dir": str(demo_registry)}), encoding="utf-8"
    )
    port = _free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    bin_dir = str(Path(sys.executable).parent)  # `celery` is started by name by dagster-celery
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "DAGSTER_HOME": str(home),
        "MEDTRINITY_EXECUTOR": "celery",
        "MEDTRINITY_CELERY_BROKER": broker,
        "MEDTRINITY_CELERY_BACKEND": broker,
        "MEDTRINITY_GPU_POOL": "off",  # no instance pool: the queues alone decide where GPU steps go
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    # The workers' configuration: the executor's own config block (the broker they listen to).
    worker_yaml = root / "celery_worker.yaml"
    worker_yaml.write_text(
        f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n", encoding="utf-8"
    )

    # The instance exists before any child opens it (concurrent first opens race on SQLite schemas).
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("sources", SOURCES)
    instance.add_dynamic_partitions("shards", ["000"])
    c = Cluster(home=home, out=out, logs=logs, env=env, instance=instance)
    try:
        c.procs["redis"] = _start(
            [
                redis_server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(root),
            ],
            logs / "redis.log",
            env,
        )
        _wait_for(lambda: _redis_ready(port), f"redis-server on port {port}", c)
        for name, queues in WORKERS.items():
            cmd = [
                str(Path(bin_dir) / "dagster-celery"),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                str(worker_yaml),
                "-n",
                name,
                "--loglevel",
                "INFO",
            ]
            for q in queues:
                cmd += ["-q", q]
            cmd += ["--", "--concurrency", "1", "--logfile", str(c.worker_log(name))]
            c.procs[name] = _start(cmd, logs / f"worker_{name}.out.log", env)
        for name in WORKERS:
            _wait_for(
                lambda n=name: (
                    f"{n}@" in _tail(c.worker_log(n), 200) and " ready." in _tail(c.worker_log(n), 200)
                ),
                f"celery worker '{name}' to be ready",
                c,
            )
        yield c
    finally:
        for name in [*WORKERS, "redis"]:
            if name in c.procs:
                _stop(c.procs[name])
        instance.dispose()


def _launch(c: Cluster, job: str, source: str | None) -> tuple[subprocess.Popen, Path, str]:
    """Start one run of ``job`` the way a deployment's run worker does: a fresh process that loads
    the code location (``MEDTRINITY_EXECUTOR=celery``) and orchestrates the run's steps."""
    config_files = [c.home.parent / "run_quiet.yaml"]
    config_files[0].write_text("loggers: {console: {config: {log_level: WARNING}}}\n", encoding="utf-8")
    if job == "shared_models_job":
        fast = c.home.parent / "run_fast_experts.yaml"
        fast.write_text(json.dumps(FAST_EXPERTS), encoding="utf-8")
        config_files.append(fast)
    marker = f"{job}:{source or ''}"
    tags = {"medtrinity/test": marker, **({"dagster/partition": source} if source else {})}
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "medtrinity_assets.definitions"]
    cmd += ["-a", "defs", "-j", job, "--tags", json.dumps(tags)]
    for f in config_files:
        cmd += ["-c", str(f)]
    log = c.logs / f"run_{job}_{source or 'shared'}.log"
    return _start(cmd, log, c.env), log, marker


def _run_phase(c: Cluster, job: str, sources: list[str | None]) -> None:
    """The runs of one phase, started together (per-source runs share the workers), then awaited."""
    import dagster as dg

    launched = [(source, *_launch(c, job, source)) for source in sources]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        for source, proc, _, _ in launched:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{job} ({source or 'shared'}) did not finish in {RUN_TIMEOUT_S}s\n{c.diagnostics()}"
                )
    finally:
        for _, proc, _, _ in launched:
            _stop(proc, grace_s=5)
    for source, _, log, marker in launched:
        runs = c.instance.get_runs(filters=dg.RunsFilter(job_name=job, tags={"medtrinity/test": marker}))
        assert len(runs) == 1, f"{job} ({source}): expected one run, found {len(runs)}\n{_tail(log)}"
        c.runs.append((job, source, runs[0]))


@pytest.fixture(scope="module")
def celery_runs(cluster):
    """The phases ingest (per shard), shared_models, enrichment (per shard), summary (per source), in order."""
    started = time.monotonic()
    partitions = PARTITIONS
    for job, kind in PHASES:
        _run_phase(cluster, job, partitions[kind])
    cluster.elapsed_s = time.monotonic() - started
    return cluster


def _expected_queues(job_name: str) -> dict[str, str]:
    """Each step (op) of a phase job and the Celery queue its tags name (the default: ``dagster``)."""
    from medtrinity_assets.definitions import build_definitions

    job = build_definitions().resolve_job_def(job_name)
    return {node.name: node.definition.tags.get(QUEUE_TAG, DEFAULT_QUEUE) for node in job.graph.nodes}


def _step_evidence(instance, run_id: str) -> dict[str, dict]:
    """Per step key: the queue the executor submitted it to, the worker that reports running it,
    the pids of its step events, and whether it succeeded."""
    import re

    out: dict[str, dict] = defaultdict(
        lambda: {"queue": None, "worker": None, "pids": set(), "success": False}
    )
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        step = out[entry.step_key]
        if event.event_type_value == "ENGINE_EVENT":
            m = re.search(
                r'Submitting celery task for step "([^"]+)" to queue "([^"]+)"', entry.message or ""
            )
            if m and m.group(1) == entry.step_key:
                step["queue"] = m.group(2)
            metadata = getattr(event.event_specific_data, "metadata", None) or {}
            if "Celery worker" in metadata:
                step["worker"] = metadata["Celery worker"].value
        elif event.event_type_value in ("STEP_START", "STEP_OUTPUT", "ASSET_MATERIALIZATION", "STEP_SUCCESS"):
            if event.pid is not None:
                step["pids"].add(event.pid)
            if event.event_type_value == "STEP_SUCCESS":
                step["success"] = True
    return dict(out)


@pytest.mark.integration
def test_every_phase_run_succeeds_on_the_celery_executor(celery_runs):
    import dagster as dg

    partitions = PARTITIONS
    assert [(j, s) for j, s, _ in celery_runs.runs] == [(job, s) for job, kind in PHASES for s in partitions[kind]]
    for job, source, run in celery_runs.runs:
        assert run.status == dg.DagsterRunStatus.SUCCESS, (
            f"{job} ({source}): {run.status}\n{celery_runs.diagnostics()}"
        )
        assert run.tags.get("dagster/partition") == source, (job, source, run.tags)
    for source in SOURCES:
        triplets = celery_runs.out / "triplets" / f"{source}.parquet"
        assert triplets.is_file() and triplets.stat().st_size > 0, triplets


@pytest.mark.integration
def test_gpu_steps_run_on_the_gpu_worker_and_the_rest_on_the_cpu_worker(celery_runs):
    """Each step: submitted to the queue its tags name; run by the worker consuming that queue
    (its own name in the event log); its events come from a process of that worker."""
    pids = {name: celery_runs.worker_pids(name) for name in WORKERS}
    assert not pids["cpu"] & pids["gpu"]
    worker_of_queue = {q: name for name, queues in WORKERS.items() for q in queues}
    ran_on: dict[str, set[str]] = defaultdict(set)
    for job, source, run in celery_runs.runs:
        expected = _expected_queues(job)
        evidence = _step_evidence(celery_runs.instance, run.run_id)
        assert set(evidence) == set(expected), (job, source, sorted(evidence), sorted(expected))
        for step, queue in expected.items():
            seen = evidence[step]
            where = f"{job} ({source or 'shared'}) step {step}"
            assert seen["success"], where
            assert seen["queue"] == queue, f"{where}: submitted to {seen['queue']!r}, its tags name {queue!r}"
            worker = worker_of_queue[queue]
            assert seen["worker"] and seen["worker"].split("@")[0] == worker, (
                f"{where}: ran on {seen['worker']!r}"
            )
            assert seen["pids"] and seen["pids"] <= pids[worker], (
                f"{where}: event pids {sorted(seen['pids'])} are not processes of worker {worker} {sorted(pids[worker])}"
            )
            ran_on[worker].add(step)
    # The graph was split across both workers, with the GPU-capable assets on the gpu one.
    assert {"expert_models", "knowledge_index", "roi_set", "caption_batch"} <= ran_on["gpu"], ran_on
    assert {
        "ingest_source_assets",
        "knowledge_corpus",
        "retrieved_knowledge",
        "caption_quality",
        "triplets",
    } <= ran_on["cpu"], ran_on
    assert not ran_on["gpu"] & ran_on["cpu"], ran_on


def _banner_queues(text: str) -> list[str]:
    """The queues of a Celery worker's start-up banner (``.> NAME  exchange=...`` under ``[queues]``)."""
    import re

    section = text.split("[queues]", 1)[1].split("[tasks]", 1)[0] if "[queues]" in text else ""
    return re.findall(r"\.>\s+(\S+)\s+exchange=", section)


def _steps_in_worker_log(text: str) -> tuple[int, list[str]]:
    """Tasks a worker received, and the step keys of those it finished (each result's first event
    is the worker's "Executing steps ..." engine event, whose ``step_keys`` Celery's log shows)."""
    import re

    received = len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] received", text))
    done = re.findall(
        r"Task execute_plan\[[0-9a-f-]+\] succeeded in .*?\"text\": \"([^\"]+)\"\}, \"label\": \"step_keys\"",
        text,
    )
    return received, done


@pytest.mark.integration
def test_celery_logs_agree_each_worker_consumed_only_its_queues(celery_runs):
    """Celery's own records, independent of Dagster's event log: each worker's banner lists only its
    queues, and its log shows it ran exactly the steps tagged for those queues."""
    from collections import Counter

    expected: dict[str, Counter] = defaultdict(Counter)
    for job, _, _ in celery_runs.runs:
        for step, queue in _expected_queues(job).items():
            expected[queue][step] += 1
    for name, queues in WORKERS.items():
        banner = (celery_runs.logs / f"worker_{name}.out.log").read_text(encoding="utf-8", errors="replace")
        assert _banner_queues(banner) == queues, f"worker {name}\n{banner}"
        log = celery_runs.worker_log(name)
        text = log.read_text(encoding="utf-8", errors="replace")
        received, done = _steps_in_worker_log(text)
        wanted = sum((expected[q] for q in queues), Counter())
        assert Counter(done) == wanted, (
            f"worker {name} ran {sorted(done)}, expected {sorted(wanted.elements())}\n{_tail(log)}"
        )
        assert received == len(done), (
            f"worker {name}: {received} tasks received, {len(done)} succeeded\n{_tail(log)}"
        )
        assert "ERROR/" not in text, f"worker {name} logged an error\n{_tail(log)}"
