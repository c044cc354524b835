"""StepProfiler: a Chrome trace of exactly the chosen steps, written when they are done or when the run ends."""

import gzip
import json
from pathlib import Path

import torch

from nano.config import Profiling
from nano.profiling import StepProfiler


def run_steps(profiler: StepProfiler, last_step: int) -> None:
    """A tiny training loop calling the profiler as nano.train does."""
    model = torch.nn.Linear(16, 16)
    for step in range(1, last_step + 1):
        profiler.step(step)
        model(torch.randn(4, 16)).square().mean().backward()
    profiler.close()


def traced_steps(path: Path) -> tuple[set[str], set[str]]:
    with gzip.open(path) as trace:
        events = json.load(trace)["traceEvents"]
    names = {event["name"] for event in events}
    return {name for name in names if name.startswith("ProfilerStep#")}, names


def test_the_chosen_steps_are_traced(tmp_path: Path) -> None:
    profiler = StepProfiler(Profiling(enable=True, start_step=3, steps=2), tmp_path, rank=0, device=torch.device("cpu"))
    run_steps(profiler, 6)
    assert [p.name for p in tmp_path.iterdir()] == ["rank0.steps-3-4.pt.trace.json.gz"]
    steps, names = traced_steps(profiler.trace_path)
    assert steps == {"ProfilerStep#3", "ProfilerStep#4"}
    assert {"aten::addmm", "aten::mean"} <= names  # the operators of those steps, forward and backward


def test_a_run_ending_inside_the_window_writes_the_steps_it_reached(tmp_path: Path) -> None:
    profiler = StepProfiler(Profiling(enable=True, start_step=1, steps=5), tmp_path, rank=1, device=torch.device("cpu"))
    run_steps(profiler, 2)
    steps, _ = traced_steps(tmp_path / "rank1.steps-1-5.pt.trace.json.gz")
    assert steps == {"ProfilerStep#1", "ProfilerStep#2"}


def test_nothing_is_written_when_disabled_or_when_the_run_ends_before_the_window(tmp_path: Path) -> None:
    run_steps(StepProfiler(Profiling(enable=False), tmp_path, rank=0, device=torch.device("cpu")), 12)
    run_steps(StepProfiler(Profiling(enable=True, start_step=20), tmp_path, rank=0, device=torch.device("cpu")), 12)
    run_steps(StepProfiler(Profiling(enable=True, start_step=13), tmp_path, rank=0, device=torch.device("cpu")), 12)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
