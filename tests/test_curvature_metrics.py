"""``boundary_curvature`` and ``curvature_ratio`` against closed forms: a ball-shaped class region
(every principal curvature +1/ρ), a linear classifier (0), a boundary curved only on a planted
subspace (ratio d/m, subspace recovered); bad input; batch-size independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic_models import Ball
from pydantic import ValidationError
from scipy.linalg import subspace_angles
from torch import nn

from robaudit.errors import MetricError, ParamError
from robaudit.ops.deepfool import deepfool_split
from robaudit.plugins.metrics.curvature._common import leading_deepfool, shared_subspace
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.curvature.curvature_ratio import (
    CurvatureRatio,
    CurvatureRatioParams,
)
from robaudit.testing import make_context, run_metric


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Planted(nn.Module):
    """f = (0, F) with F(x) = wᵀx + b + (λ/2)‖Uᵀx‖², w ⊥ U: H_F = λUUᵀ, curved on span U only."""

    def __init__(self, w: torch.Tensor, b: float, u: torch.Tensor, lam: float) -> None:
        super().__init__()
        self.w, self.b, self.u, self.lam = w, b, u, lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        f1 = x @ self.w + self.b + 0.5 * self.lam * ((x @ self.u) ** 2).sum(1)
        return torch.stack([torch.zeros_like(f1), f1], dim=1)


def ball_case(n: int = 12, d: int = 16, radius: float = 0.4):
    centre = torch.full((d,), 0.5, dtype=torch.float64)
    g = torch.randn(n, d, generator=gen(1), dtype=torch.float64)
    r = 0.1 + 0.2 * torch.rand(n, 1, generator=gen(2), dtype=torch.float64)
    x = centre + r * g / g.norm(dim=1, keepdim=True)
    return Ball(centre, radius), x, torch.zeros(n, dtype=torch.long), centre


@pytest.mark.parametrize("hvp", ["finite_difference", "exact"])
def test_a_ball_region_has_mean_curvature_one_over_its_radius(hvp: str) -> None:
    model, x, y, centre = ball_case()
    ctx = make_context(model, x, y, batch_size=5)
    result = run_metric(BoundaryCurvature(), ctx, hvp=hvp, h=1e-4, k=3)
    # Independently: z sits just past the sphere (overshoot), at radius ‖z − c‖.
    z = deepfool_split(ctx).boundary
    expected = (1 / (z - centre).norm(dim=1)).numpy()
    np.testing.assert_allclose(result.samples, expected, rtol=1e-5)
    assert result.value == pytest.approx(expected.mean(), rel=1e-5)
    assert result.value == pytest.approx(1 / 0.4, rel=0.02)
    assert result.details["negative_fraction"] == 0.0
    np.testing.assert_allclose(result.details["largest_curvatures"], expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(result.details["smallest_curvatures"], expected.mean(), rtol=1e-4)
    assert result.details["excluded"] == 0 and result.details["points"] == 12


@pytest.mark.parametrize("hvp", ["finite_difference", "exact", "softplus"])
def test_a_linear_classifier_is_flat_an_error_not_curvature_zero(hvp: str) -> None:
    """A linear model's boundary is flat for every hvp (its gradients at z ± h v are equal,
    its Hessian zero): no curvature to measure, so every curvature check is error naming the
    method, never 0 (boundary_curvature) or 0/0 = 0 (curvature_ratio, the best score)."""
    torch.manual_seed(0)
    model = nn.Linear(10, 3).double()
    x = torch.rand(15, 10, generator=gen(3), dtype=torch.float64)
    ctx = make_context(model, x, torch.zeros(15, dtype=torch.long), input_range=(-50, 50))
    ratio = {"fit": 5, "directions": 3, "subspace": 3}
    for metric, extra in ((BoundaryCurvature(), {"h": [0.01, 0.5]}), (CurvatureRatio(), ratio)):
        if hvp != "finite_difference":
            extra = {k: v for k, v in extra.items() if k != "h"}
        with pytest.raises(MetricError, match=rf"hvp: {hvp}.*zero at every one of the"):
            run_metric(metric, ctx, hvp=hvp, **extra)


def test_the_default_step_is_the_authors_rule_of_the_input_box() -> None:
    model, x, y, _ = ball_case()
    result = run_metric(BoundaryCurvature(), make_context(model, x, y), k=2)
    assert result.details["h"] == f"{10 * 4 / 512:.6g}"  # d = 16, box [0, 1]


def test_the_mean_curvature_estimator_used_above_dense_max_matches_the_trace() -> None:
    """With dense_max below d, the spectrum comes from Lanczos and the mean from random
    tangent directions: on a ball every direction has the same curvature, so both are exact."""
    model, x, y, _ = ball_case(n=6, d=20)
    dense = run_metric(BoundaryCurvature(), make_context(model, x, y), hvp="exact", k=2)
    lanczos = run_metric(BoundaryCurvature(), make_context(model, x, y), hvp="exact", k=2,
                         dense_max=10, directions=4)
    assert lanczos.details["spectrum"] == "lanczos"
    np.testing.assert_allclose(lanczos.samples, dense.samples, rtol=1e-9)


def planted_case(d: int = 24, m: int = 3, n: int = 30, lam: float = 2.0, seed: int = 0):
    g = gen(seed)
    u = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))[0]
    w = torch.randn(d, generator=g, dtype=torch.float64)
    w = w - u @ (u.T @ w)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x - (x @ u) @ u.T  # in U⊥: the normal at z is w, orthogonal to U
    depth = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    x = x - ((x @ w + depth)[:, None] / w.dot(w)) * w  # F(x) = -depth < 0: class 0
    return Planted(w, 0.0, u, lam), x, torch.zeros(n, dtype=torch.long), u


def test_a_boundary_curved_on_a_planted_subspace_has_ratio_d_over_m() -> None:
    d, m = 24, 3
    model, x, y, u = planted_case(d, m)
    ctx = make_context(model, x, y, input_range=(-100, 100))
    params = {"fit": 10, "directions": m, "subspace": m, "samples": 4000, "points": 20}
    result = run_metric(CurvatureRatio(), ctx, **params)
    assert result.value == pytest.approx(d / m, rel=0.05)
    # every shared direction is in span U: all m ratios are ≈ d/m
    np.testing.assert_allclose(result.details["rho"], d / m, rtol=0.05)
    fit = shared_subspace(ctx, CurvatureRatioParams(**params),
                          CurvatureRatioParams(**params).steps(d, (-100, 100))[0])
    angles = np.degrees(subspace_angles(fit.basis.numpy(), u.numpy()))
    assert angles.max() < 5.0
    # The curvature is λ/‖w‖ on U and 0 elsewhere: mean curvature λ m / ((d − 1) ‖w‖).
    curvature = run_metric(BoundaryCurvature(), make_context(model, x, y, input_range=(-100, 100)),
                           points=20)
    assert curvature.value == pytest.approx(2.0 * m / ((d - 1) * float(model.w.norm())),
                                            rel=1e-6)
    np.testing.assert_allclose(curvature.details["largest_curvatures"][-m:],
                               2.0 / float(model.w.norm()), rtol=1e-6)


def test_more_shared_directions_than_the_planted_ones_fall_to_the_noise_level() -> None:
    """With subspace > m the extra u_i lie outside U, where the boundary is flat: ρ ≈ 0."""
    d, m = 24, 3
    model, x, y, _ = planted_case(d, m)
    ctx = make_context(model, x, y, input_range=(-100, 100))
    result = run_metric(CurvatureRatio(), ctx, fit=10, directions=m + 2, subspace=m + 2,
                        samples=200, points=10)
    rho = result.details["rho"]
    assert min(rho[:m]) > 0.8 * d / m and max(rho[m:]) < 1e-6


def relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double()


def test_exact_hvp_on_a_relu_network_is_an_error_naming_the_alternatives() -> None:
    x = torch.rand(10, 6, generator=gen(4), dtype=torch.float64)
    ctx = make_context(relu_mlp(), x, torch.zeros(10, dtype=torch.long), input_range=(-9, 9))
    ratio = {"fit": 5, "directions": 3, "subspace": 3}
    for metric, extra in ((BoundaryCurvature(), {}), (CurvatureRatio(), ratio)):
        with pytest.raises(MetricError, match=r"piecewise linear.*finite_difference.*softplus"):
            run_metric(metric, ctx, hvp="exact", **extra)
    soft = run_metric(BoundaryCurvature(), ctx, hvp="softplus", beta=5.0)
    assert soft.value != 0.0 and "softplus_accuracy_change" in soft.details


@pytest.mark.parametrize("bad", [{"h": 0.0}, {"h": -1e-3}, {"h": [0.1, 0.0]}, {"h": []},
                                 {"beta": 0.0}, {"beta": -2.0}])
def test_non_positive_steps_and_betas_are_param_errors(bad: dict) -> None:
    for metric in (BoundaryCurvature(), CurvatureRatio()):
        with pytest.raises(ValidationError):
            metric.Params.model_validate(bad)


class Flat(nn.Module):
    """Constant logits: DeepFool cannot move any point (no gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(x.shape[0], dtype=x.dtype) + 0 * x.sum(1)
        return torch.stack([ones, 0 * ones], dim=1)


def test_more_shared_directions_than_tangent_dimensions_is_a_param_error() -> None:
    x = torch.rand(10, 6, generator=gen(4), dtype=torch.float64)
    ctx = make_context(relu_mlp(), x, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ParamError, match="subspace: must be at most d − 1 = 5"):
        run_metric(CurvatureRatio(), ctx, directions=3, subspace=6)


def test_every_point_excluded_is_an_error_with_the_count() -> None:
    x = torch.rand(9, 5, generator=gen(5), dtype=torch.float64)
    ctx = make_context(Flat(), x, torch.zeros(9, dtype=torch.long))
    with pytest.raises(MetricError, match="all 7 boundary points excluded"):
        run_metric(BoundaryCurvature(), ctx, points=7)


def test_unconverged_points_are_left_out_and_counted() -> None:
    model, x, y, _ = ball_case(n=8)
    x[[2, 5]] = 0.5  # the centre: the gradient of ‖x − c‖ vanishes, DeepFool cannot move
    ctx = make_context(model, x, y)
    with pytest.raises(MetricError, match=r"only 6 of 8 boundary points .*min_included = 80%"):
        run_metric(BoundaryCurvature(), ctx, hvp="exact")
    result = run_metric(BoundaryCurvature(), ctx, hvp="exact", min_included=0.75)
    assert result.details["included"] == {"used": 6, "asked": 8, "share": 0.75}
    assert result.details["excluded"] == 2 and result.details["points"] == 6
    assert np.isnan(result.samples[[2, 5]]).all() and np.isfinite(np.delete(result.samples,
                                                                            [2, 5])).all()


def test_values_do_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(13, 6, generator=gen(6), dtype=torch.float64)
    y = torch.zeros(13, dtype=torch.long)
    results = [
        (run_metric(BoundaryCurvature(), make_context(model, x, y, input_range=(-9, 9),
                                                      batch_size=size), hvp="exact",
                    dense_max=3, k=2, directions=5),
         run_metric(CurvatureRatio(), make_context(model, x, y, input_range=(-9, 9),
                                                   batch_size=size), fit=8, directions=2,
                    subspace=3, samples=10))
        for size in (4, 256)
    ]
    for small, large in zip(results[0], results[1], strict=True):
        np.testing.assert_allclose(small.samples, large.samples, rtol=1e-9)
        assert small.value == pytest.approx(large.value, rel=1e-9)


def test_the_fit_runs_deepfool_on_its_points_only_whatever_the_run_cached() -> None:
    """The fit's DeepFool runs on its 5 points alone (no unit of the split), equal to the
    rows of the split's run; once the split's units are cached it is still its own cached run
    (its numbers do not depend on what else ran), and a fit of the whole split is the
    split's run."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(20, 6, generator=gen(7), dtype=torch.float64)
    ctx = make_context(model, x, torch.zeros(20, dtype=torch.long), input_range=(-9, 9),
                       batch_size=3)
    params = CurvatureRatioParams(fit=5)
    head = leading_deepfool(ctx, params, "train", 5)
    assert head.boundary.shape[0] == 5
    assert not [key for key in ctx.cache._store if key[0] == "deepfool"]
    whole = deepfool_split(ctx, split="train")
    torch.testing.assert_close(head.boundary, whole.boundary[:5])
    assert leading_deepfool(ctx, params, "train", 5) is head
    assert torch.equal(leading_deepfool(ctx, params, "train", 20).boundary, whole.boundary)


def test_chunked_hvps_and_lanczos_groups_do_not_change_the_values() -> None:
    """Issue #23: HVP rows of points × directions go in chunks of ``batch_size`` and Lanczos runs
    on groups of points (KRYLOV_CHUNKS × batch_size Krylov vectors): at batch size 7 (one
    direction per point and chunk, Lanczos two points at a time) every metric's values equal
    those at 64 (whole batches) with finite differences, Lanczos and the shared subspace."""
    from robaudit.plugins.metrics.curvature.curvature_detection import CurvatureDetection

    torch.manual_seed(3)
    d = 48
    model = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(40, d, generator=gen(8), dtype=torch.float64)
    y = torch.zeros(40, dtype=torch.long)
    checks = ((BoundaryCurvature(), {"points": 30, "dense_max": 8, "k": 3, "directions": 20}),
              (CurvatureRatio(), {"points": 30, "dense_max": 8, "fit": 12, "directions": 3,
                                  "subspace": 4, "samples": 20}),
              (CurvatureDetection(), {"points": 30, "T": 8}))
    for metric, params in checks:
        small, large = (run_metric(metric, make_context(model, x, y, input_range=(-9, 9),
                                                        batch_size=size), **params)
                        for size in (7, 64))
        assert small.value == pytest.approx(large.value, rel=1e-6)
        if small.samples is not None:
            np.testing.assert_allclose(small.samples, large.samples, rtol=1e-6)
        for key in ("rho", "largest_curvatures", "smallest_curvatures", "singular_values"):
            if key in small.details:
                np.testing.assert_allclose(small.details[key], large.details[key], rtol=1e-6)


def test_the_floors_count_the_lanczos_steps_asked() -> None:
    """Each Lanczos step is one HVP (two gradients with finite differences) per point, so the
    floor counts ``iterations`` steps when given, else min(d − 1, 2k + 40)."""
    model, x, y, _ = ball_case(n=6, d=20)
    ctx = make_context(model, x, y)
    metric = BoundaryCurvature()
    for extra, steps in (({}, 19), ({"iterations": 5}, 5)):
        params = metric.Params(dense_max=10, k=2, directions=4, **extra)
        assert metric.floor(ctx, params).gradient == 6 * (1 + (steps + 4) * 2)
    ratio = CurvatureRatio()
    params = ratio.Params(dense_max=10, fit=6, points=6, directions=2, subspace=2, samples=3,
                          iterations=7)
    hvps = 6 * 7 + 6 * (2 + 3)
    assert ratio.floor(ctx, params).gradient == 2 * hvps + 6 + 6 + 6 * (10 - 1)
