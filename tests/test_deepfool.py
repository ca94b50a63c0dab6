"""DeepFool against closed forms on linear classifiers, brute force on a ReLU MLP, and the
``deepfool_min_distortion`` metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic_models import frozen, linear
from torch import nn

from robaudit.errors import MetricError
from robaudit.metric import work_units
from robaudit.ops.deepfool import REFINE_STEPS, STEP_SLACK, deepfool, deepfool_split
from robaudit.plugins.metrics.adversarial.deepfool_distortion import DeepFoolMinDistortion
from robaudit.testing import make_context, run_metric


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                nn.Linear(32, 4)))


def points(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def closed_form(model: nn.Linear, x: torch.Tensor, dual: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample (by a plain loop): the distance min_j |f_k − f_j| / ‖w_k − w_j‖_dual to the
    nearest class boundary of a linear classifier, and that class j."""
    z = model(x).numpy()
    w = model.weight.numpy()
    dist, nearest = [], []
    for i in range(x.shape[0]):
        k = int(z[i].argmax())
        d = {j: abs(z[i, k] - z[i, j]) / np.linalg.norm(w[k] - w[j], ord=dual)
             for j in range(w.shape[0]) if j != k}
        j = min(d, key=d.__getitem__)
        dist.append(d[j])
        nearest.append(j)
    return np.array(dist), np.array(nearest)


def refined_bounds(dist: np.ndarray, overshoot: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the refined perturbation of a linear classifier lies: across the boundary, so
    at least the exact distance d, and at most the line search's bracket of the crossing,
    within 2^-REFINE_STEPS of the last iterate's segment, itself (1 + η)(d + s) long (s the
    step slack), pushed out by 2^-REFINE_STEPS of its length."""
    segment = (1 + overshoot) * (dist + STEP_SLACK)
    return dist, (dist + segment * 2.0**-REFINE_STEPS) * (1 + 2.0**-REFINE_STEPS)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("classes", [2, 5, 10])
def test_refined_perturbation_is_the_exact_distance(classes: int, norm: str) -> None:
    """The line search and the projection: on a linear classifier the perturbation is the
    closed-form distance d to the line search's precision (the paper's is (1 + η)(d + s)),
    along the same normal as the paper's."""
    model, x = linear(6, classes, seed=16), points(12, 6, seed=17)
    overshoot = 0.02
    result = deepfool(model, x, norm=norm, candidates=classes, overshoot=overshoot)
    plain = deepfool(model, x, norm=norm, candidates=classes, overshoot=overshoot, damping=1.0,
                      refine=0)
    dist, _ = closed_form(model, x, dual=2 if norm == "l2" else 1)
    size = (result.perturbation.norm(dim=1) if norm == "l2"
            else result.perturbation.abs().amax(dim=1)).numpy()
    low, high = refined_bounds(dist, overshoot)
    assert bool(np.all(size >= low * (1 - 1e-9))) and bool(np.all(size <= high * (1 + 1e-9)))
    assert bool(result.converged.all())
    assert bool((model(result.boundary).argmax(dim=1) == result.crossed_into).all())
    assert bool((result.crossed_into != model(x).argmax(dim=1)).all())
    cosine = torch.nn.functional.cosine_similarity(result.perturbation, plain.perturbation)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


@pytest.mark.parametrize("classes", [2, 5])
def test_l2_distance_of_a_linear_classifier_is_the_closed_form(classes: int) -> None:
    model, x = linear(6, classes), points(12, 6)
    overshoot = 0.02
    result = deepfool(model, x, candidates=classes, overshoot=overshoot, damping=1.0,
                      refine=0)
    dist, nearest = closed_form(model, x, dual=2)
    np.testing.assert_allclose(result.perturbation.norm(dim=1).numpy(),
                               (1 + overshoot) * (dist + STEP_SLACK), rtol=1e-4)
    assert result.iterations.tolist() == [1] * 12
    assert bool(result.converged.all())
    # The step is along the normal of the nearest boundary, w_j − w_k normalised.
    k = model(x).argmax(dim=1)
    w = model.weight
    normal = w[torch.as_tensor(nearest)] - w[k]
    normal = normal / normal.norm(dim=1, keepdim=True)
    torch.testing.assert_close(result.normal, normal)
    direction = result.perturbation / result.perturbation.norm(dim=1, keepdim=True)
    torch.testing.assert_close(direction, normal)
    assert torch.equal(model(result.boundary).argmax(dim=1), result.crossed_into)
    assert bool((result.crossed_into != k).all())


