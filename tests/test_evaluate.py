"""Validation: the held-out loss per source is the mean token cross-entropy of its documents packed like training
data, the same on 1 and 2 ranks, and a training run with it on trains exactly as without it (also when resumed),
reporting it in the progress line, TensorBoard and metrics.jsonl (with every other scalar)."""

import gzip
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nano.config import ConfigError, Validation, load_config
from nano.data.streams import HeldOut
from nano.evaluate import Validator, pack_windows
from nano.loss import IGNORE_INDEX
from tests.chat_model import HELD_OUT_TEXTS, TOK, _trained_state, trained_model
from tests.distributed import REPO_ROOT, free_port, run_torchrun
from tests.evaluate_worker import MICRO_BATCH, SEQ_LEN, sampler, validator


def test_windows_are_the_packed_documents_cut_like_training_windows() -> None:
    docs = HELD_OUT_TEXTS["chat"]
    stream = [t for doc in docs for t in (TOK.bos_id, *TOK.encode(doc), TOK.eos_id)]
    windows = pack_windows("chat", docs, TOK, SEQ_LEN)
    assert len(windows.inputs) == math.ceil(len(stream) / (SEQ_LEN + 1)) and len(stream) % (SEQ_LEN + 1) > 1
    for index, (inputs, labels) in enumerate(zip(windows.inputs.tolist(), windows.labels.tolist())):
        chunk = stream[index * (SEQ_LEN + 1) : (index + 1) * (SEQ_LEN + 1)]  # the loader's seq_len + 1 windows
        real = len(chunk) - 1
        assert inputs[:real] == chunk[:-1] and labels[:real] == chunk[1:]
        assert labels[real:] == [IGNORE_INDEX] * (SEQ_LEN - real)  # the last window's padding is never a target


def expected_losses(model: torch.nn.Module, limit: int | None = None) -> dict[str, float]:
    """Straight from the definition: summed token cross-entropy over a source's windows / its target tokens.
    (nano.loss computes logsumexp - target logit in fp32: ~1e-6 absolute per token from F.cross_entropy.)"""
    sums, counts = {}, {}
    for name, docs in HELD_OUT_TEXTS.items():
        windows = pack_windows(name, docs, TOK, SEQ_LEN)
        with torch.no_grad():
            logits = model(windows.inputs[:limit])
        labels = windows.labels[:limit]
        sums[name] = float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                           reduction="sum"))
        counts[name] = int((labels != IGNORE_INDEX).sum())
    losses = {f"val/loss/{name}": sums[name] / counts[name] for name in sums}
    losses["val/loss"] = sum(sums.values()) / sum(counts.values())
    return losses


def test_validation_loss_is_the_mean_token_cross_entropy_of_each_source() -> None:
    model = trained_model().train()
    results = validator(dp_rank=0, dp_degree=1).evaluate(model)
    assert model.training  # back to training mode
    for name, value in expected_losses(model).items():
        assert results[name] == pytest.approx(value, rel=1e-5, abs=2e-5), name
    assert results["val/perplexity"] == pytest.approx(math.exp(results["val/loss"]))
    assert results["val/loss/chat"] < 0.5 and results["val/loss/prose"] > 4  # learnt vs never seen
    # validation.steps = 1 evaluates one global batch (4 windows) per source, whatever the number of ranks.
    held_out = {name: HeldOut(tuple(docs), (0, 0)) for name, docs in HELD_OUT_TEXTS.items()}
    capped = Validator(Validation(enable=True, steps=1, documents_per_source=1), held_out, TOK, seq_len=SEQ_LEN,
                       micro_batch_size=MICRO_BATCH, global_batch_size=4, last_step=10, dp_rank=0, dp_degree=1,
                       device=torch.device("cpu")).evaluate(model)
    for name, value in expected_losses(model, limit=4).items():
        assert capped[name] == pytest.approx(value, rel=1e-5, abs=2e-5), name


def test_validation_is_due_every_interval_and_at_the_last_step() -> None:
    held_out = {"chat": HeldOut(tuple(HELD_OUT_TEXTS["chat"]), (0, 0))}
    v = Validator(Validation(enable=True, interval=4, documents_per_source=1), held_out, TOK, seq_len=SEQ_LEN,
                  micro_batch_size=2, global_batch_size=2, last_step=10, dp_rank=0, dp_degree=1,
                  device=torch.device("cpu"))
    assert [step for step in range(1, 11) if v.due(step)] == [4, 8, 10]
    off = Validator(Validation(enable=False, documents_per_source=5), held_out, TOK, seq_len=SEQ_LEN,
                    micro_batch_size=2, global_batch_size=2, last_step=10, dp_rank=0, dp_degree=1,
                    device=torch.device("cpu"))
    assert not any(off.due(step) for step in range(1, 11))


