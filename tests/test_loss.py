"""nano.loss: the chunked cross-entropy equals F.cross_entropy on the full logits, in value and gradients,
without ever holding the full logits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nano.loss import IGNORE_INDEX, linear_cross_entropy

TOKENS, DIM, VOCAB = 4 * 24, 32, 200


def head_and_inputs(ignored: int = 0, bias: bool = False) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    head = nn.Linear(DIM, VOCAB, bias=bias)
    hidden = torch.randn(4, TOKENS // 4, DIM, requires_grad=True)
    labels = torch.randint(0, VOCAB, (4, TOKENS // 4))
    labels.view(-1)[torch.randperm(TOKENS)[:ignored]] = IGNORE_INDEX
    return head, hidden, labels


def reference(head: nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).flatten(0, 1).float(), labels.flatten())


def loss_and_grads(loss: torch.Tensor, head: nn.Linear, hidden: torch.Tensor) -> list[torch.Tensor]:
    return [loss.detach(), *torch.autograd.grad(loss, (hidden, head.weight))]


@pytest.mark.parametrize("ignored", [0, 17])
@pytest.mark.parametrize("chunk_tokens", [1, 7, TOKENS // 4, TOKENS - 1, TOKENS, 4 * TOKENS])
def test_equals_cross_entropy_of_the_full_logits(ignored: int, chunk_tokens: int) -> None:
    head, hidden, labels = head_and_inputs(ignored)
    expected = loss_and_grads(reference(head, hidden, labels), head, hidden)
    got = loss_and_grads(linear_cross_entropy(hidden, head, labels, chunk_tokens=chunk_tokens), head, hidden)
    for name, g, e in zip(("loss", "d hidden", "d weight"), got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_matches_the_autocast_reference() -> None:
    """Under autocast the head's matmuls run in bf16 like nn.Linear's; the softmax and sums stay fp32."""
    head, hidden, labels = head_and_inputs(ignored=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = loss_and_grads(reference(head, hidden, labels), head, hidden)
        got = loss_and_grads(linear_cross_entropy(hidden, head, labels, chunk_tokens=10), head, hidden)
    assert got[1].dtype == hidden.dtype and got[2].dtype == head.weight.dtype  # gradients in the leaves' dtype
    for name, g, e in zip(("loss", "d hidden", "d weight"), got, expected):
        # bf16 logits round at ~3 significant digits; the chunked sum of the weight gradient rounds per chunk.
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3, msg=name)


def test_without_grad_gives_the_loss_and_no_graph() -> None:
    head, hidden, labels = head_and_inputs(ignored=3)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, head, labels, chunk_tokens=8)
        expected = reference(head, hidden, labels)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


def test_a_head_with_a_bias_is_applied_as_a_module() -> None:
    head, hidden, labels = head_and_inputs(bias=True)
    with torch.no_grad():
        head.bias.normal_()
    torch.testing.assert_close(linear_cross_entropy(hidden, head, labels), reference(head, hidden, labels))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numel = max([self.numel] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
        return out


def test_no_operator_ever_holds_the_full_logits() -> None:
    head, hidden, labels = head_and_inputs()
    with LargestTensor() as seen:
        reference(head, hidden, labels).backward()
    assert seen.numel >= TOKENS * VOCAB  # the measure sees the logits where they exist

    head, hidden, labels = head_and_inputs()
    with LargestTensor() as seen:
        linear_cross_entropy(hidden, head, labels, chunk_tokens=TOKENS // 2).backward()
    assert seen.numel == TOKENS // 2 * VOCAB  # one chunk of logits at a time (larger than the weight here)
