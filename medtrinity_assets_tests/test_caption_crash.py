"""Kill a caption batch with SIGKILL mid-way; the rerun recomputes nothing that was durable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from medtrinity_assets.captioning import EmbeddedCaptioner, run_caption_batch
from medtrinity_assets.captioning.batch import parts_dir
from medtrinity_assets.captioning.samples import realistic_inputs

REPO = Path(__file__).resolve().parent.parent
N, CHUNK = 240, 12

SCRIPT = """
import sys
from pathlib import Path
from medtrinity_assets.captioning import run_caption_batch
from medtrinity_assets.captioning.backends.embedded import SlowEmbeddedCaptioner
from medtrinity_assets.captioning.samples import realistic_inputs
items = realistic_inputs(int(sys.argv[2]), seed=99)
print("started", flush=True)
run_caption_batch(items, SlowEmbeddedCaptioner(delay_s=0.01), Path(sys.argv[1]), chunk_size=int(sys.argv[3]))
print("finished", flush=True)
"""


class CountingCaptioner(EmbeddedCaptioner):
    def __init__(self) -> None:
        super().__init__()
        self.computed = 0

    def caption(self, items):
        self.computed += len(items)
        return super().caption(items)


def _durable_hashes(table: Path) -> set[str]:
    hashes: set[str] = set()
    for part in parts_dir(table).glob("*.parquet"):
        hashes |= set(pl.read_parquet(part)["inputs_hash"].to_list())
    return hashes


def test_sigkill_mid_batch_then_resume(tmp_path):
    table = tmp_path / "caption_batch" / "demo.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(table), str(N), str(CHUNK)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if parts_dir(table).exists() and len(list(parts_dir(table).glob("part-*.parquet"))) >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not table.exists()  # killed before consolidation

    durable = _durable_hashes(table)
    assert CHUNK * 3 <= len(durable) < N and len(durable) % CHUNK == 0  # whole chunks only

    items = realistic_inputs(N, seed=99)
    rerun_started = datetime.now(UTC)
    cap = CountingCaptioner()  # same backend, model and params as the killed run: same cache keys
    res = run_caption_batch(items, cap, table, chunk_size=CHUNK)
    assert cap.computed == res.computed == N - len(durable)
    assert res.cached == len(durable) and res.ok == N

    df = pl.read_parquet(table)
    assert df.height == N and df.select("record_id", "roi_id").n_unique() == N
    assert set(df["inputs_hash"]) == {cap.inputs_hash(i) for i in items}
    assert df["status"].to_list() == ["ok"] * N
    assert not parts_dir(table).exists()

    again = CountingCaptioner()
    assert run_caption_batch(items, again, table, chunk_size=CHUNK).computed == 0 and again.computed == 0
    # the killed run's rows survive unchanged (not recomputed): their created_at precede the rerun
    old = df.filter(pl.col("inputs_hash").is_in(list(durable)))
    assert old.height == len(durable) and old["created_at"].max() < rerun_started
    assert df.filter(~pl.col("inputs_hash").is_in(list(durable)))["created_at"].min() >= rerun_started
    assert json.loads(df["params"][0]) == EmbeddedCaptioner().params


HTTP_SCRIPT = """
import sys
from pathlib import Path
from medtrinity_assets.captioning import run_caption_batch
from medtrinity_assets.captioning.backends.openai_compatible import OpenAICompatibleCaptioner
from medtrinity_assets.captioning.samples import realistic_inputs
items = realistic_inputs(int(sys.argv[2]), seed=98)
cap = OpenAICompatibleCaptioner([sys.argv[3]], "crash-vlm", api_key_env=None, max_in_flight=8)
run_caption_batch(items, cap, Path(sys.argv[1]), chunk_size=8)
"""


def test_sigkill_streaming_http_batch_then_resume(tmp_path):
    from medtrinity_assets.captioning.backends.openai_compatible import OpenAICompatibleCaptioner
    from medtrinity_assets_tests.chat_server import ChatServer

    n = 160
    table = tmp_path / "caption_batch" / "http.parquet"
    with ChatServer(latency_s=0.05) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", HTTP_SCRIPT, str(table), str(n), srv.base_url],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if parts_dir(table).exists() and len(list(parts_dir(table).glob("part-*.parquet"))) >= 3:
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not table.exists()
        durable = _durable_hashes(table)
        assert 24 <= len(durable) < n
        before = srv.stats.requests
        items = realistic_inputs(n, seed=98)
        cap = OpenAICompatibleCaptioner([srv.base_url], "crash-vlm", api_key_env=None, max_in_flight=8)
        res = run_caption_batch(items, cap, table, chunk_size=8)
        assert srv.stats.requests - before == res.computed == n - len(durable)
    df = pl.read_parquet(table)
    assert df.height == n and df.select("record_id", "roi_id").n_unique() == n
    assert df["status"].to_list() == ["ok"] * n
