"""Training on sources with unusable rows: it reaches its last step and reports the skips, and a source that
yields nothing usable stops the run with exit code 2 and a message naming it, also from a loader worker."""

import json
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nano.config import Source, load_config, to_toml

REPO = Path(__file__).resolve().parents[2]


def train(tmp_path: Path, sources: dict[str, Source], *, workers: int,
          max_bad_run: int = 1000) -> subprocess.CompletedProcess:
    cfg = load_config(["--config", str(REPO / "train_configs/debug_model.toml")])
    cfg.data.sources, cfg.data.num_workers, cfg.data.max_consecutive_bad_rows = sources, workers, max_bad_run
    cfg.training.max_steps, cfg.metrics.log_freq, cfg.checkpoint.enable = 3, 1, False
    cfg.validation.enable, cfg.validation.documents_per_source = False, 0  # every row is a training row
    cfg.job.dump_folder = str(tmp_path / "run")
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    return subprocess.run([sys.executable, "-m", "nano.train", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_training_skips_bad_rows_beyond_10mb_and_reaches_its_last_step(tmp_path: Path) -> None:
    rows = [json.dumps({"text": f"row {i} counts {i * 3}", "pad": "x" * 10_000}) for i in range(1100)]
    bad = ['{"text": null}', '{"pad": "no text"}', '{"text": ""}', '{"text": "cut off']
    lines = rows[:7] + bad[:1] + rows[7:1060] + bad[1:] + rows[1060:]  # beyond 10 MB: 1,060 rows of ~10 KB
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sources = {"big": Source(weight=1, format="text", data_files=[str(path)]),
               "gsm8k": Source(weight=1, data_files=[str(REPO / "assets/demo/gsm8k.jsonl")])}
    proc = train(tmp_path, sources, workers=0)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 3/3 | loss" in proc.stdout and "skipped 4 rows" in proc.stdout
    assert f"data source big: skipped {path} line 1062: field 'text' is missing" in proc.stdout
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("data/skipped/big")] == [4, 4, 4]
    assert [e.value for e in events.Scalars("data/skipped/gsm8k")] == [0, 0, 0]


def test_a_source_of_only_bad_rows_stops_the_run_naming_it_from_a_worker(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": null}\n' * 200)
    sources = {"broken": Source(weight=1, format="text", data_files=[str(path)]),
               "gsm8k": Source(weight=1, data_files=[str(REPO / "assets/demo/gsm8k.jsonl")])}
    proc = train(tmp_path, sources, workers=2, max_bad_run=50)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "\nerror: Caught SourceError in DataLoader worker process" in proc.stderr
    assert f"data.sources.broken: 50 rows in a row could not be used, the last at {path} line " in proc.stderr
    assert "field 'text' is null" in proc.stderr
