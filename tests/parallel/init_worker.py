"""torchrun worker: the initial weights are the same, bit for bit, on one process and under every mesh given.

Then, on the same ranks, two of nano.guards' collective behaviours: a stop signal that reaches one rank
stops every rank after the same step, and the collective timeout set after the first step fails a
collective whose peer does not come instead of waiting for it.

    torchrun --nproc_per_node=2 tests/parallel/init_worker.py fsdp hsdp tp fsdp_ac -- guards
"""

import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from nano.config import load_config
from nano.guards import Guards
from nano.models.llama import ModelArgs, Transformer
from nano.parallel.dims import ParallelDims
from nano.parallel.parallelize import parallelize, place_shard

# Sizes that do not divide evenly by 2 or 4 (vocab 250, ffn 100 over 8 rows...), so uneven shards are covered.
ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=250, ffn_hidden_dim=100, max_seq_len=32)
SEED = 1234
MESHES = {
    "fsdp": [],
    "hsdp": ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1"],
    "tp": ["--parallelism.tensor_parallel_degree", "2"],
    "fsdp_ac": ["--activation_checkpoint.mode", "full"],  # wrapped blocks: parameter names gain a prefix
    "fsdp_tp": ["--parallelism.tensor_parallel_degree", "2"],  # on 4 ranks: a 2 x 2 (dp_shard, tp) mesh
    "hsdp_tp": ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.tensor_parallel_degree", "2"],
}


def single_process_model(seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = Transformer(ARGS)
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model.state_dict()


def parallel_model(name: str, world: int):
    cfg = load_config(["--training.global_batch_size", "4", "--training.micro_batch_size", "1", *MESHES[name]],
                      world_size=world)
    dims = ParallelDims.from_config(cfg.parallelism, world)
    mesh = dims.build_mesh("cpu")
    with torch.device("meta"):
        model = Transformer(ARGS)
    plan = parallelize(model, dims, mesh, cfg, "cpu")
    model.to_empty(device="cpu")
    model.init_weights(seed=SEED, place=place_shard)
    return model, mesh, plan


def check_init(names: list[str], world: int) -> None:
    reference = single_process_model(SEED)
    other_seed = single_process_model(SEED + 1)
    assert all(not torch.equal(reference[k], other_seed[k]) for k in reference if "norm" not in k), "seed ignored"
    for name in names:
        model, _, plan = parallel_model(name, world)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        assert set(full) == set(reference), f"{name}: keys differ"
        for key, value in reference.items():
            assert torch.equal(full[key], value), f"{name}: {key} differs from the single-process init"
        if dist.get_rank() == 0:
            print(f"init {name}: identical | {plan[1] if len(plan) > 1 else plan[0]}", flush=True)


def check_guards(world: int) -> None:
    cfg = load_config(["--training.global_batch_size", "4", "--training.micro_batch_size", "1",
                       "--comm.collective_timeout_s", "2"], world_size=world)
    guards = Guards(cfg.training, cfg.comm, mesh=None)
    stopped_at = 0
    for step in range(1, 10):
        if dist.get_rank() == 1 and step == 3:  # only this rank is told to stop
            os.kill(os.getpid(), signal.SIGUSR1)
            while not guards.signals.requested:
                time.sleep(0.01)
        if guards.should_stop():
            stopped_at = step
            break
    everyone = [0] * world
    dist.all_gather_object(everyone, stopped_at)
    assert everyone == [3] * world, everyone
    assert guards.signals.requested == (dist.get_rank() == 1)
    guards.close()
    if dist.get_rank() == 0:
        print(f"stop agreed: every rank stopped after step {everyone[0]}", flush=True)

    # The first should_stop() set the collective timeout to 2 s: a collective whose peer never comes fails.
    if dist.get_rank() == 1:
        time.sleep(8)
        return
    start = time.perf_counter()
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError as err:
        waited = time.perf_counter() - start
        assert 1.5 < waited < 7, waited
        print(f"collective timed out after {waited:.1f} s: {type(err).__name__}", flush=True)
    else:
        raise AssertionError("the all-reduce without its peer did not time out")


def main(argv: list[str]) -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    meshes = [a for a in argv if a in MESHES]
    check_init(meshes, world)
    if "guards" in argv:
        check_guards(world)  # leaves the group broken on purpose: no barrier after it
        return
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(0)
