"""Cross-entropy of the output layer without materialising the logits.

`linear_cross_entropy(hidden, head, labels)` equals
`F.cross_entropy(head(hidden).flatten(0, 1).float(), labels.flatten())` in value and gradients, but walks the
tokens in chunks: each chunk's logits are computed, turned into their loss and their gradient
(softmax - one_hot) in place, and multiplied straight into the gradients of the hidden states and of the
head's weight. Only one chunk of fp32 logits is ever alive, and nothing of size tokens x vocabulary is kept
for backward, which only scales the two saved gradients by the incoming gradient. For nano_1b at micro-batch
8 x 2048 that is ~5 GiB of logits, their fp32 copy and its gradient that no longer exist; on a CPU the
fused pass also skips log_softmax's stored output and the zero-filled gradient of nll_loss.

The gradients are computed in the forward pass, so a forward under `torch.no_grad()` (evaluation) skips
them. A head whose weight is a DTensor (tensor parallel, sharded over the vocabulary) is applied as a module
instead, so its parallel plan and loss parallel keep working. Under FSDP the model calls
this right after its final norm, which shares the head's FSDP group (nano/parallel/parallelize.py), so the
head's weight is already gathered into a plain tensor; tests/parallel checks that data parallel keeps the
chunked path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

# Tokens per chunk. On a GPU: large enough for full-speed matmuls while one chunk's fp32 logits stay small
# (1024 x 32K vocab x 4 bytes = 128 MiB). On a CPU: small enough to stay below the allocator's mmap threshold
# (512 x 8K vocab x 4 bytes = 16 MiB), so each chunk reuses memory instead of page-faulting in fresh memory,
# and large enough for two threads to share each matmul (docs/benchmarks.md has the measurements).
CHUNK_TOKENS = {"cpu": 512}
DEFAULT_CHUNK_TOKENS = 1024
IGNORE_INDEX = -100


def linear_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor, chunk_tokens: int | None = None,
    ignore_index: int = IGNORE_INDEX, z_loss: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` [..., vocab] against `labels` [...] (tokens equal to
    `ignore_index` count for nothing), computed chunk by chunk; plus `z_loss` x the mean squared
    log-partition log(sum(exp(logits))) of the same tokens (PaLM's z-loss, which keeps the logits from drifting)."""
    weight = head.weight
    if isinstance(weight, DTensor) or head.bias is not None:
        # Tensor parallel: the module's plan returns vocab-sharded or replicated logits (see loss_parallel).
        logits = head(hidden).flatten(0, 1).float()
        loss = F.cross_entropy(logits, labels.flatten(), ignore_index=ignore_index)
        if z_loss:
            loss = loss + z_loss * torch.logsumexp(logits, dim=-1)[labels.flatten() != ignore_index].square().mean()
        return loss
    device_type = hidden.device.type
    chunk_tokens = chunk_tokens or CHUNK_TOKENS.get(device_type, DEFAULT_CHUNK_TOKENS)
    # Under autocast the matmuls run in its dtype, as nn.Linear's would; the function itself runs without
    # autocast so that the fp32 parts (softmax, gradient accumulation) stay fp32.
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden.flatten(0, -2), weight, labels.flatten(), dtype, chunk_tokens,
                                         ignore_index, z_loss)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype,
                chunk_tokens: int, ignore_index: int, z_loss: float) -> torch.Tensor:
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[:2]
        h, w = hidden.to(dtype), weight.to(dtype)  # [N, D], [V, D]
        valid = labels != ignore_index
        targets = labels.masked_fill(~valid, 0)[:, None]  # [N, 1], a harmless index where ignored
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(h) if need_hidden_grad else None
        grad_weight = torch.zeros_like(w, dtype=torch.float32) if need_weight_grad else None
        for start in range(0, h.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            loss_sum += _chunk(h[rows], w, targets[rows], valid[rows], z_loss,
                               None if grad_hidden is None else grad_hidden[rows], grad_weight)
        count = valid.sum()
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        hidden_dtype, weight_dtype = ctx.dtypes
        return (
            None if grad_hidden is None else (grad_hidden * scale).to(hidden_dtype),
            None if grad_weight is None else (grad_weight * scale).to(weight_dtype),
            None, None, None, None, None,
        )


def _chunk(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, z_loss: float,
           grad_hidden: torch.Tensor | None, grad_weight: torch.Tensor | None) -> torch.Tensor:
    """Loss summed over one chunk of tokens; writes the chunk's hidden-state gradient into `grad_hidden` and
    adds its head gradient to `grad_weight`. A function of its own so that a chunk's logits are freed
    before the next chunk's exist."""
    probs = (h @ w.T).float()  # [n, V] logits, about to become softmax - one_hot in place
    target_logit = probs.gather(1, targets).squeeze(1)
    row_max = probs.amax(dim=1, keepdim=True)
    sum_exp = probs.sub_(row_max).exp_().sum(dim=1, keepdim=True)
    lse = sum_exp.log().add_(row_max).squeeze(1)
    token_loss = lse - target_logit
    if z_loss:
        token_loss = token_loss + z_loss * lse.square()
    loss_sum = torch.where(valid, token_loss, 0.0).sum()
    if grad_hidden is None and grad_weight is None:
        return loss_sum
    # d loss / d logits = softmax - one_hot; ignored rows are scaled to zero.
    scale = valid[:, None] / sum_exp
    if z_loss:  # d (z lse^2) / d logits = 2 z lse softmax
        scale = scale * (1 + 2 * z_loss * lse[:, None])
    probs.mul_(scale)
    probs.scatter_add_(1, targets, -valid[:, None].to(probs.dtype))
    grad_logits = probs.to(h.dtype)
    del probs  # the fp32 copy is done with (the same tensor when computing in fp32)
    if grad_hidden is not None:
        torch.mm(grad_logits, w, out=grad_hidden)
    if grad_weight is not None:
        if h.dtype == torch.float32:
            grad_weight.addmm_(grad_logits.T, h)
        else:  # a 16-bit matmul per chunk, summed over the chunks in fp32
            grad_weight += grad_logits.T @ h
    return loss_sum
