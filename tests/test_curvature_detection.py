"""``curvature_detection`` on a model whose clean points sit where their class is concave and
whose perturbed points sit in a convex region (AUC 1), its ROC against brute force, and
``curvature_subspace_vulnerability`` against the closed form of a planted-subspace boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_curvature_metrics import Planted, gen, planted_case
from torch import nn

from robaudit.plugins.metrics.curvature.curvature_detection import CurvatureDetection, roc
from robaudit.plugins.metrics.curvature.curvature_subspace_vulnerability import (
    CurvatureSubspaceVulnerability,
)
from robaudit.testing import make_context, run_metric


class Island(nn.Module):
    """Class 1 is the ball ‖x‖ < ρ (convex), class 0 its outside (concave near the ball), and
    class 2 a half-space far away: f = (0, (ρ² − ‖x‖²)/2, wᵀx − 50) with ‖w‖ = 10. At a point
    pushed into the ball both F_0 = f_0 − f_1 and F_2 = f_2 − f_1 have Hessian I, but
    ‖∇F_2‖ ≈ 10 ‖∇F_0‖, so F_0 (the original class) is the most curved: label recovery is not
    a coin toss between two classes."""

    def __init__(self, radius: float, dim: int) -> None:
        super().__init__()
        self.radius = radius
        self.w = torch.full((dim,), 10.0 / dim**0.5, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        f1 = 0.5 * (self.radius**2 - (x**2).sum(1))
        return torch.stack([torch.zeros_like(f1), f1, x @ self.w - 50.0], dim=1)


@pytest.mark.parametrize("hvp", ["finite_difference", "exact"])
def test_concave_clean_and_convex_perturbed_points_are_detected_perfectly(hvp: str) -> None:
    d, n = 10, 20
    g = torch.randn(n, d, generator=gen(1), dtype=torch.float64)
    radius = 1.5 + torch.rand(n, 1, generator=gen(2), dtype=torch.float64)
    x = radius * g / g.norm(dim=1, keepdim=True)  # outside the unit ball: class 0
    ctx = make_context(Island(1.0, d), x, torch.zeros(n, dtype=torch.long), input_range=(-9, 9))
    result = run_metric(CurvatureDetection(), ctx, hvp=hvp, T=8)
    assert result.value == 1.0
    det = result.details
    assert det["detection_rate"] == 1.0 and det["false_alarm_rate"] == 0.0
    assert det["label_recovery"] == 1.0 and det["clean_negative_fraction"] == 1.0
    # Closed form at a clean x: G = −P/‖x‖, so vᵀGv averages −(1 − (vᵀn)²)/‖x‖ < 0.
    assert det["mean_rho_clean"] < 0 < det["mean_rho_perturbed"]


def test_roc_auc_is_the_mann_whitney_probability() -> None:
    rng = np.random.default_rng(0)
    neg = rng.integers(0, 6, 40).astype(float)  # ties on purpose
    pos = rng.integers(2, 9, 30).astype(float)
    auc, fpr, tpr = roc(neg, pos)
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc == pytest.approx(brute)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def planted_vulnerability(batch_size: int = 256):
    d, m, lam = 24, 3, 2.0
    model, x, y, _ = planted_case(d, m, n=60, lam=lam, seed=3)
    ctx = make_context(model, x, y, input_range=(-100, 100), batch_size=batch_size)
    result = run_metric(CurvatureSubspaceVulnerability(), ctx, fit=10, directions=m,
                        subspace=m, noise=0.3, norms=[0.1, 0.3, 0.6])
    return model, x, result, d, m


def test_noise_in_the_planted_subspace_misclassifies_by_the_closed_form() -> None:
    model, x, result, d, m = planted_vulnerability()
    assert isinstance(model, Planted)
    # Noise of norm r‖x‖ in S = span U raises F by (λ/2) r²‖x‖² whatever its direction:
    # misclassified exactly when that exceeds the depth −F(x).
    depth = -(x @ model.w)
    norms = x.norm(dim=1)
    for row in result.details["misclassification"]:
        expected = float(((model.lam / 2) * (row["noise"] * norms) ** 2 > depth).double().mean())
        assert row["in_S"] == pytest.approx(expected)
    assert result.value == result.details["misclassification"][1]["in_S"]
    table = {row["perturbation"]: row["projection_on_S"]
             for row in result.details["projection_table"]}
    # DeepFool moves along w ⊥ U, the data lie in U⊥, ∇x ∝ w: none projects on S.
    for kind in ("adversarial (DeepFool r(x))", "x₂ − x₁", "∇x (loss gradient)"):
        assert table[kind] < 1e-6
    assert table["random"] == pytest.approx(np.sqrt(m / d), rel=0.25)


def test_vulnerability_does_not_depend_on_the_batch_size() -> None:
    small = planted_vulnerability(batch_size=7)[2]
    large = planted_vulnerability()[2]
    np.testing.assert_array_equal(small.samples, large.samples)
    assert small.details == large.details


def test_detection_does_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x = torch.randn(11, 5, generator=gen(8), dtype=torch.float64)
    y = torch.zeros(11, dtype=torch.long)
    small, large = (run_metric(CurvatureDetection(), make_context(
        model, x, y, input_range=(-9, 9), batch_size=size), hvp="exact", T=4) for size in (5, 256))
    assert small.value == large.value
    for key in ("label_recovery", "mean_rho_clean", "mean_rho_perturbed"):
        assert small.details[key] == pytest.approx(large.details[key], rel=1e-9)
