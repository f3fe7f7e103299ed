"""The GPU training benchmark runs end to end (on the CPU, tiny size) and reports its figures."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_gpu_benchmark_smoke_run(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_gpu.py"), "--device", "cpu", "--size", "tiny",
                    "--steps", "2", "--warmup", "1", "--batch", "2", "--text-len", "16", "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    for name in ("llava", "baseline: language model alone"):
        assert result[name]["samples_s"] > 0 and result[name]["tokens_s"] > 0 and 0 <= result[name]["mfu"] < 1
    assert result["seq"] == 4 + 16 and result["llava_over_baseline_tokens_s"] > 0
