"""Targeted DeepFool against closed forms and a brute-force QP over active sets on linear
classifiers, and on a ReLU network."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from analytic_models import frozen, linear
from torch import nn

from robaudit.ops.deepfool import STEP_SLACK
from robaudit.ops.targeted import project_dual, targeted_deepfool


def points(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_binary_linear_classifier_gets_the_closed_form_distance_and_direction() -> None:
    model, x = linear(6, 2), points(20, 6)
    overshoot = 0.02
    target = 1 - model(x).argmax(dim=1)
    result = targeted_deepfool(model, x, target, overshoot=overshoot)
    w = model.weight[1] - model.weight[0]
    z = model(x)
    distance = (z[:, 0] - z[:, 1]).abs() / w.norm()
    np.testing.assert_allclose(result.perturbation.norm(dim=1).numpy(),
                               ((1 + overshoot) * (distance + STEP_SLACK)).numpy(), rtol=1e-9)
    sign = torch.where(target == 1, 1.0, -1.0).double()[:, None]
    torch.testing.assert_close(result.perturbation / result.perturbation.norm(dim=1)[:, None],
                               sign * w / w.norm())
    assert bool(result.reached.all())
    assert result.iterations.tolist() == [1] * 20
    assert torch.equal(model(result.point).argmax(dim=1), target)


def qp_distance(model: nn.Linear, x: np.ndarray, t: int) -> float:
    """min ‖r‖ s.t. f_t(x + r) − f_j(x + r) ≥ STEP_SLACK ‖w_t − w_j‖ for all j ≠ t, by brute
    force over active sets: the projection onto each subset's equality constraints, the
    shortest feasible one wins (independent of the dual solver)."""
    w, b = model.weight.numpy(), model.bias.numpy()
    rows = [j for j in range(w.shape[0]) if j != t]
    a = np.stack([w[t] - w[j] for j in rows])
    need = np.array([STEP_SLACK * np.linalg.norm(w[t] - w[j]) - (b[t] - b[j]) for j in rows])
    need = need - a @ x  # a r ≥ need
    best = np.inf
    for subset in itertools.chain.from_iterable(
            itertools.combinations(range(len(rows)), size)
            for size in range(min(len(rows), x.size) + 1)):
        s = list(subset)
        r = (a[s].T @ np.linalg.solve(a[s] @ a[s].T, need[s]) if s
             else np.zeros_like(x))
        if np.all(a @ r >= need - 1e-9):
            best = min(best, float(np.linalg.norm(r)))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_linear_classifier_gets_the_polyhedron_projection(seed: int) -> None:
    """The target region of a linear classifier is a polyhedron; the distance into it (several
    constraints may be active at once) is the QP's, in one step."""
    model, x = linear(4, 6, seed=seed), points(15, 4, seed=seed + 10) * 3
    target = (model(x).argmax(dim=1) + 1 + torch.arange(15) % 5) % 6
    result = targeted_deepfool(model, x, target, candidates=6, overshoot=0.0)
    expected = [qp_distance(model, x[i].numpy(), int(target[i])) for i in range(15)]
    np.testing.assert_allclose(result.perturbation.norm(dim=1).numpy(), expected, rtol=1e-6)
    assert bool(result.reached.all())
    assert result.iterations.tolist() == [1] * 15


def test_dual_solution_with_two_active_constraints_matches_the_closed_form() -> None:
    """min ‖r‖ s.t. r₁ ≥ 1, r₂ ≥ 2 (with an inactive third constraint) is r = (1, 2)."""
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, -10.0]], dtype=torch.float64)
    lam = project_dual(w @ w.transpose(1, 2), b)
    expected = torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close((lam[:, None] @ w)[0, 0], expected)


def test_samples_already_in_the_target_take_no_step() -> None:
    model, x = linear(5, 3), points(8, 5)
    target = model(x).argmax(dim=1)
    result = targeted_deepfool(model, x, target)
    assert torch.equal(result.perturbation, torch.zeros_like(x))
    assert result.iterations.tolist() == [0] * 8
    assert bool(result.reached.all())


def relu_net() -> nn.Module:
    torch.manual_seed(4)
    return frozen(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                nn.Linear(32, 5)))


def test_relu_network_reaches_every_target_and_does_not_depend_on_the_batch() -> None:
    """(Class 0 of this network is never predicted: the targets are the other four.)"""
    model, x = relu_net(), points(40, 8, seed=2)
    target = 1 + (model(x).argmax(dim=1) + torch.arange(40) % 3) % 4
    target = torch.where(target == model(x).argmax(dim=1), 1 + target % 4, target)
    whole = targeted_deepfool(model, x, target, candidates=5, max_iter=300)
    assert bool(whole.reached.all())
    assert torch.equal(model(whole.point).argmax(dim=1), target)
    parts = [targeted_deepfool(model, x[i:i + 7], target[i:i + 7], candidates=5, max_iter=300)
             for i in range(0, 40, 7)]
    torch.testing.assert_close(torch.cat([p.point for p in parts]), whole.point)
    # Minimal: halfway along the perturbation the target is not reached yet for most samples.
    halfway = model(x + 0.5 * whole.perturbation).argmax(dim=1)
    assert float((halfway != target).double().mean()) > 0.8


def test_box_clips_every_iterate() -> None:
    model, x = relu_net(), torch.rand(30, 8, generator=torch.Generator().manual_seed(3),
                                      dtype=torch.float64)
    target = 1 + model(x).argmax(dim=1) % 4
    result = targeted_deepfool(model, x, target, candidates=5, input_range=(0.0, 1.0))
    assert float(result.point.min()) >= 0.0 and float(result.point.max()) <= 1.0
    assert torch.equal(result.reached, model(result.point).argmax(dim=1) == target)
