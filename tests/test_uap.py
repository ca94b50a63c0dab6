"""``uap_fooling_rate`` and the fitting algorithms of ``robaudit.ops.uap``, checked against the
closed form of a binary linear classifier.

For f(x) = w·x + b with logits [0, f] and every sample on the side f > 0, a universal v changes
the prediction of x exactly when w·v ≤ −f(x) (away from the box's edges), and the best v in the
ℓ∞ ball of radius ε is −ε·sign(w) (w·v = −ε‖w‖₁), in the ℓ2 ball −ε·w/‖w‖₂ (w·v = −ε‖w‖₂).
So the best fooling rate is the fraction of samples with f(x) < ε‖w‖₁ (ℓ∞) or ε‖w‖₂ (ℓ2).
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robaudit.errors import MetricError
from robaudit.ops.sampling import sample_seeds
from robaudit.ops.uap import fit_uap_deepfool, fit_uap_sgd, random_lp_noise
from robaudit.plugins.metrics.universal.robustness_category import RobustnessCategory
from robaudit.plugins.metrics.universal.uap import UAPFitParams, UAPFoolingRate
from robaudit.testing import make_context, run_metric

DIM = 16
#: w = ±1 entries: ‖w‖₁ = 16, ‖w‖₂ = 4.
SIGNS = torch.tensor([1.0, -1.0] * (DIM // 2))
#: Budgets whose threshold ε‖w‖ is 0.8 in both norms.
BUDGETS = {"linf": 0.05, "l2": 0.2}
SMALL, LARGE = 0.4, 1.6  # margins f(x): fooled at the threshold 0.8, and not fooled


def linear_model(w: torch.Tensor = SIGNS) -> nn.Module:
    """Logits [0, w·(x − 0.5)] on flattened 1×4×4 inputs."""
    layer = nn.Linear(DIM, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros(DIM), w]))
        layer.bias.copy_(torch.tensor([0.0, -0.5 * float(w.sum())]))
    return nn.Sequential(nn.Flatten(), layer)


def samples(margins: list[float], seed: int, w: torch.Tensor = SIGNS) -> torch.Tensor:
    """Points 0.5 + (a random offset ⊥ w) + m·w/‖w‖² with f = m, inside [0.25, 0.75]^d."""
    g = torch.Generator().manual_seed(seed)
    offset = (torch.rand(len(margins), DIM, generator=g) - 0.5) * 0.2
    offset -= (offset @ w)[:, None] * w / w.dot(w)
    m = torch.tensor(margins)[:, None]
    return (0.5 + offset + m * w / w.dot(w)).view(-1, 1, 4, 4)


def margins(small: int, large: int) -> list[float]:
    return [SMALL] * small + [LARGE] * large


@pytest.mark.parametrize("method", ["deepfool", "sgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_fooling_rate_is_the_closed_form(method: str, norm: str) -> None:
    ref = samples(margins(12, 8), seed=1)  # 60% foolable
    test = samples(margins(5, 15), seed=2)  # 25% foolable
    ctx = make_context(linear_model(), test, torch.ones(20, dtype=torch.long),
                       reference=(ref, torch.ones(20, dtype=torch.long)))
    result = run_metric(UAPFoolingRate(), ctx, eps=BUDGETS[norm], norm=norm, method=method,
                        max_passes=20, step=0.2)
    assert result.value == pytest.approx(0.25)
    assert result.details["fit_fooling_rate"] == pytest.approx(0.6)
    # δ = 0.2 asks for 80% on the fit set, which no v reaches: every pass is made, but for a
    # DeepFool fit that reaches a fixed point (v at the ℓ∞ vertex −ε·sign(w), see below)
    assert result.details["passes"] == (2 if (method, norm) == ("deepfool", "linf") else 20)
    # the figure is v itself, pointing across the boundary (w·v < 0), within the budget
    image = torch.from_numpy(result.figures[0].image)
    assert image.shape == (1, 4, 4) and float((image.flatten() * SIGNS).sum()) < 0
    assert result.details["perturbation_norm"] <= BUDGETS[norm] * (1 + 1e-6)


@pytest.mark.parametrize("fit", [fit_uap_deepfool, fit_uap_sgd])
def test_fitted_perturbation_is_the_optimal_one(fit) -> None:
    x = samples(margins(6, 6), seed=3)
    model = linear_model()
    w = SIGNS.view(1, 4, 4)
    extra = {"step": 0.2} if fit is fit_uap_sgd else {}
    linf = fit(model, x, eps=0.05, norm="linf", max_passes=20, input_range=(0.0, 1.0),
               generator=torch.Generator().manual_seed(0), **extra)
    # v = −c·sign(w) with c ≤ ε; DeepFool's first steps already reach the vertex c = ε (the
    # returned v is the first pass's with the best rate, so sgd may stop short of it)
    v = linf.perturbation
    assert torch.equal(v.sign(), -w) and torch.allclose(v.abs(), v.abs().max())
    assert float(v.abs().max()) <= 0.05 + 1e-7
    if fit is fit_uap_deepfool:
        assert torch.allclose(v, -0.05 * w, atol=1e-6)
    l2 = fit(model, x, eps=0.2, norm="l2", max_passes=20, input_range=(0.0, 1.0),
             generator=torch.Generator().manual_seed(0), **extra)
    cosine = float((l2.perturbation * -w).sum() / (l2.perturbation.norm() * w.norm()))
    assert cosine > 0.999
    assert float(l2.perturbation.norm()) <= 0.2 * (1 + 1e-5)
    # the fooled fraction is the closed form's: the six samples of margin 0.4 < ε‖w‖ = 0.8
    assert linf.fooling_rate == l2.fooling_rate == 0.5


class Constant(nn.Module):
    """Logits that do not depend on the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0]).expand(x.shape[0], 2) + 0 * x.flatten(1).sum(1, True)


