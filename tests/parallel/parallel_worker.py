"""torchrun worker: a parallelized tiny model trains like the single-process reference (losses and weights).

With float8 and data parallel, each rank scales its activations to float8 from its own rows, so rounding
differs from the single-process run; Adam turns that noise in tiny gradients into weight differences of
the order of the learning rate. With float8 and tensor parallel the loss comes from the full logits (the head
is a sharded module) while the single process's comes from nano.loss's chunks: their last-bit differences
flip float8 roundings into the same kind of noise. There only the losses are compared, within 1%.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from nano.config import load_config
from nano.models.llama import Transformer
from nano.parallel.dims import ParallelDims
from nano.parallel.parallelize import apply_float8, loss_context, parallelize, place_shard
from tests.tiny import GLOBAL_BATCH, TINY, batches, reference_model, train

SCENARIOS = {
    "fsdp": [],
    # The head's group reshards after forward, so the loss (computed inside the forward) must run before that.
    "fsdp_reshard_always": ["--parallelism.fsdp_reshard_after_forward", "always"],
    "hsdp": ["--parallelism.data_parallel_replicate_degree", "2", "--parallelism.data_parallel_shard_degree", "1"],
    "tp": ["--parallelism.tensor_parallel_degree", "2"],
    "tp_loss_parallel": ["--parallelism.tensor_parallel_degree", "2", "--parallelism.enable_loss_parallel"],
    "fsdp_ac_compile": ["--activation_checkpoint.mode", "selective_op", "--compile.enable"],
    "tp_float8": ["--parallelism.tensor_parallel_degree", "2", "--float8.enable", "--float8.emulate"],
    "fsdp_float8": ["--float8.enable", "--float8.emulate"],
    "fsdp_tp": ["--parallelism.tensor_parallel_degree", "2"],  # 4 ranks: a 2 x 2 (dp_shard, tp) mesh
}


def main(scenario: str) -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    cfg = load_config(["--training.global_batch_size", str(GLOBAL_BATCH), "--training.micro_batch_size", "1",
                       "--training.mixed_precision", "fp32", *SCENARIOS[scenario]], world_size=world)
    dims = ParallelDims.from_config(cfg.parallelism, world)
    dims.validate_model(TINY.n_heads, TINY.n_kv_heads)

    reference = reference_model()
    if cfg.float8.enable:
        apply_float8(reference, cfg.float8, "cpu")
    full_state = {k: v.clone() for k, v in reference.state_dict().items()}
    ref_losses = train(reference)

    mesh = dims.build_mesh("cpu")
    with torch.device("meta"):
        model = Transformer(TINY)
    plan = parallelize(model, dims, mesh, cfg, "cpu")
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(place=place_shard)
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True))

    dp_rank, per_rank = dims.dp_rank(mesh), GLOBAL_BATCH // dims.dp_degree
    losses = train(model, slice(dp_rank * per_rank, (dp_rank + 1) * per_rank), loss_ctx=loss_context(dims, cfg))
    float8_noise = cfg.float8.enable and (dims.dp_degree > 1 or dims.tp_enabled)
    for ref, loss in zip(ref_losses, losses):
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        mean /= world
        torch.testing.assert_close(mean, ref, rtol=1e-2 if float8_noise else 1e-4, atol=1e-5)

    # Data parallel keeps nano.loss's chunked path (the head's weight is gathered inside the forward); tensor
    # parallel applies the head as a module, which its plan and loss parallel need.
    tokens = batches(0)[:1]
    with loss_context(dims, cfg)():
        probe = model(tokens[:, :-1], tokens[:, 1:])
        chunked = type(probe.grad_fn).__name__ == "_LinearCrossEntropyBackward"
        probe.backward()  # completes the step FSDP began; the weights do not change
    assert chunked == (not dims.tp_enabled), f"{scenario}: loss computed by {type(probe.grad_fn).__name__}"

    trained = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    assert set(trained) == set(reference.state_dict()), "parallelize changed the state-dict keys"
    if not float8_noise:
        for key, value in reference.state_dict().items():
            # Adam divides by sqrt(v): reduction-order noise in tiny gradients grows to ~1e-5 in the weights.
            torch.testing.assert_close(trained[key], value, rtol=1e-3, atol=1e-4, msg=key)
    if dist.get_rank() == 0:
        print(f"{scenario}: match | " + " | ".join(plan), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)
