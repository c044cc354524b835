"""Held-out validation loss, overall and per source, computed with the training model itself.

The documents are each source's first `validation.documents_per_source` usable ones, which the training loader
never serves (nano.data.streams.hold_out). Each source's documents are packed like training data (BOS + text +
EOS, concatenated, cut into seq_len + 1 windows), so a source's validation loss is comparable to the training
loss on that source; the last, shorter window is padded with labels that count for nothing.

Every rank runs every evaluation: FSDP gathers and tensor parallel computes each layer with collectives that all
ranks must join, so a rank with no window left in a batch still runs a forward on padding. Each data-parallel
rank takes every dp-th window of a source; the sums of token losses and the token counts are all-reduced, so the
figures do not depend on the number of ranks. (They are summed over all ranks: tensor-parallel ranks of one
data-parallel rank add the same sums and counts, which leaves every mean unchanged.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from nano.config import Validation
from nano.data.streams import HeldOut
from nano.data.tokenizer import Tokenizer
from nano.loss import IGNORE_INDEX
from nano.parallel.parallelize import ContextFactory


@dataclass(frozen=True)
class Windows:
    """One source's validation windows: inputs and labels [N, S]; IGNORE_INDEX labels are padding."""

    name: str
    inputs: torch.Tensor
    labels: torch.Tensor


def pack_windows(name: str, documents: tuple[str, ...] | list[str], tokenizer: Tokenizer, seq_len: int) -> Windows:
    """BOS + document + EOS, concatenated and cut into seq_len + 1 windows as the training loader cuts them."""
    tokens = [t for doc in documents for t in (tokenizer.bos_id, *tokenizer.encode(doc), tokenizer.eos_id)]
    window = seq_len + 1
    count = math.ceil(len(tokens) / window)
    if len(tokens) - (count - 1) * window < 2:  # a last window of one token has nothing to predict
        count -= 1
    padded = torch.full((count * window,), IGNORE_INDEX, dtype=torch.long)
    used = min(len(tokens), count * window)
    padded[:used] = torch.tensor(tokens[:used], dtype=torch.long)
    windows = padded.view(count, window)
    inputs = windows[:, :-1].clone()
    inputs[inputs == IGNORE_INDEX] = tokenizer.eos_id  # after the last real token: no real token attends to it
    return Windows(name, inputs, windows[:, 1:].clone())


class Validator:
    """Evaluates the held-out windows of every source every `interval` steps (and at the last step)."""

    def __init__(self, cfg: Validation, held_out: Mapping[str, HeldOut], tokenizer: Tokenizer, *, seq_len: int,
                 micro_batch_size: int, global_batch_size: int, last_step: int, dp_rank: int, dp_degree: int,
                 device: torch.device, compute_ctx: ContextFactory = contextlib.nullcontext,
                 loss_ctx: ContextFactory = contextlib.nullcontext) -> None:
        self.cfg, self.last_step = cfg, last_step
        self.micro_batch_size, self.dp_rank, self.dp_degree = micro_batch_size, dp_rank, dp_degree
        self.device, self.compute_ctx, self.loss_ctx = device, compute_ctx, loss_ctx
        self.pad_id = tokenizer.eos_id
        self.sets: list[Windows] = []
        if not cfg.enable:
            return
        limit = cfg.steps * global_batch_size if cfg.steps > 0 else None  # in windows: the same at any world size
        for name, held in held_out.items():
            windows = pack_windows(name, held.documents, tokenizer, seq_len)
            self.sets.append(Windows(name, windows.inputs[:limit], windows.labels[:limit]))

    def due(self, step: int) -> bool:
        return self.cfg.enable and (step % self.cfg.interval == 0 or step == self.last_step)

    def _batches(self, windows: Windows) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of a source, as many on every rank, padded to the training batch shape."""
        inputs, labels = windows.inputs[self.dp_rank :: self.dp_degree], windows.labels[self.dp_rank :: self.dp_degree]
        per_rank = math.ceil(len(windows.inputs) / self.dp_degree)
        for start in range(0, per_rank, self.micro_batch_size):
            x, y = inputs[start : start + self.micro_batch_size], labels[start : start + self.micro_batch_size]
            missing = self.micro_batch_size - len(x)
            if missing:
                x = torch.cat([x, x.new_full((missing, x.shape[1]), self.pad_id)])
                y = torch.cat([y, y.new_full((missing, y.shape[1]), IGNORE_INDEX)])
            yield x, y

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss and perplexity per source (`val/loss/NAME`, `val/perplexity/NAME`) and over all held-out
        tokens (`val/loss`, `val/perplexity`). Call on every rank."""
        totals = torch.zeros(2, len(self.sets), dtype=torch.float64, device=self.device)  # loss sums; token counts
        was_training = model.training
        model.eval()
        try:
            for index, windows in enumerate(self.sets):
                for inputs, labels in self._batches(windows):
                    tokens = int((labels != IGNORE_INDEX).sum())
                    with self.loss_ctx(), self.compute_ctx():
                        loss = model(inputs.to(self.device, non_blocking=True),
                                     labels.to(self.device, non_blocking=True))
                    if tokens:  # a batch of padding only (kept for the collectives) has no loss
                        loss = loss.full_tensor() if isinstance(loss, DTensor) else loss
                        totals[0, index] += loss.double() * tokens
                        totals[1, index] += tokens
        finally:
            model.train(was_training)
        if dist.is_initialized():
            dist.all_reduce(totals)
        sums, counts = totals.cpu().tolist()
        results: dict[str, float] = {}
        overall = sum(sums) / sum(counts)
        results["val/loss"], results["val/perplexity"] = overall, perplexity(overall)
        for windows, loss_sum, count in zip(self.sets, sums, counts):
            results[f"val/loss/{windows.name}"] = loss_sum / count
            results[f"val/perplexity/{windows.name}"] = perplexity(loss_sum / count)
        return results


def perplexity(loss: float) -> float:
    return math.inf if loss > 700 else math.exp(loss)  # exp overflows a float beyond ~709
