"""sphere_deformation (Ghorbani & Zou 2017, Algorithm 1) against analytic feature maps."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robaudit.errors import MetricError
from robaudit.plugins.metrics.deformation.sphere_deformation import SphereDeformation
from robaudit.testing import make_context, run_metric

RADII = [0.01, 0.1, 1.0, 10.0, 100.0]


def linear_features(weight: torch.Tensor, classes: int = 3) -> nn.Sequential:
    """A model whose feature layer g (the input of the last nn.Linear) is x -> W x + b."""
    first = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        first.weight.copy_(weight)
        first.bias.uniform_(-1, 1)
    return nn.Sequential(first, nn.Linear(weight.shape[0], classes))


def with_singular_values(values: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = len(values)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float32)) @ v.T


def data(n: int, d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_orthogonal_map_has_k_one_at_every_radius() -> None:
    q = with_singular_values([1.0] * 6, seed=0)
    x, y = data(12, 6)
    # batch_size 7 < points: each sphere goes through the model in several slices
    ctx = make_context(linear_features(q), x, y, batch_size=7)
    result = run_metric(SphereDeformation(), ctx, radius=RADII, points=50, samples=12)
    for row in result.details["radii"]:
        assert row["mean"] == pytest.approx(1.0, abs=1e-4), row
    assert result.samples is not None and len(result.samples) == 12
    assert abs(result.samples - 1.0).max() < 1e-4
    assert result.details["radius"] == 0.01
    assert len(result.figures) == 1


def test_linear_map_k_is_bounded_by_and_close_to_its_condition_number() -> None:
    s = [5.0, 3.0, 2.0, 1.0]
    w = with_singular_values(s, seed=3)
    x, y = data(5, 4)
    ctx = make_context(linear_features(w), x, y)
    result = run_metric(SphereDeformation(), ctx, radius=[1.0, 0.1], points=4000, samples=5)
    bound = max(s) / min(s)
    assert result.samples is not None
    assert (result.samples <= bound * (1 + 1e-5)).all()
    assert (result.samples >= 0.95 * bound).all()
    # a linear map's k does not depend on r (the same directions are reused for every radius)
    rows = result.details["radii"]
    assert rows[0]["mean"] == pytest.approx(rows[1]["mean"], rel=1e-4)


def test_anisotropic_map_deforms_more_than_a_scaled_isometry() -> None:
    x, y = data(20, 5)
    iso = run_metric(SphereDeformation(),
                     make_context(linear_features(3.0 * with_singular_values([1.0] * 5, 4)), x, y),
                     points=100, samples=20)
    aniso = run_metric(SphereDeformation(),
                       make_context(linear_features(with_singular_values([9, 1, 1, 1, 1], 4)),
                                    x, y),
                       points=100, samples=20)
    assert iso.value == pytest.approx(1.0, abs=1e-4)
    assert aniso.value > 3.0


def test_result_does_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(0)
    # 20 points × 3 dims: a sphere's draw is not a multiple of torch's 16-value normal blocks,
    # so drawing several samples' directions at once would give other directions
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x, y = data(9, 3)
    values = [run_metric(SphereDeformation(), make_context(model, x, y, batch_size=size),
                         points=20, samples=9).samples for size in (7, 40, 1000)]
    assert values[0] is not None and values[0].std() > 0
    for other in values[1:]:
        assert other is not None
        assert abs(other - values[0]).max() < 1e-4  # float32 batching noise only


def test_clip_keeps_points_in_the_box_and_changes_k() -> None:
    # at r = 10 around points of [0, 1]^3 clipping moves every sphere point onto the box, so an
    # isometry no longer has k = 1
    q = with_singular_values([1.0] * 3, seed=5)
    x, y = data(8, 3)
    free = run_metric(SphereDeformation(), make_context(linear_features(q), x, y),
                      radius=10.0, points=60, samples=8)
    clipped = run_metric(SphereDeformation(), make_context(linear_features(q), x, y),
                         radius=10.0, points=60, samples=8, clip=True)
    assert free.value == pytest.approx(1.0, abs=1e-4)
    assert clipped.value > 1.5


def test_collapsed_map_is_an_error_and_floor_counts_passes() -> None:
    x, y = data(4, 3)
    zero = linear_features(torch.zeros(3, 3))
    ctx = make_context(zero, x, y)
    with pytest.raises(MetricError):
        run_metric(SphereDeformation(), ctx, points=10, samples=4)
    params = SphereDeformation.Params.model_validate({"radius": [1, 2], "points": 10,
                                                      "samples": 3})
    assert SphereDeformation().floor(ctx, params).forward == 3 * (1 + 2 * 10)


@pytest.mark.parametrize("bad", [{"radius": -1.0}, {"radius": []}, {"radius": [1.0, 0.0]},
                                 {"points": 1}, {"samples": 0}, {"radii": 1}])
def test_bad_params_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SphereDeformation.Params.model_validate(bad)


def test_k_grows_with_the_points_and_defaults_to_the_papers_n() -> None:
    """A linear g with singular values (4, 1, …, 1) in 8 dimensions: k on n sphere points is
    max/min of ‖W u_i‖ over n random unit u_i, below the limit 4 and growing with n (a max
    over a superset of the points can only grow, a min only shrink, so the prefixes' k are
    non-decreasing per sample). The default n is the paper's 1000, and details report k at
    its prefixes of 50 … 1000 points, the last being the value."""
    x, y = data(10, 8, seed=5)
    model = linear_features(with_singular_values([4.0] + [1.0] * 7, seed=6))
    result = run_metric(SphereDeformation(), make_context(model, x, y), samples=10)
    curve = result.details["k_by_points"]
    assert result.details["points"] == 1000
    assert [row["points"] for row in curve] == [50, 100, 200, 500, 1000]
    means = [row["mean"] for row in curve]
    assert means == sorted(means) and means[0] < means[-1] - 0.2
    assert means[-1] == pytest.approx(result.value)
    assert means[-1] < 4.0
    small = run_metric(SphereDeformation(), make_context(model, x, y), samples=10, points=120)
    assert [row["points"] for row in small.details["k_by_points"]] == [50, 100, 120]
    assert small.details["k_by_points"][-1]["mean"] == pytest.approx(small.value)


def test_spheres_that_g_collapses_are_left_out_and_counted():
    """g = ReLU: a sphere of radius 1 around a centre at −10 maps wholly onto g(x) = 0
    (k = 0/0); around a centre at +10 g is the identity (k = 1)."""
    x = torch.tensor([[10.0, 10.0]] * 4 + [[-10.0, -10.0]] * 2)
    model = nn.Sequential(nn.ReLU(), nn.Linear(2, 2))
    ctx = make_context(model, x, torch.zeros(6, dtype=torch.long), input_range=(-20.0, 20.0))
    with pytest.raises(MetricError, match=r"only 4 of 6 spheres \(the others have a point"):
        run_metric(SphereDeformation(), ctx, points=50, samples=6)
    result = run_metric(SphereDeformation(), ctx, points=50, samples=6, min_included=0.5)
    assert result.value == pytest.approx(1.0, abs=1e-5)  # float32 distances near 10
    assert result.details["included"] == {"used": 4, "asked": 6, "share": 4 / 6}
    assert result.details["degenerate"] == 2
