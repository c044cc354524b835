"""training.z_loss: the chunked loss adds z x the mean squared log-partition, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nano.config import ConfigError, load_config
from nano.loss import IGNORE_INDEX, linear_cross_entropy

Z = 1e-2


def reference(head: nn.Linear, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).flatten(0, 1).float()
    counted = labels.flatten() != IGNORE_INDEX
    return F.cross_entropy(logits, labels.flatten()) + Z * torch.logsumexp(logits, -1)[counted].square().mean()


@pytest.mark.parametrize("bias", [False, True])  # a bias takes the module path (as a tensor-parallel head does)
def test_z_loss_value_and_gradients(bias: bool) -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    with torch.no_grad():
        head.weight.mul_(20)  # large logits: the z-loss term is far from negligible
    hidden = torch.randn(3, 10, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 10))
    labels[0, :4] = IGNORE_INDEX
    results = []
    for loss_fn in (reference, lambda h, x, y: linear_cross_entropy(x, h, y, chunk_tokens=7, z_loss=Z)):
        loss = loss_fn(head, hidden, labels)
        results.append([loss.detach(), *torch.autograd.grad(loss, (hidden, head.weight))])
    plain = linear_cross_entropy(hidden, head, labels, chunk_tokens=7)
    assert results[0][0] - plain > 0.1  # the term matters at these logits
    for name, got, expected in zip(("loss", "d hidden", "d weight"), results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_z_loss_with_loss_parallel_is_refused() -> None:
    with pytest.raises(ConfigError, match="training.z_loss needs the whole logits"):
        load_config(["--training.z_loss", "1e-4", "--parallelism.enable_loss_parallel"])
