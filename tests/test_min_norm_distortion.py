"""min_norm_distortion against the exact distance to the nearest facet of a linear model.

A multi-class linear classifier without a box: the least ℓp perturbation that moves x out of
its predicted class k is min_j (z_k − z_j) / ‖w_k − w_j‖_dual, computed here by a loop. The
per-point minimum over DeepFool, FMN and FAB must lie on or just above it (never below: every
point is verified), closer than DeepFool alone, and shard exactly (design §8).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.errors import MetricError
from robaudit.metric import MetricResult
from robaudit.plugins.metrics.adversarial.min_norm import MinNormDistortion
from robaudit.testing import make_context, run_metric, run_metric_sharded

D, CLASSES, N = 6, 5, 24
WIDE = (-50.0, 50.0)


@pytest.fixture(scope="module")
def linear() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(D, CLASSES).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x


def nearest_facet(model: nn.Linear, x: torch.Tensor, norm: str) -> np.ndarray:
    dual = 1 if norm == "linf" else 2
    z, w = model(x), model.weight
    out = []
    for i in range(len(x)):
        k = int(z[i].argmax())
        out.append(min(float((z[i, k] - z[i, j]) / torch.linalg.vector_norm(w[k] - w[j], dual))
                       for j in range(CLASSES) if j != k))
    return np.array(out)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_minimum_is_the_exact_distance(linear: tuple[nn.Linear, torch.Tensor], norm: str
                                       ) -> None:
    model, x = linear
    y = model(x).argmax(dim=1)
    ctx = make_context(model, x, y, input_range=WIDE, batch_size=10)
    result = run_metric(MinNormDistortion(), ctx, norm=norm, steps=60, targets=4)
    found = np.asarray(result.samples) * np.linalg.norm(
        x.numpy(), ord=np.inf if norm == "linf" else 2, axis=1)
    exact = nearest_facet(model, x, norm)
    assert np.all(found >= exact * (1 - 1e-9))
    assert found == pytest.approx(exact, rel=2e-3)
    assert result.details["included"]["share"] == 1.0
    improvement = result.details["improvement_on_deepfool"]
    assert improvement["points"] == N and 0 < improvement["mean"] < 0.03
    assert sum(result.details["smallest_by"].values()) == N
    deepfool = run_metric(MinNormDistortion(), ctx, norm=norm, attacks=["deepfool"])
    assert result.value < deepfool.value


def test_no_adversarial_point_is_an_error() -> None:
    """A constant model cannot be fooled: nothing to average, the check is error."""
    model = nn.Linear(D, 2).double().eval()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.randn(6, D, dtype=torch.float64)
    ctx = make_context(model, x, torch.zeros(6, dtype=torch.long), input_range=WIDE)
    with pytest.raises(MetricError, match="none of fmn, fab changed the prediction"):
        run_metric(MinNormDistortion(), ctx, attacks=["fmn", "fab"], steps=5)


def test_shards_like_one_process(linear: tuple[nn.Linear, torch.Tensor]) -> None:
    model, x = linear
    y = model(x).argmax(dim=1)
    params = {"norm": "l2", "steps": 10, "targets": 2}
    whole = run_metric(MinNormDistortion(), make_context(model, x, y, input_range=WIDE,
                                                         batch_size=7), **params)
    sharded = run_metric_sharded(MinNormDistortion(), make_context(
        model, x, y, input_range=WIDE, batch_size=7), 3, **params)
    for part in dataclasses.fields(MetricResult):
        a, b = getattr(whole, part.name), getattr(sharded, part.name)
        assert (np.array_equal(a, b, equal_nan=True) if isinstance(a, np.ndarray)
                else a == b), part.name


def test_fab_run_is_shared_with_autoattack(linear: tuple[nn.Linear, torch.Tensor],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """autoattack_accuracy's FAB-T run is cached per unit; min_norm_distortion with the same
    norm, steps and targets reads it instead of running FAB again."""
    from robaudit.ops import fab
    from robaudit.plugins.metrics.adversarial.autoattack import AutoAttackAccuracy

    model, x = linear
    y = model(x).argmax(dim=1)
    ctx = make_context(model, x, y, input_range=WIDE, batch_size=10)
    calls = []
    real = fab.fab_targeted
    monkeypatch.setattr(fab, "fab_targeted", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_metric(AutoAttackAccuracy(), ctx, eps=0.3, norm="l2", version="custom",
               attacks=["fab-t"], steps=10, targets=2)
    assert len(calls) == 3  # one per unit of 10
    result = run_metric(MinNormDistortion(), ctx, norm="l2", attacks=["fab"], steps=10,
                        targets=2)
    assert len(calls) == 3 and result.details["smallest_by"] == {"fab": N}


def test_fab_units_beyond_the_budget_are_recomputed_to_the_same_numbers(
        linear: tuple[nn.Linear, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    """FAB-T's per-unit points are bounded entries of the run cache (issue #22): with a budget
    of 0 bytes none is kept, each check runs its own, and the numbers are those of the run that
    shares them."""
    from robaudit.ops import fab

    model, x = linear
    y = model(x).argmax(dim=1)
    calls = []
    real = fab.fab_targeted
    monkeypatch.setattr(fab, "fab_targeted", lambda *a, **k: calls.append(1) or real(*a, **k))
    values = {}
    for budget in (0, 2**30):
        calls.clear()
        ctx = make_context(model, x, y, input_range=WIDE, batch_size=10)
        ctx.cache.budget = budget
        runs = [run_metric(MinNormDistortion(), ctx, norm="l2", attacks=["fab"], steps=10,
                           targets=2) for _ in range(2)]
        assert len(calls) == (6 if budget == 0 else 3)  # 3 units, once or per check
        values[budget] = [(r.value, r.samples) for r in runs]
    for (value, samples), (again, again_samples) in zip(values[2**30], values[0], strict=True):
        assert value == again
        np.testing.assert_array_equal(samples, again_samples)
