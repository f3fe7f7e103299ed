"""The caption quality benchmark (benchmarks/caption_quality.py) runs at a tiny size: the captioner and the
checks on the same inputs, their milliseconds per ROI, the ratio and the verdict in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "caption_quality.py"


def test_caption_quality_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "quality.json"
    cmd = [sys.executable, str(BENCH), "--sizes", "24", "36", "--repeat", "1", "--rois-per-image", "3",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "captioner ms/ROI" in proc.stdout and "TARGET quality ms/ROI <= captioner ms/ROI" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["rois"] for r in result["runs"]] == [24, 36] and result["setup_s"] > 0
    for run in result["runs"]:
        assert run["quality_rows"] == run["rois"] and 0 < run["passed"] <= run["rois"]
        assert run["captioner_ms_per_roi"] > 0 and run["quality_ms_per_roi"] > 0
        assert abs(run["ratio"] - run["quality_ms_per_roi"] / run["captioner_ms_per_roi"]) < 0.01 * run["ratio"] + 0.01
    assert result["target_met"] == all(r["ratio"] <= 1.0 for r in result["runs"])
