"""clean_accuracy: a tied top logit is no prediction (design §10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robaudit.errors import MetricError
from robaudit.plugins.metrics.general.accuracy import CleanAccuracy
from robaudit.testing import make_context, run_metric


def test_clean_accuracy_leaves_out_tied_top_logits() -> None:
    """Logits (x₀, x₁, −1): a sample with x₀ = x₁ has no prediction (argmax would say 0)."""
    class Tie(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, -torch.ones(len(x), 1)], dim=1)

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9], [0.8, 0.1], [0.5, 0.5]])
    y = torch.tensor([0, 1, 0, 0, 0])
    result = run_metric(CleanAccuracy(), make_context(Tie(), x, y))
    assert result.value == 3 / 4 and result.details["included"]["used"] == 4
    with pytest.raises(MetricError, match="every audit sample's largest logit is tied"):
        run_metric(CleanAccuracy(), make_context(Tie(), torch.full((4, 2), 0.3), y[:4]))
    with pytest.raises(MetricError, match=r"only 3 of 5 samples \(the others' largest logit"):
        run_metric(CleanAccuracy(), make_context(Tie(), x[[0, 1, 2, 4, 4]], y))
