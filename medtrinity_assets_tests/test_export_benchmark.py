"""The export benchmark (benchmarks/export.py) runs end to end at a tiny size: every stage in its own
process, the planted cross-source copies dropped, the export verified, figures and verdicts in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "export.py"


def test_export_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "export.json"
    cmd = [sys.executable, str(BENCH), "--n", "600", "--eval-images", "10", "--pool", "40",
           "--workdir", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TARGET peak RSS < 2 GB" in proc.stdout and "TARGET rate" in proc.stdout
    run = json.loads(out.read_text())["runs"][0]
    stages = run["stages"]
    assert {"gen", "baseline", "baseline_stream", "build", "llava", "webdataset", "hf", "verify"} <= set(stages)
    gen, build = stages["gen"], stages["build"]
    assert gen["records"] == 200 and build["rows"] == 600
    assert build["dropped_records"] == gen["exact_copies"] + gen["near_copies"]  # the planted copies
    assert run["verified_ok"] and stages["verify"]["counts"]["table"] == build["rows_out"]
    assert all(stages[s]["peak_rss_bytes"] > 0 and stages[s]["seconds"] > 0 for s in stages)
    assert "cross_source_duplicates" in build["phases"] and "_check_webdataset" in stages["verify"]["phases"]
    assert set(run["targets"]) == {"peak_rss_below_2GB", "table_rate_within_2x", "whole_export_within_2x (honesty)"}
    assert not (tmp_path / "work" / "n600").exists()  # generated data removed
