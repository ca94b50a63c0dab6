"""FGSM / PGD / noise accuracy against closed forms on a linear binary classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from robaudit.ops.attacks import pgd, random_in_ball
from robaudit.ops.projections import lp_norm
from robaudit.ops.sampling import sample_seeds
from robaudit.plugins.metrics.adversarial.attack_accuracy import (
    FGSMAccuracy,
    NoiseAccuracy,
    PGDAccuracy,
)
from robaudit.plugins.metrics.general.accuracy import CleanAccuracy
from robaudit.testing import make_context, run_metric

D = 6
BOX = (-50.0, 50.0)  # far from every point: the closed forms ignore the box


@pytest.fixture
def binary() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A linear 2-class model, 80 points and labels (about a tenth misclassified)."""
    torch.manual_seed(0)
    model = nn.Linear(D, 2).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(80, D, generator=gen, dtype=torch.float64)
    y = model(x).argmax(dim=1)
    flip = torch.rand(80, generator=gen) < 0.1
    y[flip] = 1 - y[flip]
    return model, x, y


def margins(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """f_y − f_other per sample, and the weight difference w_y − w_other per sample."""
    z = model(x)
    w = model.weight[y] - model.weight[1 - y]
    return (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None])).squeeze(1).numpy(), w.numpy()


def robust_closed_form(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float,
                       dual: float) -> np.ndarray:
    """Robust iff the margin exceeds eps·‖w_y − w_other‖_dual (a misclassified sample never)."""
    m, w = margins(model, x, y)
    return m > eps * np.linalg.norm(w, ord=dual, axis=1)


def an_eps_away_from_ties(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, dual: float,
                          gap: float = 0.05) -> float:
    """An eps (near the median threshold) with no sample within ``gap`` of its threshold."""
    m, w = margins(model, x, y)
    thresholds = np.sort(m[m > 0] / np.linalg.norm(w[m > 0], ord=dual, axis=1))
    for eps in np.linspace(np.median(thresholds), thresholds[-1], 200):
        if np.all(np.abs(thresholds / eps - 1) > gap):
            return float(eps)
    raise AssertionError("no eps away from the thresholds")


def test_fgsm_accuracy_is_the_linear_closed_form(binary) -> None:
    model, x, y = binary
    eps = an_eps_away_from_ties(model, x, y, dual=1, gap=1e-6)
    result = run_metric(FGSMAccuracy(), make_context(model, x, y, input_range=BOX), eps=eps)
    expected = robust_closed_form(model, x, y, eps, dual=1)
    np.testing.assert_array_equal(result.samples, expected.astype(float))
    assert result.value == pytest.approx(expected.mean())
    assert 0 < result.value < result.details["clean_accuracy"]
    assert result.ci is not None and result.ci[0] < result.value < result.ci[1]


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_linf_accuracy_is_the_linear_closed_form(binary, random_start: bool) -> None:
    model, x, y = binary
    eps = an_eps_away_from_ties(model, x, y, dual=1, gap=1e-6)
    result = run_metric(PGDAccuracy(), make_context(model, x, y, input_range=BOX), eps=eps,
                        norm="linf", steps=20, random_start=random_start)
    np.testing.assert_array_equal(result.samples,
                                  robust_closed_form(model, x, y, eps, dual=1).astype(float))


def test_pgd_l2_accuracy_is_the_linear_closed_form(binary) -> None:
    model, x, y = binary
    eps = an_eps_away_from_ties(model, x, y, dual=2)
    expected = robust_closed_form(model, x, y, eps, dual=2).astype(float)
    ctx = make_context(model, x, y, input_range=BOX)
    exact = run_metric(PGDAccuracy(), ctx, eps=eps, norm="l2", steps=10, random_start=False)
    np.testing.assert_array_equal(exact.samples, expected)
    # From a random start the orthogonal part of the start shrinks with each projection.
    restarted = run_metric(PGDAccuracy(), ctx, eps=eps, norm="l2", steps=50, restarts=2)
    np.testing.assert_array_equal(restarted.samples, expected)


