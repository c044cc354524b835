"""torchrun worker: the validation loss and the greedy samples of a fixed model on 2 ranks (FSDP, tensor parallel,
tensor parallel with loss parallel) are the single-process ones, and evaluating and sampling between FSDP training
steps changes neither the losses nor the weights. Rank 0 writes what it measured as JSON."""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from nano.config import Optimizer, Sampling, Validation, load_config
from nano.data.streams import HeldOut
from nano.evaluate import Validator
from nano.generate import PromptSampler
from nano.models.llama import Transformer
from nano.optim import build_optimizer
from nano.parallel.dims import ParallelDims
from nano.parallel.parallelize import loss_context, parallelize
from nano.train import forward_backward
from tests.chat_model import CHATS, HELD_OUT_TEXTS, TOK
from tests.checkpoint.checkpoints import SMALL

SCENARIOS = {
    "fsdp": [],
    "tp": ["--parallelism.tensor_parallel_degree", "2"],
    "tp_loss_parallel": ["--parallelism.tensor_parallel_degree", "2", "--parallelism.enable_loss_parallel"],
}
SEQ_LEN, MICRO_BATCH = 32, 2  # tensor parallel shards the sequence: a multiple of 2


def validator(dp_rank: int, dp_degree: int, loss_ctx=None) -> Validator:
    held_out = {name: HeldOut(tuple(docs), (0, 0)) for name, docs in HELD_OUT_TEXTS.items()}
    kwargs = {"loss_ctx": loss_ctx} if loss_ctx else {}
    return Validator(Validation(enable=True, interval=1, documents_per_source=1), held_out, TOK, seq_len=SEQ_LEN,
                     micro_batch_size=MICRO_BATCH, global_batch_size=4, last_step=10, dp_rank=dp_rank,
                     dp_degree=dp_degree, device=torch.device("cpu"), **kwargs)


def sampler(tensor_parallel_degree: int = 1) -> PromptSampler:
    return PromptSampler(Sampling(prompts=list(CHATS), interval=1, max_new_tokens=24), TOK, tensor_parallel_degree)


def parallel_model(state: dict[str, torch.Tensor], extra: list[str], world: int):
    cfg = load_config(["--training.global_batch_size", "4", "--training.micro_batch_size", str(MICRO_BATCH),
                       "--training.mixed_precision", "fp32", *extra], world_size=world)
    dims = ParallelDims.from_config(cfg.parallelism, world)
    mesh = dims.build_mesh("cpu")
    model = Transformer(SMALL)  # on the CPU, so its RoPE table is made; the weights come from `state`
    parallelize(model, dims, mesh, cfg, "cpu")
    full = {key: value.clone() for key, value in state.items()}  # set_model_state_dict swaps in sharded values
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))
    return cfg, dims, mesh, model


def train_steps(state: dict[str, torch.Tensor], world: int, rank: int, observe: bool) -> tuple[list[float], dict]:
    """Three FSDP steps on fixed batches, evaluating and sampling after each one when `observe`."""
    _, dims, mesh, model = parallel_model(state, [], world)
    optimizer = build_optimizer(model, Optimizer(lr=1e-3), "cpu")
    watch = validator(dims.dp_rank(mesh), dims.dp_degree)
    losses = []
    for step in range(3):
        tokens = torch.randint(0, TOK.vocab_size, (2 * world, SEQ_LEN + 1),
                               generator=torch.Generator().manual_seed(step))
        mine = [{"input": tokens[rank * 2 : (rank + 1) * 2, :-1], "label": tokens[rank * 2 : (rank + 1) * 2, 1:]}]
        optimizer.zero_grad()
        losses.append(float(forward_backward(model, mine, torch.device("cpu"))))
        optimizer.step()
        if observe:
            watch.evaluate(model)
            sampler().complete(model)
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return losses, weights


def main(state_path: str, out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    state = torch.load(state_path)
    measured = {}
    for scenario, extra in SCENARIOS.items():
        cfg, dims, mesh, model = parallel_model(state, extra, world)
        results = validator(dims.dp_rank(mesh), dims.dp_degree, loss_context(dims, cfg)).evaluate(model)
        samples = sampler(dims.tp).complete(model)
        measured[scenario] = {"validation": results, "samples": samples, "training": model.training}
    plain_losses, plain_weights = train_steps(state, world, rank, observe=False)
    observed_losses, observed_weights = train_steps(state, world, rank, observe=True)
    assert observed_losses == plain_losses, (observed_losses, plain_losses)
    for key, value in plain_weights.items():
        assert torch.equal(observed_weights[key], value), f"{key} changed by evaluating between steps"
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(measured, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    os._exit(0)