@pytest.mark.parametrize("method", ["deepfool", "sgd"])
def test_a_model_whose_logits_do_not_depend_on_the_input_is_an_error(method: str) -> None:
    """No step is ever taken, v = 0 fools nothing: a fooling rate of 0 (the best score) and
    category 1 would measure nothing (design §10)."""
    x = samples(margins(5, 5), seed=3)
    for metric in (UAPFoolingRate(), RobustnessCategory()):
        ctx = make_context(Constant(), x, torch.ones(10, dtype=torch.long))
        with pytest.raises(MetricError, match=r"universal perturbation .* is v = 0"):
            run_metric(metric, ctx, method=method, max_passes=2)


def test_stops_at_one_minus_delta() -> None:
    x = samples(margins(9, 1), seed=4)  # v fools 90% ≥ 1 − δ = 0.8 after the first pass
    fit = fit_uap_deepfool(linear_model(), x, eps=0.05, norm="linf", delta=0.2, max_passes=20,
                           input_range=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert fit.passes == 1
    assert fit.fooling_rate == pytest.approx(0.9)


def test_the_fixed_point_stop_gives_the_result_of_every_pass() -> None:
    """A DeepFool pass that changes neither v nor any sample's crossed class is repeated by
    every later pass: stopping there gives exactly the v and the rate of all passes."""
    x, model = samples(margins(12, 8), seed=1), linear_model()
    fits = [fit_uap_deepfool(model, x, eps=0.05, norm="linf", max_passes=20,
                             input_range=(0.0, 1.0), generator=torch.Generator().manual_seed(3),
                             settle=settle) for settle in (True, False)]
    assert (fits[0].passes, fits[1].passes) == (2, 20)
    assert torch.equal(fits[0].perturbation, fits[1].perturbation)
    assert fits[0].fooling_rate == fits[1].fooling_rate == pytest.approx(0.6)
    assert set(fits[1].history[1:]) == {fits[0].history[1]}  # every later pass repeats it


def test_a_standing_sample_reuses_the_class_it_crossed_into() -> None:
    """The classes of a sample still standing after a pass: the one its last step crossed
    into first, then the highest other logits, never its own class."""
    from robaudit.ops.uap import reused_classes

    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 9.0, 3.0]])
    classes = reused_classes(logits, torch.tensor([0, 3]), torch.tensor([4, 0]), 3)
    assert classes.tolist() == [[4, 1, 2], [0, 4, 2]]


