"""The start-up memory estimate against the training step traced on fake tensors, and what the trace sees."""

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from nano.config import JobConfig, load_config
from nano.loss import linear_cross_entropy
from nano.memory_trace import fit_block_bytes, trace_peak_memory
from nano.models.llama import FLAVORS, Transformer, num_params
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import BLOCK_BYTES, estimate_peak_memory
from nano.parallel.parallelize import apply_ac, bf16_autocast

# Small enough to trace in seconds, shaped like nano_1b (FFN 2.69 x dim, a 32K vocabulary), with GQA.
ARGS = dataclasses.replace(FLAVORS["debug"], dim=512, n_heads=8, n_kv_heads=4, ffn_hidden_dim=1376, n_layers=4,
                           vocab_size=32064, max_seq_len=1024)


def config(mode: str, precision: str, world_size: int = 1, micro: int = 4) -> JobConfig:
    overrides = {"training.seq_len": 1024, "training.micro_batch_size": micro,
                 "training.global_batch_size": 2 * micro * world_size, "training.mixed_precision": precision,
                 "activation_checkpoint.mode": mode}
    argv = [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    return load_config(["--config", "train_configs/debug_model.toml", *argv], world_size=world_size)


def test_the_estimators_block_table_is_what_tracing_a_block_gives() -> None:
    """BLOCK_BYTES, re-fitted from traces of small blocks: a change to the block (an op that keeps more, a
    new cast) fails here with the coefficients to put in the table."""
    fitted = {key: fit_block_bytes(*key) for key in BLOCK_BYTES}
    assert fitted == BLOCK_BYTES


@pytest.mark.parametrize("world_size, precision", [(1, "bf16"), (1, "fp32"), (4, "bf16")])
@pytest.mark.parametrize("mode", ["none", "selective_op", "full"])
def test_the_estimate_matches_the_traced_peak(mode: str, precision: str, world_size: int) -> None:
    """One GPU in bf16 (autocast), fp32, and FSDP over 4 GPUs (bf16 policy): never below the traced step's
    peak, which would let a run that cannot fit start, and never far above it, which would refuse one that can."""
    cfg = config(mode, precision, world_size)
    traced = trace_peak_memory(cfg, ARGS, world_size).total
    dims = ParallelDims.from_config(cfg.parallelism, world_size)
    estimate = estimate_peak_memory(ARGS, cfg, dims).total
    assert 0.99 * traced <= estimate <= 1.12 * traced, (estimate / traced, estimate, traced)


def test_the_trace_sees_the_logits_the_chunked_loss_never_makes() -> None:
    """The full logits path holds at least the fp32 logits and their gradient (8 bytes per logit) more."""
    cfg = config("full", "bf16")
    chunked = trace_peak_memory(cfg, ARGS).total
    logits = trace_peak_memory(cfg, ARGS, materialise_logits=True).total
    tokens = cfg.training.micro_batch_size * cfg.training.seq_len
    assert logits - chunked >= 8 * tokens * ARGS.vocab_size - chunked // 10, (logits, chunked)


def test_autocast_keeps_no_copy_of_the_weights_across_the_forward() -> None:
    """With activation checkpointing a block's bf16 weights are needed only while it runs; autocast's default
    cache would keep all of them (2 bytes per parameter) until the forward ends."""
    args = dataclasses.replace(ARGS, n_layers=8, vocab_size=64)
    peaks = {}
    for name, autocast in (("nano", bf16_autocast("cpu")), ("cached", lambda: torch.autocast("cpu", torch.bfloat16))):
        with FakeTensorMode(), torch.device("cpu"):
            model = Transformer(args)
            apply_ac(model, "full", every_n_layers=1)
            tokens = torch.randint(0, args.vocab_size, (1, 64))
            tracker = MemTracker()
            tracker.track_external(model)
            with tracker, autocast():
                model(tokens, tokens)
            peaks[name] = next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]
    blocks = num_params(model) - 2 * args.vocab_size * args.dim
    assert peaks["cached"] - peaks["nano"] >= 2 * blocks * 7 / 8, peaks  # all but one block's copies


def test_the_chunked_loss_holds_one_chunk_of_logits_at_a_time() -> None:
    """A chunk's fp32 logits and their 16-bit gradient are freed before the next chunk's are made: the
    working memory of eight chunks is that of one (6 bytes per logit), not of two overlapping (12)."""
    tokens, chunk, dim, vocab = 8192, 1024, 256, 32064
    with FakeTensorMode(), torch.device("cpu"):
        head = torch.nn.Linear(dim, vocab, bias=False)
        hidden = torch.randn(tokens, dim, requires_grad=True)
        labels = torch.randint(0, vocab, (tokens,))
        tracker = MemTracker()
        tracker.track_external(head, hidden)
        with tracker, bf16_autocast("cpu")():
            linear_cross_entropy(hidden, head, labels, chunk_tokens=chunk)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]
    kept = 4 * vocab * dim + 2 * tokens * dim  # the head's fp32 gradient, the hidden states' 16-bit gradient
    copies = 4 * vocab * dim + 4 * tokens * dim + 2 * (vocab * dim + tokens * dim)  # inputs, their bf16 copies
    assert peak - kept - copies < 7 * chunk * vocab + 2 * vocab * dim, (peak - kept - copies) / (chunk * vocab)