@pytest.mark.parametrize("classes", [2, 5])
def test_linf_distance_of_a_linear_classifier_is_the_closed_form(classes: int) -> None:
    model, x = linear(6, classes, seed=3), points(12, 6)
    result = deepfool(model, x, norm="linf", candidates=classes, overshoot=0.0, damping=1.0,
                      refine=0)
    dist, nearest = closed_form(model, x, dual=1)
    np.testing.assert_allclose(result.perturbation.abs().amax(dim=1).numpy(),
                               dist + STEP_SLACK, rtol=1e-4)
    assert result.iterations.tolist() == [1] * 12
    k = model(x).argmax(dim=1)
    sign = (model.weight[torch.as_tensor(nearest)] - model.weight[k]).sign()
    torch.testing.assert_close(result.perturbation.sign(), sign)
    assert bool((model(result.boundary).argmax(dim=1) != k).all())


def test_the_first_step_takes_its_gradients_from_the_clean_pass() -> None:
    """On a linear classifier the paper's DeepFool takes one step per sample: two forward
    passes of the batch (the clean one, whose graph gives the step's gradients, and the check
    of the step), where a batch with a misclassified sample needs a third (the graph of the
    samples that take the step); the results are those of each sample alone."""
    model, x = linear(6, 5, seed=40), points(9, 6, seed=41)
    calls: list[int] = []

    def logits(z: torch.Tensor) -> torch.Tensor:
        calls.append(z.shape[0])
        return model(z)

    result = deepfool(logits, x, refine=0)
    assert calls == [9, 9] and result.iterations.tolist() == [1] * 9
    labels = model(x).argmax(dim=1)
    labels[0] = (labels[0] + 1) % 5
    calls.clear()
    mixed = deepfool(logits, x, labels=labels, refine=0)
    assert calls == [9, 8, 8]
    for i in range(9):
        alone = deepfool(model, x[i : i + 1], labels=labels[i : i + 1], refine=0)
        torch.testing.assert_close(alone.perturbation[0], mixed.perturbation[i])
    torch.testing.assert_close(mixed.perturbation[1:], result.perturbation[1:])


def wide_mlp(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                nn.Linear(64, classes)))


def test_keeping_the_nearest_classes_after_the_first_step_changes_nothing() -> None:
    """Linearising, after the first ℓ2 step, only the ``keep`` = 3 classes whose linearised
    boundaries were nearest at the previous step gives, on a 10-class ReLU MLP where most
    samples take several steps, exactly the result of linearising all 9 on every step. (ℓ∞
    steps reorder the boundaries more, keep = 3 changed one sample of these: ℓ∞ keeps all.)"""
    model, x = wide_mlp(seed=21), points(60, 8, seed=22) * 3
    for norm in ("l2", "linf"):
        pruned = deepfool(model, x, norm=norm, refine=0)
        full = deepfool(model, x, norm=norm, refine=0, keep=9)
        assert float(full.iterations.double().mean()) > 1.5  # the pruned steps are exercised
        for name in ("perturbation", "crossed_into", "iterations", "converged", "normal"):
            assert torch.equal(getattr(pruned, name), getattr(full, name)), name
    # the pruning is live: with keep = 1 the ℓ2 path does change on this MLP
    one = deepfool(model, x, refine=0, keep=1)
    assert not torch.equal(one.perturbation, deepfool(model, x, refine=0, keep=9).perturbation)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_projection_never_lengthens_the_line_search_result(norm: str) -> None:
    """Per sample, the projection round's result is never longer than the crossing on the
    DeepFool segment (to the searches' precision), every returned point changes the label,
    and on a ReLU MLP the projection shortens the mean perturbation."""
    model, x = wide_mlp(seed=23), points(60, 8, seed=24) * 3
    clean = model(x).argmax(dim=1)
    projected = deepfool(model, x, norm=norm)
    searched = deepfool(model, x, norm=norm, project=0)
    assert bool(projected.converged.all()) and bool(searched.converged.all())
    assert bool((model(projected.boundary).argmax(dim=1) != clean).all())
    size = {name: (r.perturbation.norm(dim=1) if norm == "l2"
                   else r.perturbation.abs().amax(dim=1))
            for name, r in (("projected", projected), ("searched", searched))}
    assert bool((size["projected"] <= size["searched"] * (1 + 2.0**-9)).all())
    assert float(size["projected"].mean()) < 0.99 * float(size["searched"].mean())


