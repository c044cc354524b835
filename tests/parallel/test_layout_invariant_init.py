"""The same seed gives the same initial model, bit for bit, on one process and under FSDP, HSDP and TP."""

from pathlib import Path

import pytest
import torch

from nano.models.llama import Transformer
from tests.distributed import run_torchrun
from tests.parallel.init_worker import ARGS, SEED

WORKER = Path(__file__).with_name("init_worker.py")


def test_initial_weights_match_one_process_on_two_rank_meshes_and_stop_and_timeouts_are_collective() -> None:
    proc = run_torchrun(WORKER, "fsdp", "hsdp", "tp", "fsdp_ac", "guards", nproc=2, timeout=300)
    for mesh in ("fsdp", "hsdp", "tp", "fsdp_ac"):
        assert f"init {mesh}: identical" in proc.stdout, proc.stdout
    assert "stop agreed: every rank stopped after step 3" in proc.stdout
    assert "collective timed out after" in proc.stdout


def test_initial_weights_match_one_process_on_fsdp_x_tp_meshes() -> None:
    proc = run_torchrun(WORKER, "fsdp_tp", "hsdp_tp", nproc=4, timeout=300)
    assert "init fsdp_tp: identical" in proc.stdout and "init hsdp_tp: identical" in proc.stdout, proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_initial_weights_on_cuda_equal_those_on_cpu() -> None:
    """Drawn on the CPU whatever the device: a GPU run starts from the CPU debug run's model, bit for bit."""
    models = {}
    for device in ("cpu", "cuda"):
        with torch.device("meta"):
            models[device] = Transformer(ARGS)
        models[device].to_empty(device=device)
        models[device].init_weights(buffer_device=torch.device(device), seed=SEED)
    cuda = models["cuda"].state_dict()
    for key, value in models["cpu"].state_dict().items():
        assert torch.equal(cuda[key].cpu(), value), key
