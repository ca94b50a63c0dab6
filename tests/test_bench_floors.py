"""The floors of ``bench/floors.py`` and of the metrics against what the runs do: counts known
in closed form (on a linear classifier the paper's DeepFool takes exactly one step per sample)
and the model passes of a run, counted by a wrapper around the model (a floor is the least work:
never more than the run did, never negative)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from analytic_models import frozen, linear
from torch import nn

from robaudit.metric import Floor
from robaudit.ops.deepfool import deepfool
from robaudit.plugins.metrics.adversarial.autoattack import AutoAttackAccuracy
from robaudit.plugins.metrics.adversarial.deepfool_distortion import DeepFoolMinDistortion
from robaudit.testing import make_context, run_metric

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from floors import Throughput, autoattack_floor, paper_deepfool_floor, paper_deepfool_work


class Passes(torch.autograd.Function):
    """The identity, counting the rows that go through it forward and backward."""

    counts: ClassVar[dict[str, int]] = {"forward": 0, "backward": 0}

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        Passes.counts["forward"] += x.shape[0]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        Passes.counts["backward"] += grad.shape[0]
        return grad


class Counted(nn.Module):
    """``model`` behind :class:`Passes`: every forward and backward pass of a sample counted."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        Passes.counts.update(forward=0, backward=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(Passes.apply(x))


def mlp(seed: int, inputs: int = 6, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                nn.Linear(32, classes)))


def test_the_papers_deepfool_on_a_linear_model_is_one_step_of_every_class_gradient() -> None:
    """5 classes, so c = 4 class gradients a step; 13 samples in batches of 4, one step each:
    per step a forward pass with its graph and the first class gradient (gradient = 13), the 3
    further class gradients (backward = 3·13) and the check of the step (forward = 13; the
    clean pass is the first step's graph)."""
    model = linear(6, 5, seed=30)
    x = torch.randn(13, 6, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=(-1e3, 1e3), batch_size=4)
    floor = paper_deepfool_floor(ctx, ctx.split, {"norm": "l2", "overshoot": 0.02,
                                                  "candidates": 10, "max_iter": 50})
    assert (floor.forward, floor.gradient, floor.backward) == (13, 13, 3 * 13)
    assert "13 steps of 4 class gradients" in floor.note


def test_the_papers_deepfool_floor_is_the_passes_its_run_makes() -> None:
    """On a ReLU MLP, where samples take several steps: the floor's forward + gradient samples
    are the samples that went through a forward pass, its gradient + backward samples those
    that went back through it (the counts are exact, as robaudit runs the paper's steps)."""
    model = mlp(seed=32)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(33), dtype=torch.float64) * 3
    options = {"norm": "l2", "overshoot": 0.02, "candidates": 10, "max_iter": 50}
    counted = Counted(model)
    floor = paper_deepfool_work(counted, x, 40, "cpu", options, None)
    result = deepfool(model, x, refine=0, keep=10)
    assert float(result.iterations.double().mean()) > 1.2  # several steps are counted
    assert min(floor.forward, floor.gradient, floor.backward) >= 0
    # the count's own runs: one per chunk, plus one pass of one sample for the class count
    assert Passes.counts["forward"] == floor.forward + floor.gradient + 1
    assert Passes.counts["backward"] == floor.gradient + floor.backward


def test_a_further_backward_pass_is_timed_as_the_gradient_less_the_forward() -> None:
    rates = Throughput(forward=100.0, gradient=40.0)  # 0.01 s and 0.025 s a sample
    floor = Floor(forward=200, gradient=40, backward=100)
    assert abs(rates.seconds(floor) - (2.0 + 1.0 + 100 * 0.015)) < 1e-12
    # a throughput that measured the gradient faster than the forward pass (noise) charges
    # nothing for a backward pass rather than a negative time
    assert rates.seconds(Floor(backward=100)) > 0
    assert Throughput(forward=40.0, gradient=100.0).seconds(Floor(backward=100)) == 0


def test_the_deepfool_metrics_floor_is_at_most_its_run() -> None:
    model = mlp(seed=34)
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(35), dtype=torch.float64) * 3
    ctx = make_context(Counted(model), x, model(x).argmax(dim=1), input_range=(-1e3, 1e3))
    metric = DeepFoolMinDistortion()
    floor = metric.floor(ctx, metric.Params())
    Passes.counts.update(forward=0, backward=0)
    run_metric(metric, ctx)
    assert min(floor.forward, floor.gradient, floor.backward) >= 0
    assert floor.backward == 30 * 3  # 5 classes: 4 class gradients, 3 beyond the first
    assert floor.forward + floor.gradient <= Passes.counts["forward"]
    assert floor.gradient + floor.backward <= Passes.counts["backward"]