def test_candidates_restrict_the_classes_considered() -> None:
    """With 2 candidates only the runner-up class is linearised: on a linear model the step
    goes to its boundary, which may be farther than the nearest one."""
    model, x = linear(6, 5, seed=4), points(20, 6)
    z = model(x)
    top2 = z.topk(2, dim=1).indices
    w = model.weight
    expected = (z.gather(1, top2[:, :1]) - z.gather(1, top2[:, 1:])).squeeze(1).abs() / (
        w[top2[:, 0]] - w[top2[:, 1]]).norm(dim=1)
    result = deepfool(model, x, candidates=2, overshoot=0.0, damping=1.0,
                      refine=0)
    first_step = result.iterations == 1
    torch.testing.assert_close(result.perturbation.norm(dim=1)[first_step],
                               expected[first_step] + STEP_SLACK)
    assert bool(result.converged.all())


def test_a_misclassified_sample_takes_no_step_and_the_batch_does_not_mix() -> None:
    model, x = mlp(), points(10, 8)
    clean = model(x).argmax(dim=1)
    labels = clean.clone()
    labels[:3] = (clean[:3] + 1) % 4  # these three are "already misclassified"
    result = deepfool(model, x, labels=labels)
    assert result.iterations[:3].tolist() == [0, 0, 0]
    assert bool(result.converged[:3].all())
    assert torch.equal(result.crossed_into[:3], clean[:3])
    assert float(result.perturbation[:3].abs().max()) == 0.0
    assert float(result.normal[:3].abs().max()) == 0.0
    # Each sample's result is the one it gets alone: the active-set indexing keeps rows apart.
    for i in range(3, 10):
        alone = deepfool(model, x[i : i + 1], labels=labels[i : i + 1])
        torch.testing.assert_close(alone.perturbation[0], result.perturbation[i])
        assert int(alone.iterations[0]) == int(result.iterations[i])


def ratio_to_first_change(model: nn.Module, x: torch.Tensor, r: torch.Tensor,
                          clean: torch.Tensor) -> torch.Tensor:
    """Per sample, ‖r‖ over the distance to the first label change on the segment from x to
    x + 1.5·r (a grid of 3000 steps; the segment stays in any box holding x and x + r up to
    t = 1, and the first change is at t ≤ 1 since x + r changes the label)."""
    steps = torch.linspace(0, 1.5, 3001, dtype=torch.float64)[1:]
    along = x[:, None] + steps.view(1, -1, *([1] * (x.dim() - 1))) * r[:, None]
    changed = model(along.flatten(0, 1)).argmax(dim=1).view(x.shape[0], -1) != clean[:, None]
    return 1 / steps[changed.float().argmax(dim=1)]


def test_relu_mlp_boundary_points_change_the_label_and_are_nearly_minimal() -> None:
    model, x = mlp(seed=2), points(40, 8, seed=5)
    overshoot = 0.02
    result = deepfool(model, x, overshoot=overshoot, candidates=4)
    clean = model(x).argmax(dim=1)
    assert bool(result.converged.all())
    assert torch.equal(model(result.boundary).argmax(dim=1), result.crossed_into)
    assert bool((result.crossed_into != clean).all())
    # Brute force: the first label change along the returned direction, on a fine grid: a
    # search along it cannot shrink r by more than the line search's precision: r ends at the
    # crossing, not (1 + η) past it.
    ratio = ratio_to_first_change(model, x, result.perturbation, clean)
    assert bool((ratio >= 1 - 1e-3).all())  # r itself crosses, so the first change is no farther
    assert float(ratio.max()) <= 1 + 2.0**-8
    size = result.perturbation.norm(dim=1)
    # Random directions need far larger perturbations to change the label.
    gen = torch.Generator().manual_seed(7)
    random_dirs = torch.randn(40, 32, 8, generator=gen, dtype=torch.float64)
    random_dirs = random_dirs / random_dirs.norm(dim=2, keepdim=True)
    radii = torch.linspace(0, 20, 401, dtype=torch.float64)[1:]
    probe = x[:, None, None, :] + radii[None, None, :, None] * random_dirs[:, :, None, :]
    moved = model(probe).argmax(dim=3) != clean[:, None, None]
    reach = torch.where(moved.any(dim=2), radii[moved.float().argmax(dim=2)],
                        torch.full(moved.shape[:2], float("inf"), dtype=torch.float64))
    assert float(size.median()) < float(reach.min(dim=1).values.median())