def test_pgd_iterates_stay_in_the_ball_and_the_box() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(30, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=gen)
    for norm, eps in (("linf", 0.2), ("l2", 0.5)):
        adv = pgd(model, x, y, eps=eps, norm=norm, steps=15, step_size=eps / 4,
                  seeds=sample_seeds(gen, 30), input_range=(0.0, 1.0))
        assert float(lp_norm(adv - x, norm).max()) <= eps * (1 + 1e-9)
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_a_sample_counts_robust_only_if_it_survives_every_restart(binary) -> None:
    """Near-threshold samples of a linear model survive some random starts of a 1-step ℓ2
    attack and not others: more restarts can only remove robust samples, and each sample
    robust under 5 restarts is robust under the single-restart run with the same seed."""
    model, x, y = binary
    eps = an_eps_away_from_ties(model, x, y, dual=2)
    ctx_one = make_context(model, x, y, input_range=BOX, seed=4)
    ctx_many = make_context(model, x, y, input_range=BOX, seed=4)
    one = run_metric(PGDAccuracy(), ctx_one, eps=eps, norm="l2", steps=1, step_size=eps / 2)
    many = run_metric(PGDAccuracy(), ctx_many, eps=eps, norm="l2", steps=1, step_size=eps / 2,
                      restarts=5)
    assert bool(np.all(many.samples <= one.samples))
    assert many.value < one.value
    # Closed form still bounds it: a sample robust in the worst case survives any start.
    worst = robust_closed_form(model, x, y, eps, dual=2)
    assert bool(np.all(many.samples[worst] == 1.0))


def test_random_in_ball_is_uniform_in_the_l2_ball() -> None:
    gen = torch.Generator().manual_seed(5)
    points = random_in_ball(sample_seeds(gen, 4000), (3,), 2.0, "l2")
    radius = points.norm(dim=1).numpy() / 2.0
    # Uniform in a 3-ball: P(‖p‖/eps ≤ t) = t³.
    assert stats.kstest(radius, lambda t: np.clip(t, 0, 1) ** 3).pvalue > 1e-3
    cube = random_in_ball(sample_seeds(gen, 4000), (3,), 2.0, "linf")
    assert float(cube.abs().max()) <= 2.0
    assert stats.kstest(cube.flatten().numpy(), "uniform", args=(-2.0, 4.0)).pvalue > 1e-3


def test_noise_accuracy_with_zero_noise_is_the_clean_accuracy(binary) -> None:
    model, x, y = binary
    ctx = make_context(model, x, y, input_range=BOX)
    noisy = run_metric(NoiseAccuracy(), ctx, sigma=0.0)
    clean = run_metric(CleanAccuracy(), ctx)
    np.testing.assert_array_equal(noisy.samples, clean.samples)
    assert noisy.value == clean.value < 1.0


def test_noise_accuracy_matches_the_gaussian_tail_of_a_linear_model(binary) -> None:
    """For a linear model a correct sample stays correct under N(0, σ²I) noise with probability
    Φ(margin / (σ‖w_y − w_other‖₂)) (and a wrong one becomes correct with Φ of its margin)."""
    model, x, y = binary
    big_x, big_y = x.repeat(50, 1), y.repeat(50)
    sigma = 0.5
    result = run_metric(NoiseAccuracy(), make_context(model, big_x, big_y, input_range=BOX),
                        sigma=sigma, clip=False)
    m, w = margins(model, x, y)
    expected = stats.norm.cdf(m / (sigma * np.linalg.norm(w, axis=1))).mean()
    sd = np.sqrt(expected * (1 - expected) / big_x.shape[0])
    assert abs(result.value - expected) < 4 * sd
    assert result.ci is not None and result.ci[0] < expected < result.ci[1]
