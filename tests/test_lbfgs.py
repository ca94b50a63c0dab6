"""Box-constrained L-BFGS minimal distortion against exact minimal targeted distances of
linear classifiers (closed form for two classes, a scipy QP for more)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from robaudit.errors import MetricError
from robaudit.plugins.metrics.adversarial.lbfgs import CHUNK_VARIABLES, LBFGSMinDistortion
from robaudit.testing import make_context, run_metric

D = 5
BOX = (-20.0, 20.0)


def linear(classes: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    model = nn.Linear(D, classes).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def points(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fixed_linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    model = nn.Linear(len(weight[0]), len(weight)).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        model.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def targeted_distance(model: nn.Linear, x: np.ndarray, target: int,
                      box: tuple[float, float] | None = None) -> float:
    """min ‖r‖₂ s.t. f_target(x + r) ≥ f_j(x + r) for all j (and x + r in ``box``): a QP,
    solved by SLSQP."""
    w, b = model.weight.numpy(), model.bias.numpy()
    others = [j for j in range(w.shape[0]) if j != target]
    constraints = [{"type": "ineq", "fun": lambda r, j=j: (w[target] - w[j]) @ (x + r)
                    + b[target] - b[j], "jac": lambda r, j=j: w[target] - w[j]} for j in others]
    bounds = None if box is None else [(box[0] - v, box[1] - v) for v in x]
    solution = minimize(lambda r: r @ r, np.zeros_like(x), jac=lambda r: 2 * r, bounds=bounds,
                        constraints=constraints, method="SLSQP", options={"ftol": 1e-12})
    return float(np.sqrt(solution.x @ solution.x))


def test_binary_linear_distortion_is_the_closed_form() -> None:
    model, x = linear(2, seed=0), points(8, seed=1)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=BOX)
    result = run_metric(LBFGSMinDistortion(), ctx, search_steps=12)
    z, w = model(x), model.weight
    exact = ((z[:, 0] - z[:, 1]).abs() / (w[0] - w[1]).norm()).numpy()
    found = np.sqrt(D) * result.samples  # √(‖r‖²/m) back to ‖r‖
    assert result.details["failure_rate"] == 0.0
    assert bool(np.all(found >= exact * (1 - 1e-6)))  # no point of the other class is closer
    assert bool(np.all(found <= exact * 1.03))  # and the search gets within 3%
    assert result.value == pytest.approx(float(np.mean(exact / np.sqrt(D))), rel=0.03)


@pytest.mark.parametrize(("loss", "slack"), [("margin", 1.03), ("cross_entropy", 1.5)])
def test_random_targets_against_the_qp_distance_of_a_multiclass_model(loss: str,
                                                                      slack: float) -> None:
    """Never closer than the exact targeted distance (every reported point is in the target's
    region); the margin loss reaches it within 3%, the cross-entropy is only an upper bound
    (its minimisers also push away from the non-binding classes)."""
    model, x = linear(4, seed=2), points(8, seed=3)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=BOX, seed=5)
    result = run_metric(LBFGSMinDistortion(), ctx, search_steps=12, loss=loss)
    # Re-draw the documented targets: prediction + U{1, …, K−1} mod K from the check's seed.
    shift = torch.randint(1, 4, (8,), generator=torch.Generator().manual_seed(5))
    targets = (model(x).argmax(dim=1) + shift) % 4
    exact = np.array([targeted_distance(model, x[i].numpy(), int(targets[i])) for i in range(8)])
    found = np.sqrt(D) * result.samples
    assert bool(np.all(found >= exact * (1 - 1e-4)))
    assert bool(np.all(found <= exact * slack))


def test_all_targets_give_every_pair_and_the_untargeted_minimum() -> None:
    model, x = linear(3, seed=4), points(5, seed=6)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=BOX)
    result = run_metric(LBFGSMinDistortion(), ctx, target="all", search_steps=12)
    assert result.details["problems"] == 5 * 2
    z, w = model(x).numpy(), model.weight.numpy()
    k = z.argmax(axis=1)
    nearest = [min(abs(z[i, k[i]] - z[i, j]) / np.linalg.norm(w[k[i]] - w[j])
                   for j in range(3) if j != k[i]) for i in range(5)]
    assert result.details["mean_untargeted"] == pytest.approx(np.mean(nearest) / np.sqrt(D),
                                                              rel=0.03)


def test_a_class_outside_the_box_is_never_reached() -> None:
    """Logits [0, v·(x − 0.5), Σx − 100] on [0, 1]^D: class 2 leads nowhere in the box (its
    logit is below f_0 = 0 there), classes 0 and 1 share it. With every other label as a
    target, exactly the problems that target class 2 are unreached, so the failure rate is
    1/2 (at most max_failures: the value is computed), and they count at the farthest corner
    of the box; the others are reached no closer than the unconstrained distance."""
    v = [1.0, -2.0, 0.5, 1.5, -1.0]
    model = fixed_linear([[0.0] * D, v, [1.0] * D], [0.0, -0.5 * sum(v), -100.0])
    x = torch.rand(6, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    predicted = model(x).argmax(dim=1)
    assert set(predicted.tolist()) == {0, 1}
    ctx = make_context(model, x, predicted, input_range=(0.0, 1.0))
    result = run_metric(LBFGSMinDistortion(), ctx, target="all", search_steps=10,
                        max_failures=0.5)
    targets = (predicted.repeat_interleave(2) + torch.tensor([1, 2]).repeat(6)) % 3
    unreached = (targets == 2).numpy()
    # A failure counts at the farthest corner of the box from x: √(Σ max(x, 1 − x)²/D).
    corner = torch.maximum(x, 1 - x).pow(2).sum(dim=1).div(D).sqrt().repeat_interleave(2)
    np.testing.assert_allclose(result.samples[unreached], corner.numpy()[unreached])
    assert result.details["failure_rate"] == 0.5 and result.details["failures"] == 6
    assert result.value == pytest.approx(float(result.samples.mean()))
    assert result.details["mean_successful"] == pytest.approx(
        float(result.samples[~unreached].mean()))
    z, w = model(x).numpy(), model.weight.numpy()
    unconstrained = np.abs(z[:, 0] - z[:, 1]) / np.linalg.norm(w[0] - w[1])
    reached = np.sqrt(D) * result.samples[~unreached]
    assert bool(np.all(reached >= unconstrained * (1 - 1e-6)))


def test_a_binding_box_gives_the_box_constrained_distance() -> None:
    """f_1 − f_0 = w·x − 6 with w = (4, 1, 1, 1, 1) and x_0 near 1: the unconstrained nearest
    point of class 1 leaves [0, 1]^D through x_0 = 1, so the nearest point inside the box
    (a QP with bounds) is farther, by about 60%; the metric finds that one."""
    model = fixed_linear([[0.0] * D, [4.0, 1.0, 1.0, 1.0, 1.0]], [0.0, -6.0])
    gen = torch.Generator().manual_seed(9)
    x = torch.cat([0.85 + 0.1 * torch.rand(5, 1, generator=gen, dtype=torch.float64),
                   0.1 + 0.3 * torch.rand(5, D - 1, generator=gen, dtype=torch.float64)], dim=1)
    assert bool((model(x).argmax(dim=1) == 0).all())
    ctx = make_context(model, x, torch.zeros(5, dtype=torch.long), input_range=(0.0, 1.0))
    result = run_metric(LBFGSMinDistortion(), ctx, search_steps=12)
    free = np.array([targeted_distance(model, x[i].numpy(), 1) for i in range(5)])
    boxed = np.array([targeted_distance(model, x[i].numpy(), 1, box=(0.0, 1.0))
                      for i in range(5)])
    assert bool(np.all(boxed >= free * 1.3))  # the box binds
    assert result.details["failure_rate"] == 0.0
    found = np.sqrt(D) * result.samples
    assert bool(np.all(found >= boxed * (1 - 1e-4)))
    assert bool(np.all(found <= boxed * 1.03))


def test_more_failures_than_max_failures_is_an_error() -> None:
    """Every problem targets a class that leads nowhere in the box: the check errors rather
    than report the box bound as a distortion."""
    model = fixed_linear([[0.0] * D, [1.0] * D], [0.0, -100.0])
    x = torch.rand(4, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    ctx = make_context(model, x, torch.zeros(4, dtype=torch.long), input_range=(0.0, 1.0))
    with pytest.raises(MetricError, match="100% of the problems"):
        run_metric(LBFGSMinDistortion(), ctx, search_steps=3, max_iter=10)


def test_chunks_give_the_same_distortions_to_the_solver_tolerance() -> None:
    """Chunks of 1 (each problem its own L-BFGS-B run) and 4 (3 runs, the last of 1) against
    one run of all 9, on a binary linear model: the per-problem minimisers are the same and
    the closed form, the shared iterates differ only at the solver's tolerance."""
    model, x = linear(2, seed=11), points(9, seed=12)
    z, w = model(x), model.weight
    exact = ((z[:, 0] - z[:, 1]).abs() / (w[0] - w[1]).norm()).numpy() / np.sqrt(D)
    values = {}
    for chunk in (1, 4, 9):
        ctx = make_context(model, x, model(x).argmax(dim=1), input_range=BOX, seed=2)
        values[chunk] = run_metric(LBFGSMinDistortion(), ctx, search_steps=12, chunk=chunk)
        assert values[chunk].details["chunk"] == chunk
        assert values[chunk].details["failure_rate"] == 0.0
        assert bool(np.all(values[chunk].samples >= exact * (1 - 1e-6)))
    for chunk in (1, 4):
        np.testing.assert_allclose(values[chunk].samples, values[9].samples, rtol=0.03)


def test_the_default_chunk_bounds_the_variables_per_run() -> None:
    """The default chunk holds at most CHUNK_VARIABLES = 2^18 variables: 4096 samples of 64
    values (the digits), 85 of 3×32×32."""
    for shape, expected in (((1, 8, 8), 4096), ((3, 32, 32), 85)):
        x = torch.full((2, *shape), 0.5)
        model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 2))
        ctx = make_context(model, x, torch.zeros(2, dtype=torch.long))
        result = run_metric(LBFGSMinDistortion(), ctx, search_steps=1, max_iter=1,
                            max_failures=1.0)
        assert result.details["chunk"] == expected
        assert expected * x[0].numel() <= CHUNK_VARIABLES