def test_the_box_keeps_points_feasible_and_finds_the_box_constrained_minimum() -> None:
    """Binary linear model in the box [0, 1]^d: the nearest point of the other class inside
    the box is clip(x + μ·w) for the smallest μ ≥ 0 that reaches the boundary (the KKT form of
    the projection onto a half-space ∩ box), found here by bisection."""
    model = linear(6, 2, seed=8)
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(16, 6, generator=gen, dtype=torch.float64)
    k = model(x).argmax(dim=1)
    w = (model.weight[1 - k] - model.weight[k])  # direction that raises f_other − f_k
    bias = model.bias[1 - k] - model.bias[k]

    def margin(mu: torch.Tensor) -> torch.Tensor:
        return ((x + mu[:, None] * w).clamp(0, 1) * w).sum(dim=1) + bias

    low, high = torch.zeros(16, dtype=torch.float64), torch.full((16,), 1e3, dtype=torch.float64)
    feasible = margin(high) > 0
    for _ in range(200):
        mid = (low + high) / 2
        above = margin(mid) > 0
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    exact = ((x + high[:, None] * w).clamp(0, 1) - x).norm(dim=1)
    result = deepfool(model, x, candidates=2, overshoot=0.0, input_range=(0.0, 1.0))
    assert float(result.boundary.min()) >= 0.0 and float(result.boundary.max()) <= 1.0
    torch.testing.assert_close(result.boundary, x + result.perturbation)
    done = result.converged
    assert torch.equal(done, feasible)
    size = result.perturbation.norm(dim=1)
    assert bool((size[done] >= exact[done] * (1 - 1e-6)).all())
    assert bool((size[done] <= exact[done] * (1 + 2.0**-8)).all())


def test_in_a_box_the_first_change_along_r_is_the_crossing() -> None:
    """A ReLU MLP on [0, 1]^8 with half of each sample's coordinates at 0 (like image
    background): the box clips many steps. The boundary points stay in the box, change the
    label, and a brute-force search along r cannot shrink it by more than the line search's
    precision."""
    model = mlp(seed=18)
    gen = torch.Generator().manual_seed(19)
    x = torch.rand(40, 8, generator=gen, dtype=torch.float64)
    x[:, ::2] = 0.0
    clean = model(x).argmax(dim=1)
    overshoot = 0.02
    result = deepfool(model, x, overshoot=overshoot, candidates=4, input_range=(0.0, 1.0))
    done = result.converged
    assert float(done.double().mean()) > 0.9
    assert float(result.boundary.min()) >= 0.0 and float(result.boundary.max()) <= 1.0
    assert bool((model(result.boundary[done]).argmax(dim=1) != clean[done]).all())
    ratio = ratio_to_first_change(model, x[done], result.perturbation[done], clean[done])
    assert bool((ratio >= 1 - 1e-3).all())
    assert float(ratio.max()) <= 1 + 2.0**-8


def test_a_boundary_outside_the_box_is_not_reached() -> None:
    """f_1 − f_0 = Σx − 100 < 0 on all of [0, 1]^4: DeepFool walks to the corner, finds every
    coordinate blocked by the box, and stops without a label change."""
    model = frozen(nn.Linear(4, 2))
    model.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
    model.bias.copy_(torch.tensor([0.0, -100.0]))
    x = torch.full((2, 4), 0.5, dtype=torch.float64)
    result = deepfool(model, x, input_range=(0.0, 1.0))
    assert not bool(result.converged.any())
    torch.testing.assert_close(result.boundary, torch.ones_like(x))
    assert result.iterations.tolist() == [1, 1]
    assert result.crossed_into.tolist() == [0, 0]
    torch.testing.assert_close(result.normal, torch.full_like(x, 0.5))