def test_autoattacks_floor_counts_every_attack_on_the_points_it_attacked() -> None:
    """The standard protocol at a small eps, where most points stay robust through all four
    attacks: the floor counted after the run is at most the passes the run made, and beyond
    APGD-CE's steps it counts APGD-T's, FAB-T's and Square's on the points still robust."""
    model = mlp(seed=36)
    x = torch.randn(24, 6, generator=torch.Generator().manual_seed(37), dtype=torch.float64)
    y = model(x).argmax(dim=1)
    ctx = make_context(Counted(model), x, y, input_range=(-50.0, 50.0))
    metric = AutoAttackAccuracy()
    budget = {"eps": 0.02, "steps": 5, "targets": 3, "queries": 20}
    params = metric.Params.model_validate(budget)
    Passes.counts.update(forward=0, backward=0)
    result = run_metric(metric, ctx, **budget)
    counted = dict(Passes.counts)
    floor = autoattack_floor(ctx, SimpleNamespace(params=params),  # type: ignore[arg-type]
                             SimpleNamespace(details=result.details), False)  # type: ignore[arg-type]
    assert [step["attack"] for step in result.details["cascade"]] == [
        "apgd-ce", "apgd-t", "fab-t", "square"]
    robust = round(result.value * 24)
    assert robust >= 12  # most points face every attack
    assert floor.forward + floor.gradient <= counted["forward"]
    assert floor.gradient <= counted["backward"]
    apgd_ce_only = 24 * params.steps * params.restarts
    assert floor.gradient >= apgd_ce_only + robust * 3 * params.steps * 2  # APGD-T and FAB-T
    assert floor.forward >= robust * params.queries  # Square's queries
    assert "apgd-ce, apgd-t, fab-t, square" in floor.note


def test_the_floor_session_counts_the_floors_after_the_default_audits_checks() -> None:
    """``bench/run_default.py``'s session on the default audit at 16 samples: DeepFool's and
    AutoAttack's floors are counted after their checks, non-negative, every attack named."""
    from floors import run_with_floors

    spec = Path(__file__).resolve().parent.parent / "specs" / "resnet.yaml"
    checks, floors, rates, _ = run_with_floors(str(spec), ["data.limit=16"], 1,
                                               "deepfool or autoattack")
    assert sorted(c.id for c in checks if c.outcome != "error") == ["autoattack", "deepfool"]
    deepfool_floor, autoattack = floors["deepfool"], floors["autoattack"]
    assert deepfool_floor is not None and autoattack is not None
    for floor in (deepfool_floor, autoattack):
        assert min(floor.forward, floor.gradient, floor.backward) >= 0
        assert rates.seconds(floor) > 0
    assert "the paper's DeepFool" in deepfool_floor.note
    assert "apgd-ce, apgd-t, square" in autoattack.note  # the fast version


def test_the_categorys_floor_counts_its_attacks_steps_and_its_fit() -> None:
    """``robustness_category`` with PGD: its floor (the metric's, before the run, and
    ``bench/floors.py``'s after it, from the passes the fit made and the samples PGD fooled)
    is at most the passes the run made, and both count the DeepFool fit's class gradients (the
    earlier floor counted none). The one after the run counts one gradient for a sample PGD
    fooled, every step for one it did not, and the fit only where no other check fitted it
    first."""
    from floors import category_floor, uap_fit_floor

    from robaudit.plugins.metrics.universal.robustness_category import RobustnessCategory

    model = mlp(seed=38)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(39), dtype=torch.float64)
    ctx = make_context(Counted(model), x, model(x).argmax(dim=1), input_range=(-50.0, 50.0))
    metric = RobustnessCategory()
    budget = {"eps": 0.2, "norm": "linf", "steps": 6, "max_passes": 2}
    params = metric.Params.model_validate(budget)
    before = metric.floor(ctx, params)
    Passes.counts.update(forward=0, backward=0)
    result = run_metric(metric, ctx, **budget)
    counted = dict(Passes.counts)
    check, ran = SimpleNamespace(params=params), SimpleNamespace(details=result.details)
    after = category_floor(ctx, check, ran, False)  # type: ignore[arg-type]
    shared = category_floor(ctx, check, ran, True)  # type: ignore[arg-type]
    fit = uap_fit_floor(ctx, params, result.details["uap_passes"])
    fooled = round(result.details["attack_fooling_rate"] * 40)
    assert 0 < fooled < 40  # both kinds of sample
    for floor in (before, after):
        assert floor.forward + floor.gradient <= counted["forward"]
        assert floor.gradient + floor.backward <= counted["backward"]
        # the fit's first pass: a DeepFool step on each of its 40 samples, 4 class gradients
        assert floor.backward >= 40 * (4 - 1)
    assert after.gradient > before.gradient  # the steps of the samples PGD did not fool
    assert shared.gradient == fooled + (40 - fooled) * params.steps
    assert (after.forward, after.gradient, after.backward) == (
        shared.forward + fit.forward, shared.gradient + fit.gradient, fit.backward)


def test_the_floor_session_leaves_out_a_fit_that_an_earlier_check_made() -> None:
    """The default audit's ``uap`` then ``category`` (tiny splits): the category reads the
    universal perturbation that ``uap`` fitted, so its floor counted after it leaves the fit
    out; run alone, the category fits it and its floor counts it."""
    from floors import run_with_floors

    spec = str(Path(__file__).resolve().parent.parent / "specs" / "resnet.yaml")
    sizes = ["data.limit=16", "data.reference_limit=24"]
    _, both, _, _ = run_with_floors(spec, sizes, 1, "uap or category")
    _, alone, _, _ = run_with_floors(spec, sizes, 1, "category")
    shared, fitted = both["category"], alone["category"]
    assert shared is not None and fitted is not None
    assert "the shared fit not counted" in shared.note and "the fit (" in fitted.note
    assert fitted.forward > shared.forward and fitted.backward > shared.backward == 0
