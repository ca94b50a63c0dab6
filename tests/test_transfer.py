"""``transfer_rate`` on binary linear models, whose DeepFool examples are known in closed form:
the minimal ℓ2 example of f(x) = w·x + b moves x along −w, so it fools every model with the
same boundary and none whose weight is orthogonal to w."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robaudit.plugins.metrics.transfer import TransferParams, TransferRate
from robaudit.testing import make_context, run_metric

DIM = 16
W1 = torch.ones(DIM)
W2 = torch.tensor([1.0] * (DIM // 2) + [-1.0] * (DIM // 2))  # W1 ⊥ W2


def linear_model(w: torch.Tensor, scale: float = 1.0) -> nn.Module:
    """Logits [0, scale·w·(x − 0.5)] on flattened 1×4×4 inputs."""
    layer = nn.Linear(DIM, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros(DIM), scale * w]))
        layer.bias.copy_(torch.tensor([0.0, -0.5 * scale * float(w.sum())]))
    return nn.Sequential(nn.Flatten(), layer)


def data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Points 0.5 + a·W1/16 + b·W2/16 with a, b in [0.3, 0.8]: class 1 for both models."""
    g = torch.Generator().manual_seed(0)
    a, b = (0.3 + 0.5 * torch.rand(2, n, 1, generator=g))
    x = 0.5 + a * W1 / 16 + b * W2 / 16
    return x.view(n, 1, 4, 4), torch.ones(n, dtype=torch.long)


def test_own_examples_transfer_to_the_same_boundary() -> None:
    x, y = data()
    source = linear_model(W1)
    for target in (source, linear_model(W1, scale=3.0)):
        ctx = make_context(target, x, y, models={"src": source})
        result = run_metric(TransferRate(), ctx, source="src")
        assert result.value == 1.0
        assert result.details["source_error"] == 1.0
        assert result.details["conditional_transfer_rate"] == 1.0
        assert result.details["clean_error"] == 0.0


def test_examples_do_not_transfer_to_an_orthogonal_boundary() -> None:
    x, y = data()
    ctx = make_context(linear_model(W2), x, y, models={"src": linear_model(W1)})
    result = run_metric(TransferRate(), ctx, source="src")
    assert result.value == 0.0
    assert result.details["source_error"] == 1.0
    # the minimal ℓ2 distance of a linear boundary is f(x)/‖w‖₂: its stddev over 16 pixels
    f = (x.flatten(1) - 0.5) @ W1
    expected = float((f / W1.norm() * 1.02 / math.sqrt(DIM)).mean())
    assert result.details["av_stddev"] == pytest.approx(expected, rel=1e-3)


def test_magnify_sets_the_stddev() -> None:
    x, y = data()
    source = linear_model(W1)
    ctx = make_context(source, x, y, models={"src": source})
    result = run_metric(TransferRate(), ctx, source="src", magnify=0.05)
    assert result.details["av_stddev"] == pytest.approx(0.05, rel=1e-5)
    assert result.value == 1.0  # a longer step along −w stays on the other side


def test_noise_error_follows_the_gaussian_tail() -> None:
    """Gaussian noise of stddev σ flips f = w·x + b with probability Φ(−f/(σ‖w‖₂)); with one
    margin for every sample, the noise error averages that probability."""
    n = 400
    x = (0.5 + 0.3 * W1 / 16).expand(n, DIM).reshape(n, 1, 4, 4).clone()
    y = torch.ones(n, dtype=torch.long)
    source = linear_model(W1)
    ctx = make_context(source, x, y, models={"src": source}, seed=3)
    details = run_metric(TransferRate(), ctx, source="src", magnify=0.3 / 4).details
    sigma = details["av_stddev"]
    expected = 0.5 * math.erfc(0.3 / (sigma * 4) / math.sqrt(2))  # Φ(−1) ≈ 0.159
    assert details["noise_error"] == pytest.approx(expected, abs=0.06)


def test_source_must_name_a_model() -> None:
    with pytest.raises(ValidationError, match="no model named"):
        TransferParams.model_validate({"source": "other"}, context={"models": {"model"}})
    assert TransferParams.model_validate({"source": "other"},
                                         context={"models": {"model", "other"}})