class TiedConstant(nn.Module):
    """Logits [0, 0, Σx − 100]: classes 0 and 1 are the same constant, so the candidate
    difference f_1 − f_0 is exactly 0 with an exactly zero gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum(dim=1, keepdim=True)
        zero = torch.zeros_like(total)
        return torch.cat([zero, zero, total - 100.0], dim=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_a_zero_gradient_candidate_is_never_the_nearest_boundary(norm: str) -> None:
    """The class-2 boundary lies outside [0, 1]^4: the sample walks to the corner and is
    pinned there. The tied class 1 has |f'| = ‖w'‖ = 0 (a 0/0 distance); it must not be taken
    for the nearest boundary, whose normal (of Σx − 100, ones/2) the pinned sample keeps."""
    x = torch.full((3, 4), 0.5, dtype=torch.float64)
    result = deepfool(TiedConstant(), x, norm=norm, candidates=3, input_range=(0.0, 1.0))
    for field in ("perturbation", "boundary", "normal"):
        assert not bool(getattr(result, field).isnan().any())
    torch.testing.assert_close(result.boundary, torch.ones_like(x))
    torch.testing.assert_close(result.normal, torch.full_like(x, 0.5))
    assert not bool(result.converged.any())
    assert result.crossed_into.tolist() == [0, 0, 0]

def test_metric_value_is_the_papers_rho_on_a_linear_model() -> None:
    model, x = linear(6, 3, seed=10), points(30, 6, seed=11)
    y = model(x).argmax(dim=1)
    y[:5] = (y[:5] + 1) % 3  # misclassified samples still count, measured from their prediction
    ctx = make_context(model, x, y, input_range=(-1e3, 1e3), batch_size=7)  # 5 batches
    result = run_metric(DeepFoolMinDistortion(), ctx, candidates=3)
    dist, _ = closed_form(model, x, dual=2)
    low, high = refined_bounds(dist, 0.02)
    size = x.norm(dim=1).numpy()
    assert bool(np.all(result.samples >= low / size * (1 - 1e-9)))
    assert bool(np.all(result.samples <= high / size))
    assert (low / size).mean() <= result.value <= (high / size).mean()
    assert result.details["success_rate"] == 1.0
    # the paper's step reaches a linear boundary in one step; the line search and the
    # projection after it take none
    assert result.details["mean_iterations"] == 1.0
    assert (low / size)[5:].mean() <= result.details["rho_correct"] <= (high / size)[5:].mean()
    # The DeepFool run is cached per work unit for the other checks (curvature) under the
    # documented key: deepfool_split then reads those units, it runs nothing.
    key = ("deepfool", "model", "test", "l2", 0.02, 3, 50)
    units = work_units(30, 7)
    assert all((*key, u.start, u.stop) in ctx.cache for u in units)
    split = deepfool_split(ctx, candidates=3)
    for unit in units:
        cached = ctx.cache.get((*key, unit.start, unit.stop))
        assert torch.equal(split.boundary[unit.indices], cached.boundary)


def test_metric_linf_uses_the_linf_norms() -> None:
    model, x = linear(6, 3, seed=12), points(10, 6, seed=13)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=(-1e3, 1e3))
    result = run_metric(DeepFoolMinDistortion(), ctx, norm="linf", overshoot=0.0, candidates=3)
    dist, _ = closed_form(model, x, dual=1)
    low, high = refined_bounds(dist, 0.0)
    size = x.abs().amax(dim=1).numpy()
    assert (low / size).mean() <= result.value <= (high / size).mean()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_all_zero_images_are_left_out_of_the_relative_distortion_and_counted(norm: str) -> None:
    """ρ = ‖r‖/‖x‖ is undefined at ‖x‖ = 0 (it was ‖r‖/1e-12, 5.5e12, passing any min): such
    samples are NaN in samples, counted, and below min_included the check is error."""
    model, x = linear(6, 3, seed=12), points(10, 6, seed=13)
    x[[3, 7]] = 0.0
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=(-1e3, 1e3))
    result = run_metric(DeepFoolMinDistortion(), ctx, norm=norm, candidates=3)
    assert np.isnan(result.samples[[3, 7]]).all()
    assert np.isfinite(np.delete(result.samples, [3, 7])).all()
    assert result.value == pytest.approx(np.delete(result.samples, [3, 7]).mean())
    assert result.details["zero_inputs"] == 2
    assert result.details["included"] == {"used": 8, "asked": 10, "share": 0.8}
    x[5] = 0.0
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=(-1e3, 1e3))
    with pytest.raises(MetricError, match=r"only 7 of 10 samples \(DeepFool converged and"):
        run_metric(DeepFoolMinDistortion(), ctx, norm=norm, candidates=3)
    zeros = torch.zeros(4, 6, dtype=torch.float64)
    ctx = make_context(model, zeros, torch.zeros(4, dtype=torch.long), input_range=(-1e3, 1e3))
    with pytest.raises(MetricError, match=r"every audit sample is all zeros"):
        run_metric(DeepFoolMinDistortion(), ctx, norm=norm, candidates=3)


def test_split_in_batches_is_deepfool_of_the_whole_split_kept_on_the_cpu() -> None:
    """deepfool_split runs chunks of batch_size (here 4 of 7 and one of 2) and keeps each
    chunk's result on the CPU: row by row it is DeepFool on the whole split at once."""
    model, x = mlp(seed=14), points(30, 8, seed=15)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=(-1e3, 1e3),
                       batch_size=7)
    split = deepfool_split(ctx, candidates=4)
    whole = deepfool(model, x, candidates=4, input_range=(-1e3, 1e3))
    for name in ("perturbation", "boundary", "crossed_into", "iterations", "converged",
                 "normal"):
        part, full = getattr(split, name), getattr(whole, name)
        assert part.device.type == "cpu"
        torch.testing.assert_close(part, full)
    assert bool(split.converged.all()) and int(split.iterations.max()) > 1
