"""Caption throughput benchmarks.

1. OpenAI-compatible backend against the local test server (a separate process) answering
   after 200 ms: achieved requests/s with 32 in flight, as a fraction of the ideal 32/0.2 = 160/s
   (target >= 0.8), measured on the captioner alone and through ``run_caption_batch``.
2. Embedded grounded captioner on one core: captions/s (target >= 500), alone and through a
   durable caption batch, plus the quality checks' rate.

Run: ``python benchmarks/captions.py [--requests 1280] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medtrinity_assets.captioning import EmbeddedCaptioner, check_captions, run_caption_batch  # noqa: E402
from medtrinity_assets.captioning.backends.openai_compatible import OpenAICompatibleCaptioner  # noqa: E402
from medtrinity_assets.captioning.samples import realistic_inputs  # noqa: E402


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "medtrinity_assets_tests.chat_server", "--latency", str(latency)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("test server did not start")
    return proc, url


def bench_http(n: int, latency: float = 0.2, in_flight: int = 32) -> dict:
    proc, url = start_server(latency)
    try:
        ideal = in_flight / latency
        items = realistic_inputs(n, seed=1)
        cap = OpenAICompatibleCaptioner([url], "bench-vlm", api_key_env=None, max_in_flight=in_flight, timeout_s=30)
        cap.caption(realistic_inputs(in_flight, seed=2))  # warm-up (imports, first connections)
        t = time.perf_counter()
        results = cap.caption(items)
        dt = time.perf_counter() - t
        ok = sum(r.status == "ok" for r in results)
        direct = n / dt
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = run_caption_batch(items, cap, Path(tmp) / "c.parquet", chunk_size=64)
            dtb = time.perf_counter() - t
        batched = res.computed / dtb
        return {
            "requests": n, "latency_s": latency, "in_flight": in_flight, "ideal_rps": ideal,
            "direct_rps": round(direct, 1), "direct_fraction": round(direct / ideal, 3), "ok": ok,
            "batch_rps": round(batched, 1), "batch_fraction": round(batched / ideal, 3),
            "batch_chunk_size": 64,
        }
    finally:
        proc.terminate()
        proc.wait(5)


def bench_embedded(n: int) -> dict:
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    except (AttributeError, OSError):
        pass
    items = realistic_inputs(n, seed=3)
    cap = EmbeddedCaptioner()
    cap.caption(items[:50])
    t = time.perf_counter()
    results = cap.caption(items)
    rate = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.parquet"
        t = time.perf_counter()
        run_caption_batch(items, cap, path, chunk_size=512)
        batch_rate = n / (time.perf_counter() - t)
        import polars as pl

        df = pl.read_parquet(path)
        t = time.perf_counter()
        q = check_captions(df, {i.key: i for i in items})
        check_rate = n / (time.perf_counter() - t)
    return {
        "captions": n, "captions_per_s": round(rate), "batch_captions_per_s": round(batch_rate),
        "quality_checks_per_s": round(check_rate), "checks_passed": f"{int(q['passed'].sum())}/{q.height}",
        "all_ok": all(r.status == "ok" for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1280)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    http = bench_http(args.requests)
    print(f"openai_compatible @200 ms, 32 in flight: {http['direct_rps']}/s = {http['direct_fraction']:.2f} of "
          f"ideal {http['ideal_rps']:.0f}/s (through run_caption_batch: {http['batch_rps']}/s = "
          f"{http['batch_fraction']:.2f}); target >= 0.80")
    emb = bench_embedded(args.captions)
    print(f"embedded, one core: {emb['captions_per_s']} captions/s (batch with Parquet parts: "
          f"{emb['batch_captions_per_s']}/s; quality checks {emb['quality_checks_per_s']}/s, passed "
          f"{emb['checks_passed']}); target >= 500")
    out = {"openai_compatible": http, "embedded": emb}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