@pytest.mark.parametrize(("argv", "message"), [
    (["--validation.enable"], "validation.enable needs documents to evaluate on: set validation.documents_per_source"),
    (["--validation.steps", "0"], "validation.steps must be -1"),
    (["--validation.documents_per_source", "-1"], "validation.documents_per_source must be >= 0"),
    (["--validation.interval", "0"], "validation.interval must be > 0"),
    (["--sampling.max_new_tokens", "0"], "sampling.max_new_tokens must be > 0"),
    (["--profiling.steps", "0"], "profiling.steps must be > 0"),
])
def test_bad_settings_are_refused_naming_the_key(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(argv)


def test_two_ranks_measure_what_one_rank_measures(tmp_path: Path) -> None:
    """FSDP, tensor parallel and loss parallel give the single-process validation loss and greedy samples; the
    worker also checks that evaluating and sampling between FSDP steps leaves training unchanged."""
    torch.save(_trained_state(), tmp_path / "state.pt")
    run_torchrun(REPO_ROOT / "tests" / "evaluate_worker.py", str(tmp_path / "state.pt"), str(tmp_path / "out.json"))
    measured = json.loads((tmp_path / "out.json").read_text())
    model = trained_model()
    expected = validator(dp_rank=0, dp_degree=1).evaluate(model)
    samples = [list(pair) for pair in sampler().complete(model)]
    assert [completion for _, completion in samples] == ["Hello there, friend.\n", "7 mal 8 ist 56. Grüße 🙂\n"]
    for scenario, got in measured.items():
        assert got["validation"].keys() == expected.keys()
        for name, value in expected.items():
            assert got["validation"][name] == pytest.approx(value, rel=1e-5, abs=2e-5), (scenario, name)
        assert got["samples"] == samples, scenario
        assert got["training"], scenario


LOG_LINE = re.compile(r"step\s+(\d+)/\d+ \| loss ([\d.]+).*")


def train(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NGPU": "1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["./run_train.sh", "--config", "train_configs/debug_model.toml", "--training.seq_len", "64",
         "--max-steps", "6", "--metrics.log_freq", "1", "--checkpoint.interval", "3", "--checkpoint.keep_latest_k", "0",
         "--validation.interval", "3", "--validation.documents_per_source", "4", "--validation.steps", "-1",
         "--sampling.interval", "3", "--sampling.max_new_tokens", "8", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def progress(stdout: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in LOG_LINE.finditer(stdout)}


def losses(stdout: str) -> dict[int, str]:
    return {step: LOG_LINE.match(line).group(2) for step, line in progress(stdout).items()}  # type: ignore[union-attr]


def test_a_run_with_validation_trains_exactly_as_without_and_reports_it(tmp_path: Path) -> None:
    watched = train("--job.dump_folder", str(tmp_path / "on"), "--profiling.enable", "--profiling.start_step", "2",
                    "--profiling.steps", "2")
    plain = train("--job.dump_folder", str(tmp_path / "off"), "--validation.no-enable", "--sampling.prompts", "")
    assert losses(watched.stdout) == losses(plain.stdout) and sorted(losses(plain.stdout)) == list(range(1, 7))

    # Reported: per source in the progress line of steps 3 and 6, in TensorBoard and in metrics.jsonl.
    lines = progress(watched.stdout)
    names = load_config(["--config", str(REPO_ROOT / "train_configs/debug_model.toml")]).data.sources
    for step in (3, 6):
        assert re.search(r"\| val \d+\.\d{3} \[" + ", ".join(rf"{n} \d+\.\d\d" for n in names) + r"\]$", lines[step])
    assert not any(" val " in lines[step] for step in (1, 2, 4, 5))
    assert "| val " not in plain.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "on" / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {f"val/loss/{n}" for n in names} | {"val/loss", "val/perplexity"} <= set(tags)
    assert [e.step for e in events.Scalars("val/loss")] == [3, 6]
    # metrics.jsonl holds every TensorBoard scalar with the same value, and nothing else.
    from_jsonl: dict[tuple[str, int], float] = {}
    for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        from_jsonl.update({(name, step): value for name, value in record.items()})
    from_tensorboard = {(tag, e.step): e.value for tag in tags for e in events.Scalars(tag)}
    assert from_jsonl.keys() == from_tensorboard.keys()
    for key, value in from_tensorboard.items():
        assert value == pytest.approx(from_jsonl[key], rel=1e-6), key  # TensorBoard keeps float32
    assert {t for t in events.Tags()["tensors"] if t.startswith("samples/")} == {"samples/0/text_summary",
                                                                                 "samples/1/text_summary"}
    trace = tmp_path / "on" / "profiles" / "rank0.steps-2-3.pt.trace.json.gz"
    with gzip.open(trace) as f:
        marked = {e["name"] for e in json.load(f)["traceEvents"] if e["name"].startswith("ProfilerStep")}
    assert marked == {"ProfilerStep#2", "ProfilerStep#3"}

    # Resumed from step 3 with validation on: the same losses and the same validation figures after it.
    shutil.rmtree(tmp_path / "on" / "checkpoints" / "step-6")
    resumed = train("--job.dump_folder", str(tmp_path / "on"), "--resume")
    assert losses(resumed.stdout) == {s: loss for s, loss in losses(watched.stdout).items() if s > 3}
    assert progress(resumed.stdout)[6].split("| val ")[1] == lines[6].split("| val ")[1]
