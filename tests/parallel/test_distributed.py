from pathlib import Path

import pytest

from tests.distributed import run_torchrun

WORKER = Path(__file__).with_name("parallel_worker.py")


@pytest.mark.parametrize(
    ("scenario", "nproc"),
    [("fsdp", 2), ("fsdp_reshard_always", 2), ("hsdp", 2), ("tp", 2), ("tp_loss_parallel", 2), ("fsdp_ac_compile", 2),
     ("tp_float8", 2), ("fsdp_float8", 2), ("fsdp_tp", 4)],
)
def test_parallel_run_matches_the_single_process_run(scenario: str, nproc: int) -> None:
    proc = run_torchrun(WORKER, scenario, nproc=nproc, timeout=600)
    assert f"{scenario}: match" in proc.stdout
