"""fgsm_output_change (Ghorbani & Zou 2017, Appendix G) against the closed form of a linear
softmax classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robaudit.plugins.metrics.deformation.fgsm_output_change import FgsmOutputChange
from robaudit.testing import make_context, run_metric


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def closed_form(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float,
                box: tuple[float, float] | None) -> np.ndarray:
    """‖P − P*‖₁ for logits W x + b: ∇ₓ CE = Wᵀ(softmax(Wx + b) − onehot(y))."""
    p = softmax(x @ w.T + b)
    grad = (p - np.eye(w.shape[0])[y]) @ w
    x_adv = x + eps * np.sign(grad)
    if box is not None:
        x_adv = np.clip(x_adv, *box)
    return np.abs(p - softmax(x_adv @ w.T + b)).sum(axis=1)


def setup(seed: int = 0, n: int = 40, d: int = 6, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, c)
    with torch.no_grad():
        model.weight.copy_(2 * torch.randn(c, d, generator=g))
        model.bias.copy_(torch.randn(c, generator=g))
    x = torch.rand(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    return model, x, y, w, b


@pytest.mark.parametrize("eps", [2 / 256, 0.1, 0.5])
def test_matches_closed_form_without_clipping(eps: float) -> None:
    model, x, y, w, b = setup()
    result = run_metric(FgsmOutputChange(), make_context(model, x, y, batch_size=16),
                        eps=eps, clip=False)
    expected = closed_form(w, b, x.double().numpy(), y.numpy(), eps, None)
    assert result.samples is not None
    np.testing.assert_allclose(result.samples, expected, atol=2e-5)
    assert result.value == pytest.approx(expected.mean(), abs=2e-5)


def test_matches_closed_form_with_clipping_to_the_input_range() -> None:
    model, x, y, w, b = setup(seed=1)
    result = run_metric(FgsmOutputChange(), make_context(model, x, y), eps=0.3)
    expected = closed_form(w, b, x.double().numpy(), y.numpy(), 0.3, (0.0, 1.0))
    unclipped = closed_form(w, b, x.double().numpy(), y.numpy(), 0.3, None)
    np.testing.assert_allclose(result.samples, expected, atol=2e-5)
    assert not np.allclose(expected, unclipped, atol=1e-3)  # clipping did act


def test_larger_steps_change_the_output_more_and_flip_predictions() -> None:
    model, x, y, *_ = setup(seed=2, n=100)
    small = run_metric(FgsmOutputChange(), make_context(model, x, y), eps=0.01, clip=False)
    large = run_metric(FgsmOutputChange(), make_context(model, x, y), eps=0.3, clip=False)
    assert small.value < large.value <= 2.0
    assert large.details["fgsm_accuracy"] < large.details["accuracy"]
    assert small.details["prediction_changed"] <= large.details["prediction_changed"]


def test_floor_and_bad_params() -> None:
    model, x, y, *_ = setup()
    ctx = make_context(model, x, y)
    floor = FgsmOutputChange().floor(ctx, FgsmOutputChange.Params())
    assert (floor.forward, floor.gradient) == (len(x), len(x))
    for bad in ({"eps": 0}, {"eps": -1.0}, {"epsilon": 0.1}):
        with pytest.raises(ValidationError):
            FgsmOutputChange.Params.model_validate(bad)


def test_samples_without_a_gradient_are_left_out_and_none_is_an_error():
    """ReLU then a head: a sample with every input negative has a dead layer, a zero
    gradient, no FGSM step; its change of 0 says nothing."""
    from robaudit.errors import MetricError

    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(), nn.Linear(3, 3))
    live = torch.rand(8, 3) + 0.5
    dead = -torch.rand(2, 3) - 0.5
    y = torch.arange(10) % 3
    ctx = make_context(model, torch.cat([live, dead]), y, input_range=(-2.0, 2.0))
    result = run_metric(FgsmOutputChange(), ctx, eps=0.1)
    assert result.details["included"] == {"used": 8, "asked": 10, "share": 0.8}
    alone = run_metric(FgsmOutputChange(), make_context(model, live, y[:8],
                                                        input_range=(-2.0, 2.0)), eps=0.1)
    np.testing.assert_allclose(result.samples, alone.samples)
    with pytest.raises(MetricError, match="loss gradient is 0 at every audit sample"):
        run_metric(FgsmOutputChange(), make_context(model, dead, y[:2],
                                                    input_range=(-2.0, 2.0)), eps=0.1)
