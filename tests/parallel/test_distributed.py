from pathlib import Path

import pytest

from tests.distributed import run_torchrun

WORKER = Path(__file__).with_name("parallel_worker.py")


@pytest.mark.parametrize("scenario", ["fsdp", "hsdp", "tp", "tp_loss_parallel", "fsdp_ac_compile"])
def test_two_ranks_match_the_single_process_run(scenario: str) -> None:
    proc = run_torchrun(WORKER, scenario, nproc=2, timeout=600)
    assert f"{scenario}: match" in proc.stdout
