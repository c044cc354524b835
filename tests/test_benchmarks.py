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


def test_memory_estimate_shows_the_seed_settings_fitting_24_gib() -> None:
    out = run("memory_estimate.py", "--micro", "8")
    full = re.search(r"^full\s+8\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-[\d.]+)%\s+(yes|no)$", out, re.MULTILINE)
    assert full, out
    chunked, materialised = float(full.group(1)), float(full.group(3))
    assert chunked < materialised and full.group(6) == "yes"
