"""A small model that has learnt two chat documents by heart, so that greedy generation is decisive (no near-ties
between tokens) and its replies are known; and a checkpoint of it written the way the trainer writes one."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import torch

from nano.checkpoint.manager import CheckpointManager, ModelAndOptimizer
from nano.config import Checkpoint, Optimizer
from nano.data.tokenizer import Tokenizer
from nano.models.llama import Transformer
from nano.optim import build_optimizer
from nano.train import forward_backward
from tests.checkpoint.checkpoints import SMALL, TOKENIZER

CHATS = {"Hi": "Hello there, friend.", "Was ist 7 mal 8?": "7 mal 8 ist 56. Grüße 🙂"}
TOK = Tokenizer(TOKENIZER)


def chat_document(user: str, reply: str) -> str:
    """A conversation as nano/data/formats.py writes an UltraChat row."""
    return f"<|user|>\n{user}\n<|assistant|>\n{reply}\n<|end|>"


def _stream() -> list[int]:
    return [t for user, reply in CHATS.items()
            for t in (TOK.bos_id, *TOK.encode(chat_document(user, reply)), TOK.eos_id)]


@cache
def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Transformer(SMALL)
    model.init_weights()
    optimizer = build_optimizer(model, Optimizer(lr=1e-2, weight_decay=0.0), "cpu")
    stream = _stream()
    tokens = torch.tensor(stream * (2 + 2 * SMALL.max_seq_len // len(stream)))
    windows = torch.stack([tokens[i : i + SMALL.max_seq_len + 1] for i in range(0, len(stream), 6)])  # many offsets
    for _ in range(60):
        optimizer.zero_grad()
        loss = forward_backward(model, [{"input": windows[:, :-1], "label": windows[:, 1:]}], torch.device("cpu"))
        optimizer.step()
    assert float(loss) < 0.01, f"the chats were not learnt by heart (loss {float(loss):.4f}): train longer"
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_model() -> Transformer:
    model = Transformer(SMALL)
    model.load_state_dict(_trained_state())
    return model.eval()


def save_checkpoint(folder: Path, step: int = 7) -> Path:
    """A complete DCP step folder of the trained model, with run.json and tokenizer.model as the trainer writes them."""
    model = trained_model().train()
    manager = CheckpointManager(
        Checkpoint(interval=1, keep_latest_k=0), folder,
        {"train": ModelAndOptimizer(model, build_optimizer(model, Optimizer(), "cpu"))},
        layout={"dp_world_size": 1, "vocab_size": SMALL.vocab_size}, is_rank0=True,
        files={"tokenizer.model": TOK.model_bytes, "config.toml": b"[job]\n"},
        run_info={"model_args": dataclasses.asdict(SMALL), "job_name": "chat", "command": "python -m nano.train",
                  "data_mix": []},
    )
    return manager.save(step, summary={"tokens_seen": 1, "loss": 0.1})


# Held-out documents for validation tests: the learnt chats (low loss) and prose it never saw (high loss), each
# source several windows of 31 tokens long, the last one short.
HELD_OUT_TEXTS = {
    "chat": [chat_document(user, reply) for user, reply in CHATS.items()] * 3,
    "prose": ["The river carried silt from the mountains to the delta, where farmers planted rice every spring.",
              "Eine kurze Geschichte über einen Leuchtturm, der jede Nacht leuchtet.",
              "def area(radius):\n    return 3.14159 * radius ** 2\n"],
}
