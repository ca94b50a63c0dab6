"""FINDPATH and ``region_connectivity`` on regions whose topology is known: convex regions of a
linear classifier, a class made of two disconnected slabs, a thin slab crossing segments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic_models import frozen
from pydantic import ValidationError
from torch import nn

from robaudit.errors import MetricError
from robaudit.ops.paths import find_paths, segments_valid
from robaudit.plugins.metrics.regions.connectivity import RegionConnectivity
from robaudit.testing import make_context, run_metric


class Slabs(nn.Module):
    """Class 0 inside any of the slabs lo_i ≤ x₀ ≤ hi_i, class 1 elsewhere: logits
    (max_i min(x₀ − lo_i, hi_i − x₀), 0), piecewise linear."""

    def __init__(self, slabs: list[tuple[float, float]], inside: int = 0) -> None:
        super().__init__()
        self.slabs = slabs
        self.inside = inside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x.flatten(1)[:, 0]
        depth = torch.stack([torch.minimum(x0 - lo, hi - x0) for lo, hi in self.slabs]).amax(0)
        logits = [depth, torch.zeros_like(depth)]
        return torch.stack(logits if self.inside == 0 else logits[::-1], dim=1)


def uniform(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_classifier_regions_are_connected_by_straight_paths() -> None:
    torch.manual_seed(0)
    model = frozen(nn.Linear(6, 3))
    x = uniform(120, 6, seed=1)
    ctx = make_context(model, x, model(x).argmax(dim=1))
    result = run_metric(RegionConnectivity(), ctx, pairs=30)
    assert result.value == 1.0
    for row in result.details["scenarios"]:
        assert row["fraction"] == 1.0
        assert row["straight"] == 1.0
        assert row["mean_anchors"] == 1.0  # the paper's P = (x₁, x_m, x₂)
        assert abs(row["mean_ratio"] - 1.0) < 1e-9


TWO_SLABS = [(0.1, 0.35), (0.65, 0.9)]


def test_pairs_across_two_disconnected_slabs_are_not_connected_and_the_search_ends() -> None:
    model = frozen(Slabs(TWO_SLABS))
    x = uniform(200, 4, seed=2)
    inside = model(x).argmax(dim=1) == 0
    points = x[inside]
    side = points[:, 0] > 0.5
    n = points.shape[0]
    first = torch.arange(n)
    second = torch.roll(first, 7)
    result = find_paths(model, points[first], points[second], torch.zeros(n, dtype=torch.long),
                        step=1e-2, max_depth=6, max_anchors=20, input_range=(0.0, 1.0))
    same = side[first] == side[second]
    assert bool(same.any()) and bool((~same).any())
    for i in range(n):  # per pair
        assert bool(result.found[i]) == bool(same[i]), i
    assert bool((result.ratio[same] - 1).abs().max() < 1e-9)  # a slab is convex
    assert int(result.depth.max()) <= 6
    assert int(result.anchors.max()) <= 21  # the pair that went over the budget stops there


def test_two_slabs_metric_value_is_the_share_of_same_side_pairs() -> None:
    model = frozen(Slabs(TWO_SLABS))
    x = uniform(300, 4, seed=3)
    predicted = model(x).argmax(dim=1)
    ctx = make_context(model, x, predicted)
    result = run_metric(RegionConnectivity(), ctx, pairs=400, scenarios=["data"],
                        max_depth=5, max_anchors=16)
    # x₁ uniform among the samples, x₂ another one of its class; both classes are unions of
    # intervals of x₀ (class 0: the two slabs; class 1: the three gaps around them), and a
    # pair is connected exactly when both points are in the same interval.
    component = torch.bucketize(x[:, 0].contiguous(), torch.tensor([0.1, 0.35, 0.65, 0.9],
                                                       dtype=torch.float64))
    class_size = torch.bincount(predicted)
    expected = 0.0
    for c in range(5):
        count = int((component == c).sum())
        size = int(class_size[predicted[component == c][0]])
        expected += count / len(x) * (count - 1) / (size - 1)
    se = np.sqrt(expected * (1 - expected) / 400)
    assert abs(result.value - expected) < 4 * se
    row = result.details["scenarios"][0]
    assert row["budget_exhausted"] > 0 and row["max_depth_reached"] <= 5


@pytest.mark.parametrize("step", [1e-2, 3e-3])
def test_thin_slab_wider_than_the_sampling_step_is_always_detected(step: float) -> None:
    """Segments of length 0.5 along x₀ cross a slab of class 1 at random offsets: a slab wider
    than the spacing step × 0.5 is seen on every segment; half as wide, on only some."""
    length = 0.5
    spacing = step * length
    starts = 0.2 + 0.29 * uniform(300, 1, seed=4)[:, 0]
    a = torch.zeros(300, 3, dtype=torch.float64)
    a[:, 0] = starts
    b = a.clone()
    b[:, 0] += length
    labels = torch.zeros(300, dtype=torch.long)
    spacings = torch.full((300,), spacing, dtype=torch.float64)

    def predict(width: float):
        model = frozen(Slabs([(0.5, 0.5 + width)], inside=1))
        return lambda v: model(v).argmax(dim=1)

    valid, _ = segments_valid(predict(1.01 * spacing), a, b, labels, spacings, batch_size=64)
    assert not bool(valid.any())
    valid, _ = segments_valid(predict(0.5 * spacing), a, b, labels, spacings, batch_size=64)
    assert 0.2 < float(valid.double().mean()) < 0.8
    # and through the metric's path search: the class-0 halves on either side are disconnected
    found = find_paths(frozen(Slabs([(0.5, 0.5 + 1.01 * spacing)], inside=1)), a, b, labels,
                       step=step, max_depth=4, max_anchors=8)
    assert not bool(found.found.any())


def test_results_do_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(5)
    model = frozen(nn.Sequential(nn.Linear(5, 24), nn.ReLU(), nn.Linear(24, 3)))
    x = uniform(90, 5, seed=6)
    y = model(x).argmax(dim=1)
    results = [run_metric(RegionConnectivity(), make_context(model, x, y, batch_size=size),
                          pairs=12, max_depth=6, max_anchors=16) for size in (5, 256)]
    assert results[0].value == results[1].value
    np.testing.assert_array_equal(results[0].samples, results[1].samples)
    # every number but the forward-pass count (points after a segment's first outside point
    # are skipped a chunk at a time, so smaller chunks skip more)
    for row in (r.details["scenarios"] for r in results):
        for scenario in row:
            scenario.pop("forwards_per_pair")
    assert results[0].details == results[1].details


def test_class_with_one_sample_is_reported_and_skipped() -> None:
    model = frozen(Slabs([(0.0, 0.5)]))
    x = uniform(40, 3, seed=7)
    x[:, 0] = 0.6 + 0.4 * x[:, 0]  # all class 1 …
    x[0, 0] = 0.25  # … but one
    ctx = make_context(model, x, model(x).argmax(dim=1))
    result = run_metric(RegionConnectivity(), ctx, pairs=10, scenarios=["data"])
    assert result.details["skipped_classes"] == [0]
    assert result.value == 1.0


def test_unreached_pairs_are_counted_per_scenario_and_bounded_by_min_included() -> None:
    """A pair whose second point the targeted step cannot move into the class is left out
    (the hard pairs): counted in each scenario's ``included``, the check an error below
    min_included (one damped step leaves some adversarial pairs short of the boundary)."""
    torch.manual_seed(0)
    model = frozen(nn.Linear(6, 3))
    x = uniform(120, 6, seed=1)
    params = {"pairs": 30, "scenarios": ["adversarial", "noise"], "max_iter": 1}
    result = run_metric(RegionConnectivity(), make_context(model, x, model(x).argmax(dim=1)),
                        **params, min_included=0.5)
    rows = {row["scenario"]: row for row in result.details["scenarios"]}
    unreached = rows["adversarial"]["unreached"]
    assert 0 < unreached < 30
    assert rows["adversarial"]["included"]["used"] == 30 - unreached == rows["adversarial"][
        "pairs"]
    assert result.details["included"]["used"] == int(np.isfinite(result.samples).sum())
    assert result.details["included"]["asked"] == 60
    with pytest.raises(MetricError, match=rf"only {30 - unreached} of 30 adversarial pairs"):
        run_metric(RegionConnectivity(), make_context(model, x, model(x).argmax(dim=1)),
                   **params, min_included=(30 - unreached) / 30 + 0.01)


def test_one_predicted_class_is_connected_but_has_no_adversarial_pairs() -> None:
    """A model that predicts one class everywhere has one region, the whole box: data pairs
    are connected (value 1, the analytic answer); the adversarial scenario has no sample of
    another class to move in, an error rather than an index out of range."""
    x = uniform(30, 3, seed=8)
    model = frozen(Slabs([(2.0, 3.0)]))  # the slab lies outside the box: class 1 everywhere
    ctx = make_context(model, x, model(x).argmax(dim=1))
    assert run_metric(RegionConnectivity(), ctx, pairs=10, scenarios=["data"]).value == 1.0
    with pytest.raises(MetricError, match="every audit sample is predicted as class 1"):
        run_metric(RegionConnectivity(), ctx, pairs=10)


def test_non_positive_step_is_a_param_error() -> None:
    for step in (0.0, -1e-3):
        with pytest.raises(ValidationError, match="step"):
            RegionConnectivity.Params.model_validate({"step": step})


def test_non_positive_step_is_a_located_spec_error(write_spec, robaudit_main) -> None:
    from conftest import TOY_HEADER

    spec = write_spec(TOY_HEADER + """\
checks:
  - metric: region_connectivity
    params: {step: 0.0}
""")
    code, _, err = robaudit_main("run", spec)
    assert code == 4
    assert f"{spec}:8: checks.0.params.step: Input should be greater than 0" in err
