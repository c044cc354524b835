"""A small checkpoint written exactly the way the trainer writes one, for export and Hub tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nano.checkpoint.manager import CheckpointManager, ModelAndOptimizer
from nano.config import Checkpoint, Optimizer
from nano.data.tokenizer import Tokenizer
from nano.models.llama import ModelArgs, Transformer
from nano.optim import build_optimizer
from nano.train import forward_backward
from tests.distributed import REPO_ROOT

TOKENIZER = REPO_ROOT / "assets" / "tokenizer" / "nano_demo.model"
SMALL = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=8192, ffn_hidden_dim=160, max_seq_len=64)


def trainer_like_manager(folder: Path, args: ModelArgs = SMALL, **kwargs) -> CheckpointManager:
    """A checkpoint manager set up as the trainer sets it up: model + AdamW (one step taken), tokenizer, run.json."""
    torch.manual_seed(0)
    model = Transformer(args)
    model.init_weights()
    optimizer = build_optimizer(model, Optimizer(lr=1e-2), "cpu")
    tokens = torch.randint(0, args.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    forward_backward(model, [{"input": tokens[:, :-1], "label": tokens[:, 1:]}], torch.device("cpu"))
    optimizer.step()
    return CheckpointManager(
        Checkpoint(interval=1, keep_latest_k=kwargs.pop("keep_latest_k", 0)), folder,
        {"train": ModelAndOptimizer(model, optimizer)},
        layout={"dp_world_size": 1, "vocab_size": args.vocab_size}, is_rank0=True,
        files={"tokenizer.model": Tokenizer(TOKENIZER).model_bytes, "config.toml": b"[job]\n"},
        run_info={"model_args": dataclasses.asdict(args), "job_name": "tiny", "command": "python -m nano.train --config x",
                  "data_mix": [{"name": "gsm8k", "hub_id": "openai/gsm8k", "weight": 8.0, "local": False}]},
        **kwargs,
    )


def make_checkpoint(folder: Path, args: ModelArgs = SMALL, step: int = 3) -> Path:
    """One complete step folder, as the trainer writes it."""
    return trainer_like_manager(folder, args).save(step, summary={"tokens_seen": 1234, "loss": 7.5})
