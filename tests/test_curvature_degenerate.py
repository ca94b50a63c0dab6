"""Curvature checks on models where curvature is undefined (design §10): a LeakyReLU network
whose exact and softplus Hessians are zero everywhere, a linear model for detection, points
where the boundary is flat (left out of ρ and of the fit, counted), ties in label recovery,
the paired DeLong interval of the detection AUC against scipy and by coverage, and all-zero
images in the subspace noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from test_curvature_metrics import gen, planted_case
from torch import nn

from robaudit.errors import MetricError
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.curvature.curvature_detection import (
    CurvatureDetection,
    paired_auc_interval,
    recover,
)
from robaudit.plugins.metrics.curvature.curvature_ratio import CurvatureRatio
from robaudit.plugins.metrics.curvature.curvature_subspace_vulnerability import (
    CurvatureSubspaceVulnerability,
    projected_share,
)
from robaudit.testing import make_context, run_metric

SUBSPACE = {"fit": 6, "directions": 2, "subspace": 2}
METRICS = [(BoundaryCurvature(), {}), (CurvatureRatio(), SUBSPACE),
           (CurvatureDetection(), {"T": 4}), (CurvatureSubspaceVulnerability(), SUBSPACE)]


def leaky_context():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.1), nn.Linear(16, 3)).double()
    x = torch.rand(12, 6, generator=gen(7), dtype=torch.float64)
    return make_context(model, x, torch.zeros(12, dtype=torch.long), input_range=(-9, 9))


@pytest.mark.parametrize(("hvp", "reason"), [
    ("exact", r"hvp: exact .*zero at every one of the .*piecewise linear.*finite_difference"),
    ("softplus", r"hvp: softplus \(beta 50\) .*zero at every one of the .*softplus replaces "
                 r"only ReLU.*LeakyReLU.*finite_difference"),
])
def test_a_leaky_relu_network_has_no_exact_or_softplus_curvature(hvp: str, reason: str) -> None:
    """LeakyReLU is piecewise linear and not a ReLU, so its Softplus copy is the network
    itself: a zero Hessian at every point, an error in every curvature check (before the
    guard: curvature 0, ratio 0, AUC 0.5 with label recovery 1)."""
    ctx = leaky_context()
    for metric, extra in METRICS:
        with pytest.raises(MetricError, match=reason):
            run_metric(metric, ctx, hvp=hvp, **extra)


def test_finite_differences_see_the_leaky_relu_kinks() -> None:
    ctx = leaky_context()
    result = run_metric(BoundaryCurvature(), ctx, h=0.5)
    assert result.value != 0.0 and np.isfinite(result.value)
    assert max(map(abs, result.details["largest_curvatures"])) > 1e-3


def test_a_tiny_step_that_crosses_no_kink_is_an_error_naming_h() -> None:
    """At h = 1e-9 no central difference straddles a LeakyReLU kink at these points: the
    gradients at z ± h v are equal up to rounding, the boundary is flat at that scale."""
    with pytest.raises(MetricError, match=r"finite_difference at step h = 1e-09 .*larger h"):
        run_metric(BoundaryCurvature(), leaky_context(), h=1e-9)


def test_detection_on_a_linear_model_is_an_error_not_chance() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x = torch.rand(10, 5, generator=gen(8), dtype=torch.float64)
    ctx = make_context(model, x, torch.zeros(10, dtype=torch.long), input_range=(-50, 50))
    with pytest.raises(MetricError, match=r"hvp: finite_difference .*flat"):
        run_metric(CurvatureDetection(), ctx, T=4)


class HalfCurved(nn.Module):
    """f = (0, F), F(x) = wᵀx + (λ/2)·relu(uᵀx)², w ⊥ u: H_F = λ u uᵀ where uᵀx > 0, flat
    where uᵀx < 0."""

    def __init__(self, w: torch.Tensor, u: torch.Tensor, lam: float) -> None:
        super().__init__()
        self.w, self.u, self.lam = w, u, lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        f1 = x @ self.w + 0.5 * self.lam * torch.relu(x @ self.u) ** 2
        return torch.stack([torch.zeros_like(f1), f1], dim=1)


def test_points_on_a_flat_part_of_the_boundary_are_left_out_of_the_ratio_and_counted() -> None:
    """ρ_i = |u_iᵀ P H P u_i| / E_v |vᵀ P H P v| is 0/0 where the boundary is flat: those points
    are NaN, counted in ``included``, and below min_included the check is error; they give no
    principal direction to the fit either."""
    d, n = 8, 10
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1.0
    w = torch.zeros(d, dtype=torch.float64)
    w[1] = 1.0
    x = torch.rand(n, d, generator=gen(9), dtype=torch.float64)
    x[:, 0] = torch.tensor([1.0, -1.0] * (n // 2), dtype=torch.float64)  # curved, flat, ...
    x[:, 1] = -0.5 - x[:, 1]  # F < 0: class 0, DeepFool moves along +w (and +u if curved)
    ctx = make_context(HalfCurved(w, u, 0.2), x, torch.zeros(n, dtype=torch.long),
                       input_range=(-9, 9))
    params = {"fit": n, "directions": 1, "subspace": 1, "samples": 32}
    with pytest.raises(MetricError, match=r"only 5 of 10 reference boundary points of the fit"):
        run_metric(CurvatureRatio(), ctx, **params)
    result = run_metric(CurvatureRatio(), ctx, **params, min_included=0.5)
    assert result.details["included"] == {"used": 5, "asked": 10, "share": 0.5}
    assert np.isnan(result.samples[1::2]).all()
    assert np.isfinite(result.samples[0::2]).all() and (result.samples[0::2] > 1).all()
    # the mean curvature of a flat point is a true 0, not left out
    curvature = run_metric(BoundaryCurvature(), ctx)
    assert curvature.details["included"]["used"] == n
    np.testing.assert_allclose(curvature.samples[1::2], 0.0, atol=1e-6)


def test_a_tie_for_the_most_curved_class_is_not_recovered() -> None:
    """argmax would give the lowest index of a tie; the tie counts as not recovered."""
    inf = float("-inf")
    by_class = torch.tensor([[inf, 1.0, 1.0], [inf, 2.0, 1.0], [0.5, inf, 0.5 + 1e-9],
                             [0.0, 0.0, inf]], dtype=torch.float64)
    assert recover(by_class, floor=1e-6).tolist() == [-1, 1, -1, -1]
    assert recover(by_class, floor=0.0).tolist() == [-1, 1, 2, -1]


def test_the_paired_auc_interval_is_centred_on_the_mann_whitney_auc() -> None:
    rng = np.random.default_rng(1)
    neg = rng.integers(0, 6, 40).astype(float)  # ties on purpose
    pos = neg + rng.integers(-2, 5, 40)
    low, high = paired_auc_interval(neg, pos)
    u = stats.mannwhitneyu(pos, neg).statistic / (40 * 40)
    assert low < u < high
    assert (low + high) / 2 == pytest.approx(u, abs=1e-12)


def test_the_paired_auc_interval_covers_the_true_auc_95_percent_of_the_time() -> None:
    """Pairs (x, y = 0.7 x + 1 + ε), x ~ N(0, 1), ε ~ N(0, 0.5²): the AUC of y over x is
    P(y' > x) for independent draws, y' − x ~ N(1, 0.49 + 0.25 + 1), so Φ(1/√1.74); the
    interval ignoring the pairing (DeLong's unpaired variance) would over-cover here."""
    rng = np.random.default_rng(2)
    truth = stats.norm.cdf(1 / np.sqrt(1.74))
    hits, trials = 0, 600
    for _ in range(trials):
        x = rng.normal(size=80)
        y = 0.7 * x + 1 + rng.normal(scale=0.5, size=80)
        low, high = paired_auc_interval(x, y)
        hits += low <= truth <= high
    assert 0.92 <= hits / trials <= 0.975


def test_detection_reports_the_auc_interval() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(14, 6, generator=gen(10), dtype=torch.float64)
    ctx = make_context(model, x, torch.zeros(14, dtype=torch.long), input_range=(-9, 9))
    result = run_metric(CurvatureDetection(), ctx, T=4)
    assert result.ci is not None and result.ci[0] <= result.value <= result.ci[1]
    assert result.details["included"]["asked"] == 14
    assert 0.0 <= result.details["label_ties"] <= 1.0


def test_all_zero_images_are_left_out_of_the_relative_noise_and_counted() -> None:
    """Noise of norm r·‖x‖ at ‖x‖ = 0 is no noise (misclassified 0, the best score): such
    samples are NaN, counted in ``included``; an undefined x₂ − x₁ share (duplicates) is
    NaN, not 0."""
    d, m = 24, 3
    model, x, y, _ = planted_case(d, m, n=40, lam=2.0, seed=3)
    x[[21, 33]] = 0.0
    ctx = make_context(model, x, y, input_range=(-100, 100))
    result = run_metric(CurvatureSubspaceVulnerability(), ctx, fit=10, directions=m,
                        subspace=m, noise=0.3, norms=[0.3])
    assert np.isnan(result.samples[[21, 33]]).all()
    assert np.isfinite(np.delete(result.samples, [21, 33])).all()
    assert result.value == pytest.approx(np.delete(result.samples, [21, 33]).mean())
    assert result.details["included"] == {"used": 38, "asked": 40, "share": 0.95}
    with pytest.raises(MetricError, match=r"only 38 of 40 samples \(‖x‖ > 0"):
        run_metric(CurvatureSubspaceVulnerability(), make_context(
            model, x, y, input_range=(-100, 100)), fit=10, directions=m, subspace=m,
            noise=0.3, norms=[0.3], min_included=0.99)
    basis = torch.eye(4, dtype=torch.float64)[:, :2]
    shares = projected_share(torch.tensor([[0.0] * 4, [1.0, 0, 0, 1.0]]), basis.float())
    assert torch.isnan(shares[0]) and float(shares[1]) == pytest.approx(2**-0.5)
