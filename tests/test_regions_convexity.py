"""``region_convexity`` on regions whose convexity is known: a linear classifier's (convex)
regions, and a class outside a ball, against an independent Monte Carlo estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic_models import frozen
from torch import nn

from robaudit.errors import MetricError, ParamError
from robaudit.plugins.metrics.regions.convexity import RegionConvexity
from robaudit.testing import make_context, run_metric


class Ball(nn.Module):
    """Class 0 outside the ball ‖x − centre‖ ≤ radius, class 1 inside."""

    def __init__(self, centre: float, radius: float) -> None:
        super().__init__()
        self.centre, self.radius = centre, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outside = (x.flatten(1) - self.centre).norm(dim=1) - self.radius
        return torch.stack([outside, torch.zeros_like(outside)], dim=1)


def uniform(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_classifier_regions_are_convex() -> None:
    torch.manual_seed(0)
    model = frozen(nn.Linear(5, 4))
    centre = torch.full((5,), 0.5, dtype=torch.float64)
    model.bias.copy_(-model.weight @ centre)  # the classes meet at the centre of the box
    x = uniform(200, 5, seed=1)
    ctx = make_context(model, x, model(x).argmax(dim=1))
    assert int(torch.bincount(model(x).argmax(dim=1)).min()) >= 10
    result = run_metric(RegionConvexity(), ctx, k=[2, 5, 10], combinations=50)
    assert result.value == 1.0
    assert all(row["fraction"] == 1.0 for row in result.details["by_k"])


def test_class_outside_a_ball_matches_an_independent_monte_carlo_estimate() -> None:
    model = frozen(Ball(0.5, 0.45))
    x = uniform(400, 3, seed=2)
    predicted = model(x).argmax(dim=1)
    ctx = make_context(model, x, predicted)
    ks = [2, 4, 8]
    trials = 3000
    result = run_metric(RegionConvexity(), ctx, k=ks, combinations=trials)
    by_k = {row["k"]: row["fraction"] for row in result.details["by_k"]}
    rows = {row["class"]: row for row in result.details["by_class"]}
    outside = x[predicted == 0].numpy()
    rng = np.random.default_rng(11)
    for k in ks:
        assert rows[1][f"k={k}"] == 1.0  # the ball is convex
        hits = 0
        for _ in range(trials):
            chosen = outside[rng.choice(len(outside), size=k, replace=False)]
            point = rng.dirichlet(np.ones(k)) @ chosen
            hits += np.linalg.norm(point - 0.5) > 0.45
        estimate = hits / trials
        assert estimate < 0.95  # the region really is not convex
        se = np.sqrt(2 * estimate * (1 - estimate) / trials)
        assert abs(rows[0][f"k={k}"] - estimate) < 5 * se, k
        assert by_k[k] == pytest.approx((rows[0][f"k={k}"] + 1) / 2)
    # the paper's trend: the more points combined, the fewer combinations stay in the class
    assert rows[0]["k=2"] > rows[0]["k=4"] > rows[0]["k=8"]


def test_results_do_not_depend_on_the_batch_size() -> None:
    model = frozen(Ball(0.5, 0.4))
    x = uniform(150, 3, seed=3)
    y = model(x).argmax(dim=1)
    results = [run_metric(RegionConvexity(), make_context(model, x, y, batch_size=size),
                          k=[2, 3], combinations=40) for size in (7, 256)]
    np.testing.assert_array_equal(results[0].samples, results[1].samples)
    assert results[0].details == results[1].details


def test_k_larger_than_a_class_is_a_param_error() -> None:
    model = frozen(Ball(0.5, 0.2))
    x = uniform(100, 3, seed=4)
    ctx = make_context(model, x, model(x).argmax(dim=1))
    inside = int((model(x).argmax(dim=1) == 1).sum())
    with pytest.raises(ParamError, match=f"class 1 has only {inside}") as info:
        run_metric(RegionConvexity(), ctx, k=[2, inside + 1])
    assert info.value.key == "k"


def test_class_with_one_sample_is_reported_and_skipped() -> None:
    model = frozen(Ball(0.5, 0.3))
    x = uniform(60, 3, seed=5)
    far = (x - 0.5).norm(dim=1) > 0.35
    x = torch.cat([x[far], torch.full((1, 3), 0.5, dtype=torch.float64)])  # one inside
    ctx = make_context(model, x, model(x).argmax(dim=1))
    result = run_metric(RegionConvexity(), ctx, k=[2], combinations=20)
    assert result.details["skipped_classes"] == [1]
    assert [row["class"] for row in result.details["by_class"]] == [0]
    n = x.shape[0]
    assert result.details["included"] == {"used": n - 1, "asked": n, "share": (n - 1) / n}


def test_samples_of_skipped_classes_are_bounded_by_min_included() -> None:
    """Four singleton classes of ten samples: 60% of the split is combined, below 0.8."""
    x = torch.eye(10, dtype=torch.float64)
    y = torch.tensor([0] * 6 + [1, 2, 3, 4])
    layer = nn.Linear(10, 5, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.nn.functional.one_hot(y, 5).T.double())
    model = frozen(layer)
    ctx = make_context(model, x, y)
    with pytest.raises(MetricError, match=r"only 6 of 10 audit samples \(in a predicted class"):
        run_metric(RegionConvexity(), ctx, k=[2], combinations=5)
    result = run_metric(RegionConvexity(), make_context(model, x, y), k=[2], combinations=5,
                        min_included=0.6)
    assert result.details["skipped_classes"] == [1, 2, 3, 4]


def test_k_beyond_a_class_is_a_located_spec_error_before_any_check_runs(write_spec,
                                                                        robaudit_main) -> None:
    from conftest import TOY_HEADER

    spec = write_spec(TOY_HEADER + """\
checks:
  - metric: region_convexity
    params: {k: [2, 1000]}
""")
    code, _, err = robaudit_main("run", spec)
    assert code == 4
    assert f"{spec}:8: checks.0.params.k: k = 1000 points asked for" in err