def test_batch_of_one_is_the_sequential_algorithm() -> None:
    """With batch=1 each DeepFool step is taken at the current v: a sample that an earlier
    update already fooled contributes nothing, so v is the projected sum of the steps of the
    samples still standing, one by one (a brute-force loop of the paper's Algorithm 1)."""
    from robaudit.ops.deepfool import deepfool
    from robaudit.ops.projections import project_lp

    x = samples([0.3, 0.5, 0.7, 1.2, 0.2], seed=5)
    model = linear_model()
    g = torch.Generator().manual_seed(7)
    fit = fit_uap_deepfool(model, x, eps=0.2, norm="l2", max_passes=1, batch=1,
                           input_range=(0.0, 1.0), generator=g)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    v = torch.zeros(1, 4, 4)
    for i in order.tolist():
        point = (x[i : i + 1] + v).clamp(0, 1)
        if model(point).argmax(dim=1).item() == 1:
            step = deepfool(model, point, norm="l2", refine=0)
            v = project_lp(v + step.perturbation[0], 0.2, "l2", batched=False)
    assert torch.allclose(fit.perturbation, v, atol=1e-7)


def test_random_noise_has_the_norm_and_the_details() -> None:
    g = torch.Generator().manual_seed(0)
    linf = random_lp_noise(sample_seeds(g, 50), (1, 4, 4), 0.3, "linf")
    assert torch.all(linf.abs() == 0.3)
    l2 = random_lp_noise(sample_seeds(g, 50), (1, 4, 4), 0.3, "l2")
    assert torch.allclose(l2.flatten(1).norm(dim=1), torch.full((50,), 0.3))


def test_normals_of_a_linear_model_span_one_direction() -> None:
    """Section 4 of the paper: the boundary normals at the samples share a low-dimensional
    subspace. For a binary linear model every normal is w/‖w‖: rank one."""
    x = samples(margins(10, 10), seed=6)
    ctx = make_context(linear_model(), x, torch.ones(20, dtype=torch.long))
    details = run_metric(UAPFoolingRate(), ctx, max_passes=2).details
    values = details["normals_singular_values"]
    assert values[0] == 1.0 and max(values[1:]) < 1e-6
    assert min(details["random_singular_values"][1:4]) > 0.1
    assert details["normals"] == 20


def test_deterministic_with_the_seed_and_shared_through_the_cache() -> None:
    x = samples(margins(10, 10), seed=8)
    y = torch.ones(20, dtype=torch.long)
    first = run_metric(UAPFoolingRate(), make_context(linear_model(), x, y), max_passes=3)
    ctx = make_context(linear_model(), x, y)
    second = run_metric(UAPFoolingRate(), ctx, max_passes=3)
    assert first.details == second.details and first.value == second.value
    key = ("uap", "model", "train", *UAPFitParams.model_validate({"max_passes": 3}).fit_key())
    assert key in ctx.cache
    again = run_metric(UAPFoolingRate(), ctx, max_passes=3)
    assert again.details["fit_history"] == second.details["fit_history"]


def test_eps_default_follows_the_norm() -> None:
    assert UAPFitParams.model_validate({}).eps == 0.1
    assert UAPFitParams.model_validate({"norm": "l2"}).eps == 0.4
    assert UAPFitParams.model_validate({"norm": "l2", "eps": 0.3}).eps == 0.3
    with pytest.raises(ValidationError):
        UAPFitParams.model_validate({"delta": 1.0})


