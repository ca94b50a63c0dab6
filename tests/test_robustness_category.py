"""``robustness_category`` on models built to sit in each of the four categories.

Binary linear models f(x) = w·x + b (logits [0, f], w = ±1 entries in 16 dimensions, so
ε‖w‖₁ = 16ε): a sample with margin f(x) = m is fooled within the ℓ∞ budget ε by a per-sample
or a universal perturbation exactly when m < 16ε, and by a random vertex of the cube with the
binomial probability P(Σ ±1 ≤ −m/ε). A "bubble" model that accepts only a tiny ball around
the data is fooled by every perturbation larger than the ball.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from robaudit.plugins.metrics.universal.robustness_category import RobustnessCategory
from robaudit.plugins.metrics.universal.uap import UAPFoolingRate
from robaudit.testing import make_context, run_metric

DIM = 16
SIGNS = torch.tensor([1.0, -1.0] * (DIM // 2))


def linear_model() -> nn.Module:
    """Logits [0, w·(x − 0.5)] on flattened 1×4×4 inputs."""
    layer = nn.Linear(DIM, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros(DIM), SIGNS]))
        layer.bias.copy_(torch.tensor([0.0, -0.5 * float(SIGNS.sum())]))
    return nn.Sequential(nn.Flatten(), layer)


class Bubble(nn.Module):
    """Class 1 inside the ℓ2 ball of radius ρ around the centre, class 0 outside: logits
    [0, ρ² − ‖x − 0.5‖²] (through a fixed nn.Linear, the default feature layer)."""

    def __init__(self, radius: float) -> None:
        super().__init__()
        self.radius = radius
        self.out = nn.Linear(1, 2)
        with torch.no_grad():
            self.out.weight.copy_(torch.tensor([[0.0], [1.0]]))
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.radius**2 - ((x.flatten(1) - 0.5) ** 2).sum(dim=1, keepdim=True))


def samples(margins: list[float], seed: int = 0) -> torch.Tensor:
    """Points 0.5 + (a small random offset ⊥ w) + m·w/‖w‖², so that f = m."""
    g = torch.Generator().manual_seed(seed)
    offset = (torch.rand(len(margins), DIM, generator=g) - 0.5) * 0.2
    offset -= (offset @ SIGNS)[:, None] * SIGNS / DIM
    return (0.5 + offset + torch.tensor(margins)[:, None] * SIGNS / DIM).view(-1, 1, 4, 4)


def category(model: nn.Module, x: torch.Tensor, **params: object) -> tuple[float, dict]:
    ctx = make_context(model, x, torch.zeros(x.shape[0], dtype=torch.long))
    result = run_metric(RobustnessCategory(), ctx, max_passes=5, **params)
    return result.value, result.details


@pytest.mark.parametrize("attack", ["pgd", "deepfool"])
def test_categories_of_constructed_models(attack: str) -> None:
    one_side = samples([0.4] * 20)  # fooled within ε = 0.05 (16ε = 0.8), not within 0.01
    both_sides = samples([0.4] * 10 + [-0.4] * 10)
    linear = linear_model()

    value, details = category(linear, one_side, eps=0.01, attack=attack)
    assert value == 1
    assert details["per_sample_fooling_rate"] == 0.0

    # a universal v = −ε·sign(w) fools every sample; a random vertex needs Σ±1 ≤ −8 (< 4%)
    value, details = category(linear, one_side, eps=0.05, attack=attack)
    assert value == 3
    assert details["universal_fooling_rate"] == 1.0
    assert details["noise_fooling_rate"] < 0.2

    # one v can push only one side across: at most half; each sample alone is fooled
    value, details = category(linear, both_sides, eps=0.05, attack=attack, tau=0.6)
    assert value == 2
    assert details["universal_fooling_rate"] <= 0.5
    assert details["attack_fooling_rate"] == 1.0

    # every vertex of the ε-cube has ℓ2 norm 4ε = 0.2 > 2ρ: each noisy sample leaves the bubble
    bubble_data = 0.5 + 0.002 * torch.randn(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    value, details = category(Bubble(0.05), bubble_data, eps=0.05, attack=attack)
    assert value == 4
    assert details["noise_fooling_rate"] == 1.0


def test_category_one_means_almost_no_sample_is_fooled() -> None:
    """Margins 0.4 (fooled within ε = 0.05: 16ε = 0.8) on 3 of 20 samples, 2.0 on the rest:
    a per-sample attack fools 15%, less than tau = 0.5 but more than the 5% tolerance, so the
    model has (per-sample) adversarial perturbations: category 2, not 1. With one such
    sample of 40 (2.5%) it is within the tolerance: category 1."""
    x = samples([0.4] * 3 + [2.0] * 17)
    for attack in ("pgd", "deepfool"):
        value, details = category(linear_model(), x, eps=0.05, attack=attack)
        assert details["attack_fooling_rate"] == pytest.approx(0.15)
        assert value == 2 and details["category_name"].startswith("per-sample")
        assert details["tolerance"] == 0.05 and details["tau"] == 0.5
    value, details = category(linear_model(), samples([0.4] + [2.0] * 39), eps=0.05)
    assert details["per_sample_fooling_rate"] == pytest.approx(0.025)
    assert value == 1 and details["category_name"].startswith("no adversarial")
    value, _ = category(linear_model(), samples([0.4] + [2.0] * 39), eps=0.05, tolerance=0.0)
    assert value == 2


def test_category_does_not_improve_as_the_budget_grows() -> None:
    x = samples([0.2 * (i + 1) for i in range(10)])  # margins 0.2 … 2.0
    values = [category(linear_model(), x, eps=eps, tau=0.3)[0]
              for eps in (0.001, 0.02, 0.07, 0.5)]
    assert values == sorted(values)
    assert values[0] == 1 and values[-1] >= 3


def test_shares_the_uap_fit_with_uap_fooling_rate() -> None:
    x = samples([0.4] * 6 + [1.6] * 4)
    ctx = make_context(linear_model(), x, torch.ones(10, dtype=torch.long))
    uap = run_metric(UAPFoolingRate(), ctx, eps=0.05, max_passes=4)
    # the runner gives each check its own seed and generator, and the run's cache
    other = replace(ctx, seed=12345, generator=torch.Generator().manual_seed(12345))
    before = set(ctx.cache._store)
    cat = run_metric(RobustnessCategory(), other, eps=0.05, max_passes=4)
    assert not [k for k in set(ctx.cache._store) - before if k[0] == "uap"]  # no second fit
    assert cat.details["universal_fooling_rate"] == uap.value == 0.6
    assert cat.details["uap_passes"] == uap.details["passes"]


def test_deterministic_with_the_seed() -> None:
    x = samples([0.1 * (i + 1) for i in range(12)], seed=4)
    assert category(linear_model(), x, eps=0.05) == category(linear_model(), x, eps=0.05)


def test_rates_do_not_depend_on_the_batch_size() -> None:
    """The split is evaluated one batch_size batch at a time (here 3 of 3 and one of 2, and
    one batch of 11): the universal v = −ε·sign(w), fitted on samples of class 1, fools the
    class-1 samples with margin m < 16ε = 0.8, and ℓ∞ DeepFool every sample with |m| < 0.8."""
    m = [0.4, -0.4, 1.6, -0.6, 0.6, -1.6, 0.2, 1.2, -0.2, 0.7, 1.0]
    x = samples(m, seed=5)
    ref = samples([0.4] * 6 + [1.6] * 4, seed=6)
    runs = []
    for size in (3, 1000):
        ctx = make_context(linear_model(), x, torch.zeros(len(m), dtype=torch.long),
                           reference=(ref, torch.ones(10, dtype=torch.long)), batch_size=size)
        runs.append(run_metric(RobustnessCategory(), ctx, eps=0.05, max_passes=5,
                               attack="deepfool").details)
    small, whole = runs
    universal = sum(0 < v < 0.8 for v in m) / len(m)
    per_sample = sum(abs(v) < 0.8 for v in m) / len(m)
    assert small["universal_fooling_rate"] == whole["universal_fooling_rate"] == universal
    assert small["attack_fooling_rate"] == whole["attack_fooling_rate"] == per_sample
