"""autoattack_accuracy against exact answers.

- A multi-class linear model without a box (input_range wide): a correctly classified point
  is robust at eps iff min_j (z_y − z_j) / ‖w_y − w_j‖_dual > eps (dual ℓ1 for ℓ∞, ℓ2 for ℓ2),
  computed here by a loop over the classes; the attack must find exactly that, and never
  less (every returned point is verified).
- A masked model, the linear model behind an input quantiser q·round(x/q) (zero gradient
  almost everywhere): rounding is monotone, so the lowest ℓ∞ margin of two classes is at the
  vertex x_i ∓ eps chosen by the sign of w_y − w_o per coordinate, a closed form. PGD sees no
  gradient and reports about the clean accuracy; AutoAttack gets near the exact answer
  through Square, and the preflight flags the zero gradients and the black-box gap.
- Sharding (design §8): as 2 and 3 processes would run it, the result equals the
  one-process run bit for bit, and batch sizes give the same result.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.errors import MetricError
from robaudit.metric import MetricResult
from robaudit.ops.apgd import checkpoints, dlr_loss
from robaudit.ops.autoattack import protocol
from robaudit.ops.verify import verified
from robaudit.plugins.metrics.adversarial.attack_accuracy import PGDAccuracy
from robaudit.plugins.metrics.adversarial.autoattack import AutoAttackAccuracy, AutoAttackParams
from robaudit.results import jsonable
from robaudit.testing import make_context, run_metric, run_metric_sharded

D, CLASSES, N = 6, 5, 30
WIDE = (-50.0, 50.0)
QUICK = {"steps": 15, "targets": 4, "queries": 100}


def frozen(module: nn.Module) -> nn.Module:
    module = module.double().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@pytest.fixture(scope="module")
def linear() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = frozen(nn.Linear(D, CLASSES))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    y[::7] = (y[::7] + 1) % CLASSES  # a few misclassified points
    return model, x, y


def exact_robust(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str
                 ) -> np.ndarray:
    """The closed form, one point and one class at a time."""
    dual = 1 if norm == "linf" else 2
    z, w = model(x), model.weight
    robust = []
    for i in range(len(x)):
        yi = int(y[i])
        if int(z[i].argmax()) != yi:
            robust.append(False)
            continue
        distance = min(float((z[i, yi] - z[i, j]) / torch.linalg.vector_norm(w[yi] - w[j], dual))
                       for j in range(z.shape[1]) if j != yi)
        robust.append(distance > eps)
    return np.array(robust)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_robust_accuracy_is_the_closed_form(
        linear: tuple[nn.Linear, torch.Tensor, torch.Tensor], norm: str) -> None:
    model, x, y = linear
    levels = [0.3, 0.1, 0.6]
    result = run_metric(AutoAttackAccuracy(), make_context(model, x, y, input_range=WIDE,
                                                           batch_size=16),
                        eps=levels, norm=norm, **QUICK)
    exact = [exact_robust(model, x, y, eps, norm).mean() for eps in levels]
    assert result.value == exact[0]
    curve = {row["eps"]: row["accuracy"] for row in result.details["curve"]}
    assert [curve[eps] for eps in levels] == exact
    assert np.array_equal(result.samples, exact_robust(model, x, y, 0.3, norm).astype(float))
    cascade = [row["robust_accuracy"] for row in result.details["cascade"]]
    assert cascade == sorted(cascade, reverse=True) and cascade[-1] == result.value
    assert result.details["clean_accuracy"] == pytest.approx(
        float((model(x).argmax(1) == y).double().mean()))
    assert "warnings" not in result.details
    points = result.details["points"]
    assert [p["broken_by"] == "robust" for p in points] == list(result.samples == 1)
    assert all(p["margin"] > 0 for p in points if p["broken_by"] == "robust")
    assert all(p["margin"] < 0 for p in points if p["broken_by"] in ("apgd-ce", "apgd-t"))


def test_never_below_the_true_robust_accuracy(
        linear: tuple[nn.Linear, torch.Tensor, torch.Tensor]) -> None:
    """At every eps (each custom single attack too), the reported accuracy is at least the
    exact one: an attack cannot count a point it did not break."""
    model, x, y = linear
    ctx = make_context(model, x, y, input_range=WIDE, batch_size=16)
    levels = [0.05, 0.2, 0.4, 0.8]
    for attacks, norm in ((["square"], "linf"), (["square"], "l2"), (["fab-t"], "linf"),
                          (["apgd-t"], "l2")):
        result = run_metric(AutoAttackAccuracy(), ctx, eps=levels, norm=norm, version="custom",
                            attacks=attacks, **QUICK)
        for row in result.details["curve"]:
            exact = exact_robust(model, x, y, row["eps"], norm).mean()
            clean = result.details["clean_accuracy"]
            assert row["accuracy"] >= exact
            # each attack alone breaks at least half of what can be broken at the largest eps
            if row["eps"] == levels[-1]:
                assert clean - row["accuracy"] >= (clean - exact) / 2, (attacks, norm)


def test_verification_rejects_what_the_budget_box_or_model_refuse() -> None:
    model = frozen(nn.Linear(2, 2))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[0.5, 0.0]] * 4, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    points = torch.tensor([[-0.1, 0.0],    # within 0.7, misclassified: valid
                           [-0.5, 0.0],    # misclassified but 1.0 away
                           [0.2, 0.0],     # within budget, still class 0
                           [-0.1, 2.0]],   # outside the box [-1, 1]
                          dtype=torch.float64)
    ok, margin = verified(model, x, points, y, norm="linf", eps=0.7, input_range=(-1.0, 1.0))
    assert ok.tolist() == [True, False, False, False]
    assert margin.tolist() == pytest.approx([-0.2, float("inf"), 0.4, float("inf")])


class Quantised(nn.Module):
    """A linear model behind the input quantiser q·round(x/q)."""

    def __init__(self, linear: nn.Linear, step: float) -> None:
        super().__init__()
        self.linear, self.step = linear, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.round(x / self.step) * self.step)


def quantised_exact(model: Quantised, x: torch.Tensor, y: torch.Tensor, eps: float
                    ) -> np.ndarray:
    """Two classes: the lowest margin over the ℓ∞ ball is at the vertex that moves each
    coordinate against w_y − w_o (rounding is monotone)."""
    w = model.linear.weight[y] - model.linear.weight[1 - y]
    b = model.linear.bias[y] - model.linear.bias[1 - y]
    worst = x - eps * torch.sign(w)
    margin = (torch.round(worst / model.step) * model.step * w).sum(dim=1) + b
    clean = model(x).argmax(dim=1) == y
    return (clean & (margin > 0)).numpy()


def test_masked_gradients_pgd_fooled_autoattack_not(tmp_path: object) -> None:
    torch.manual_seed(3)
    model = frozen(Quantised(nn.Linear(D, 2), step=0.5))
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    eps = 0.4
    exact = quantised_exact(model, x, y, eps).mean()
    assert exact < 0.7  # the budget matters
    ctx = make_context(model, x, y, input_range=WIDE, batch_size=16)
    pgd = run_metric(PGDAccuracy(), ctx, eps=eps, random_start=False)
    assert pgd.value == 1.0  # no gradient: PGD never moves
    assert {f["check"] for f in pgd.details["preflight"]} >= {"zero_gradients"}
    result = run_metric(AutoAttackAccuracy(), make_context(model, x, y, input_range=WIDE,
                                                           batch_size=16),
                        eps=eps, version="fast", steps=10)
    assert exact <= result.value <= exact + 0.05
    found = {f["check"] for f in result.details["preflight"]}
    assert {"zero_gradients", "black_box"} <= found
    assert any("black_box" in line for line in result.details["warnings"])
    assert any(p["broken_by"] == "square" for p in result.details["points"])
    with pytest.raises(MetricError, match="preflight"):
        run_metric(AutoAttackAccuracy(), make_context(model, x, y, input_range=WIDE),
                   eps=eps, version="custom", attacks=["apgd-ce"], steps=5,
                   preflight="error")


def test_apgd_checkpoints_and_dlr_invariance() -> None:
    """The paper's checkpoints for 100 iterations (p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87,
    0.93, 0.99), and DLR's invariance to shifting and scaling the logits (section 4)."""
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    z = torch.randn(7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(7) % 6
    t = (y + 1) % 6
    for target in (None, t):
        assert torch.allclose(dlr_loss(3.0 * z + 5.0, y, target), dlr_loss(z, y, target))


def test_versions_and_custom_attacks() -> None:
    fast = protocol("fast", None, steps=100, restarts=1, targets=9, queries=5000)
    assert fast.attacks == ("apgd-ce", "apgd-t", "square")
    assert (fast.targets, fast.queries) == (3, 1000)
    standard = protocol("standard", None, steps=100, restarts=1, targets=9, queries=5000)
    assert standard.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    with pytest.raises(ValueError, match="custom"):
        AutoAttackParams.model_validate({"attacks": ["square"]})
    with pytest.raises(ValueError, match="custom"):
        AutoAttackParams.model_validate({"version": "custom"})


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return frozen(nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4)))


def test_shards_and_batch_sizes_give_the_same_result() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23, 8, generator=gen, dtype=torch.float64)
    y = mlp()(x).argmax(dim=1)
    y[::5] = (y[::5] + 1) % 4
    params = {"eps": [0.4, 0.2], "steps": 8, "targets": 2, "queries": 60}

    def context(batch: int) -> object:
        return make_context(mlp(), x, y, input_range=(-3.0, 3.0), batch_size=batch, seed=5)

    whole = run_metric(AutoAttackAccuracy(), context(5), **params)
    assert 0 < whole.value < whole.details["clean_accuracy"]
    for world in (2, 3):
        sharded = run_metric_sharded(AutoAttackAccuracy(), context(5), world, **params)
        for part in dataclasses.fields(MetricResult):
            a, b = getattr(whole, part.name), getattr(sharded, part.name)
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, b), part.name
            else:  # NaN margins of misclassified points: compared as JSON writes them
                assert json.dumps(jsonable(a)) == json.dumps(jsonable(b)), part.name
    other = run_metric(AutoAttackAccuracy(), context(23), **params)
    assert np.array_equal(other.samples, whole.samples)
    assert other.details["cascade"] == whole.details["cascade"]