def test_fit_uses_a_random_subset_of_a_class_sorted_reference(monkeypatch) -> None:
    """A reference split stored class by class (as an image folder is): the fit set is a
    random subset drawn with the spec's seed, so it spans the classes; the first fit_limit
    samples would all be of class 0."""
    import robaudit.ops.uap as uap  # the metric imports its fit when it runs

    classes, per_class, limit = 4, 30, 24
    ref = samples(margins(60, 60), seed=9)
    ref_labels = torch.arange(classes).repeat_interleave(per_class)  # sorted by class
    test = samples(margins(5, 5), seed=10)
    fit_sets: list[torch.Tensor] = []

    def spy(model, x, **kwargs):
        fit_sets.append(x)
        return fit_uap_deepfool(model, x, **kwargs)

    monkeypatch.setattr(uap, "fit_uap_deepfool", spy)

    def fit_indices(seed: int) -> torch.Tensor:
        ctx = make_context(linear_model(), test, torch.ones(10, dtype=torch.long),
                           reference=(ref, ref_labels), seed=seed)
        result = run_metric(UAPFoolingRate(), ctx, max_passes=1, fit_limit=limit)
        assert result.details["fit_samples"] == limit
        matches = (fit_sets[-1].flatten(1)[:, None, :] == ref.flatten(1)[None]).all(dim=2)
        assert torch.equal(matches.sum(dim=1), torch.ones(limit, dtype=torch.long))
        return matches.float().argmax(dim=1)

    first, again, other = fit_indices(0), fit_indices(0), fit_indices(1)
    assert torch.equal(first, again)  # the spec's seed fixes the subset
    assert not torch.equal(first, other)
    for index in (first, other):
        assert torch.equal(index, index.unique())  # distinct samples, in split order
        counts = torch.bincount(ref_labels[index], minlength=classes)
        assert int(counts.min()) >= 2 and int(counts.max()) <= 12  # 6 expected per class
    # a reference no larger than fit_limit is used whole, in order
    ctx = make_context(linear_model(), test, torch.ones(10, dtype=torch.long),
                       reference=(ref[:20], ref_labels[:20]))
    run_metric(UAPFoolingRate(), ctx, max_passes=1, fit_limit=limit)
    assert torch.equal(fit_sets[-1], ref[:20])


def test_held_out_value_does_not_depend_on_the_batch_size() -> None:
    """The fit uses its own mini-batches (``batch``) and the spec's seed, and the audit split
    is evaluated one ``batch_size`` batch at a time: so the held-out flags of a batch size of
    7 (3 batches of 7 and one of 2) are those of one batch of the whole split, and match the
    closed form: v = −ε·sign(w) fools the samples of class 1 with a margin below the
    threshold ε‖w‖₁ = 0.8 and no sample of class 0 (m < 0), whose clean predictions must be
    matched batch by batch."""
    ref = samples(margins(12, 8), seed=11)
    test_margins = [SMALL, -SMALL, LARGE, SMALL, 0.7, -0.7, 0.9] * 3 + [SMALL, -1.0]
    test_margins[9:14] = [-SMALL, -0.7, SMALL, 0.6, -LARGE]  # batches differ in labels
    test = samples(test_margins, seed=12)
    y = torch.ones(len(test_margins), dtype=torch.long)
    results = [
        run_metric(UAPFoolingRate(), make_context(linear_model(), test, y, batch_size=size,
                                                  reference=(ref, y[:20].clone())),
                   eps=0.05, max_passes=5, batch=4)
        for size in (7, 1000)
    ]
    small, whole = results
    expected = [float(0 < m < 0.8) for m in test_margins]
    assert small.samples.tolist() == whole.samples.tolist() == expected
    assert small.value == whole.value == pytest.approx(sum(expected) / len(expected))
    assert small.details["fit_history"] == whole.details["fit_history"]
    assert small.details["normals"] == whole.details["normals"] == len(test_margins)
