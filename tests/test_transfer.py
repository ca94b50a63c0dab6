"""``transfer_rate`` on binary linear models, whose DeepFool examples are known in closed form:
the minimal ℓ2 example of f(x) = w·x + b moves x along −w, so it fools every model with the
same boundary and none whose weight is orthogonal to w."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robaudit.errors import MetricError
from robaudit.ops.deepfool import REFINE_STEPS, STEP_SLACK, deepfool
from robaudit.plugins.metrics.adversarial.transfer import TransferParams, TransferRate
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
    # the minimal ℓ2 distance of a linear boundary is f(x)/‖w‖₂: its stddev over 16 pixels;
    # DeepFool's example is across by at most the overshoot 1.02 (and its bisection's 2^-10)
    f = (x.flatten(1) - 0.5) @ W1
    exact = float((f / W1.norm() / math.sqrt(DIM)).mean())
    assert exact * (1 - 1e-6) <= result.details["av_stddev"] <= exact * 1.02 * (1 + 2.0**-9)



class CappedLinear(nn.Module):
    """Logits [0, min(W1·(x − 0.5), cap)]: linear below the cap, flat above it, where DeepFool
    finds a zero gradient and stops without converging."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = cap
        self.layer = nn.Linear(DIM, 1)
        with torch.no_grad():
            self.layer.weight.copy_(W1[None])
            self.layer.bias.fill_(-0.5 * float(W1.sum()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.layer(x.flatten(1)).clamp(max=self.cap)
        return torch.cat([torch.zeros_like(f), f], dim=1)


def test_noise_stddev_averages_only_the_adversarial_examples_made() -> None:
    """σ is the mean stddev over the samples the source classifies correctly and DeepFool
    moves across: not over its errors (r = 0) nor over the flat region (no example made)."""
    x, y = data(40)
    y[::3] = 0  # the source predicts 1 everywhere: these are its errors
    source = CappedLinear(cap=0.55)
    ctx = make_context(linear_model(W2), x, y, models={"src": source})
    details = run_metric(TransferRate(), ctx, source="src", min_included=0.1).details
    # By a loop: f = a (W2 ⊥ W1), the nearest boundary is f/‖W1‖₂ away (reachable if f < cap).
    f = (x.flatten(1) - 0.5) @ W1
    made = [i for i in range(40) if y[i] == 1 and float(f[i]) < 0.55]
    assert 0 < len(made) < int((y == 1).sum())  # both exclusions are exercised
    # DeepFool with its final bisection: between the exact distance d and 1.02 d, within
    # 2^-REFINE_STEPS of the last segment, at most 1.02 (d + STEP_SLACK) (robaudit.ops.deepfool)
    low = sum(float(f[i]) / 4 / math.sqrt(DIM) for i in made) / len(made)
    slack = sum(1.02**2 * (float(f[i]) / 4 + STEP_SLACK) / math.sqrt(DIM) for i in made)
    assert low * (1 - 1e-9) <= details["av_stddev"]
    assert details["av_stddev"] <= 1.02 * low + slack / len(made) * 2.0**-REFINE_STEPS
    assert details["source_clean_error"] == pytest.approx(float((y == 0).double().mean()))
    assert details["deepfool_converged"] == pytest.approx(len(made) / int((y == 1).sum()))
    assert details["included"]["used"] == len(made)
    assert details["included"]["asked"] == int((y == 1).sum())
    with pytest.raises(MetricError, match=rf"only {len(made)} of {int((y == 1).sum())} samples"):
        run_metric(TransferRate(), ctx, source="src", min_included=0.99)


class Constant(nn.Module):
    """Logits that do not depend on the input: DeepFool has no gradient to follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0], dtype=x.dtype).expand(x.shape[0], 2) + 0 * x.sum()


def test_no_adversarial_example_made_is_an_error_not_a_zero_noise_baseline() -> None:
    x, y = data(12)
    ctx = make_context(linear_model(W1), x, y, models={"src": Constant()})
    with pytest.raises(MetricError, match=r"made no adversarial example .*none of the 12"):
        run_metric(TransferRate(), ctx, source="src")
    ctx = make_context(linear_model(W1), x, torch.zeros_like(y), models={"src": Constant()})
    with pytest.raises(MetricError, match=r"misclassifies every audit sample"):
        run_metric(TransferRate(), ctx, source="src")

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


def test_value_does_not_depend_on_the_batch_size() -> None:
    """The split is processed one ``batch_size`` batch at a time: with batches of 7 (5 of 7
    and one of 5) every per-sample result is that of one batch of the whole split. The target
    w = W1 + 0.02·W2 is tilted from the source's W1, so the example x − c·(a/16)·W1
    (f_src = a; c the factor, between 1 and 1.02, by which DeepFool's example is across)
    leaves the target at f = (1 − c)·a + 0.02·b: it transfers exactly where that is < 0
    (closed form from the source's DeepFool run), besides the source's errors (r = 0, y = 0),
    which the target gets wrong too."""
    x, y = data(40)
    y[::3] = 0
    g = torch.Generator().manual_seed(0)
    a, b = (0.3 + 0.5 * torch.rand(2, 40, generator=g)).squeeze(-1)
    source, target = linear_model(W1), linear_model(W1 + 0.02 * W2)
    results = [
        run_metric(TransferRate(), make_context(target, x, y, models={"src": source},
                                                batch_size=size), source="src")
        for size in (7, 1000)
    ]
    small, whole = results
    r = deepfool(source, x, input_range=(0.0, 1.0)).perturbation
    c = -(r.flatten(1) @ W1) / a  # r = −c·(a/16)·W1
    assert bool((c >= 1 - 1e-6).all()) and bool((c <= 1.02 * (1 + 2.0**-9)).all())
    expected = ((y == 0) | ((1 - c) * a + 0.02 * b < 0)).double().numpy()
    assert 0.2 < expected.mean() < 0.9
    assert small.samples.tolist() == whole.samples.tolist() == expected.tolist()
    assert small.value == whole.value
    for key in ("source_error", "source_clean_error", "clean_error",
                "conditional_transfer_rate", "deepfool_converged"):
        assert small.details[key] == whole.details[key]
    assert small.details["av_stddev"] == pytest.approx(whole.details["av_stddev"], rel=1e-6)
