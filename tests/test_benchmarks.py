"""The speed and memory scripts run (nothing here is timed: their figures live in docs/benchmarks.md)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_vs_transformers_prints_both_sides_and_their_ratio() -> None:
    out = run("vs_transformers.py", "--rounds", "3", "--steps", "1", "--warmup-steps", "1", "--also-logits-loss",
              "--training.seq_len", "32", "--training.micro_batch_size", "2", "--training.global_batch_size", "2")
    assert "micro 2 x seq 32 x accum 1" in out
    rows = re.findall(r"^\s+\d+\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
    assert len(rows) == 3, out
    for nano, hf, _, ratio, _ in rows:  # the ratio column is nano's rate over transformers' in that round
        assert abs(float(ratio) - int(nano.replace(",", "")) / int(hf.replace(",", ""))) < 0.01 * float(ratio) + 0.002
    assert re.search(r"^\s+median\s", out, re.MULTILINE), out


def test_memory_estimate_prints_the_estimate_and_the_traced_peak_side_by_side() -> None:
    out = run("memory_estimate.py", "--micro", "4,8", "--modes", "full")
    rows = re.findall(r"^full\s+(\d+)\s+[\d.]+\s+-\s+-\s+[\d.]+\s+-\s+-\s+-[\d.]+%\s+(yes|no)$", out, re.MULTILINE)
    assert dict(rows) == {"4": "yes", "8": "no"}, out  # the seed's micro-batch 8 needs more than 95% of 24 GiB

    out = run("memory_estimate.py", "--micro", "2", "--modes", "full", "--trace", "--model.flavor", "debug",
              "--training.seq_len", "256")
    row = re.search(r"^full\s+2\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-[\d.]+)%\s+yes$",
                    out, re.MULTILINE)
    assert row, out
    assert 0.9 <= float(row.group(3)) <= 1.2  # estimate over traced peak, chunked loss
