"""Floors: the least time a check can take on this machine, from its :class:`robaudit.Floor`
(the model passes it needs) and the model's batched throughput measured in the same run.

A check's ratio = its time / its floor. The floor counts model work only, so a ratio near 1
means the metric spends its time in the model, not in its own bookkeeping.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robaudit.context import AuditContext
from robaudit.metric import Floor, work_units
from robaudit.model import ModelUnderAudit
from robaudit.pluginmanager import load_plugins
from robaudit.results import CheckResult
from robaudit.session import Session
from robaudit.spec import Check


@dataclass(frozen=True)
class Throughput:
    """Samples per second at the audit batch size: forward only, and forward + input grad."""

    forward: float
    gradient: float

    def seconds(self, floor: Floor) -> float:
        """The time of ``floor``'s work at these rates; a further backward pass (``backward``)
        takes the forward+gradient time less the forward time (0 if that is negative)."""
        backward = max(1 / self.gradient - 1 / self.forward, 0.0)
        return (floor.forward / self.forward + floor.gradient / self.gradient
                + floor.backward * backward)


def _rate(step: Callable[[], None], samples: int, budget: float,
          clock: Callable[[], float]) -> float:
    step()  # warm-up
    done, start = 0, clock()
    while True:
        step()
        done += samples
        elapsed = clock() - start
        if elapsed >= budget:
            return done / elapsed


def measure_throughput(model: ModelUnderAudit, x: torch.Tensor, budget: float = 1.0,
                       clock: Callable[[], float] = time.perf_counter) -> Throughput:
    """Forward and forward+input-gradient rates of ``model`` on the batch ``x``, per second of
    ``clock`` (wall time by default; ``time.process_time`` gives rates per CPU second, which a
    loaded machine does not lower)."""

    def forward() -> None:
        with torch.no_grad():
            model.logits(x)

    def gradient() -> None:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model.logits(inputs).sum(), inputs)

    return Throughput(_rate(forward, len(x), budget, clock),
                      _rate(gradient, len(x), budget, clock))


def paper_deepfool_floor(ctx: AuditContext, split: str, options: dict[str, Any]) -> Floor:
    """The model work of the paper's DeepFool (Moosavi-Dezfooli et al. 2016, Algorithm 2) on
    the split, counted by running it (:func:`paper_deepfool_work`) in ``ctx.batch_size``
    chunks (during the session, whose model is in use: not entered again)."""
    mua, data = ctx.model, ctx.data(split)
    return paper_deepfool_work(mua.logits, data.x, ctx.batch_size, ctx.device, options,
                               mua.input_range)


def paper_deepfool_work(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        batch: int, device: torch.device | str, options: dict[str, Any],
                        input_range: tuple[float, float] | None) -> Floor:
    """The paper's DeepFool on ``x``, run by :func:`robaudit.ops.deepfool.deepfool` with
    ``refine=0, keep=candidates`` in chunks of ``batch``, S the sum over the samples of the
    steps each takes and N₁ the samples that take one. Per step it needs one forward pass that
    keeps the graph and the input gradients of the c = candidates − 1 class differences through
    it (a gradient sample and c − 1 backward samples), and the forward pass that tells whether
    the step crossed; a sample's first step takes its graph from the clean pass, which tells
    the class k, so only the N − N₁ samples that take no step need a clean pass of their own:
    forward = S + N − N₁, gradient = S, backward = (c − 1)·S. It leaves out the work of
    robaudit's final step (line search and projection): the ratio to it is what robaudit's
    DeepFool costs over the paper's at batched throughput."""
    from robaudit.ops.deepfool import deepfool

    steps, stepped, classes = 0, 0, 2
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch].to(device)
        result = deepfool(logits_fn, chunk, refine=0, keep=options["candidates"],
                          input_range=input_range, **options)
        with torch.no_grad():
            classes = int(logits_fn(chunk[:1]).shape[1])
        steps += int(result.iterations.sum())
        stepped += int((result.iterations > 0).sum())
    c = min(options["candidates"], classes) - 1
    return Floor(forward=steps + len(x) - stepped, gradient=steps, backward=(c - 1) * steps,
                 note=f"the paper's DeepFool: {steps} steps of {c} class gradients")


def deepfool_floor(ctx: AuditContext, check: Check, result: CheckResult, shared: bool
                   ) -> Floor:
    """``deepfool_min_distortion``: :func:`paper_deepfool_floor` on the audit split."""
    params = check.params
    return paper_deepfool_floor(ctx, ctx.split, {
        "norm": params.norm, "overshoot": params.overshoot, "candidates": params.candidates,
        "max_iter": params.max_iter})


def _plus(*floors: Floor, note: str = "") -> Floor:
    """The sum of ``floors``' counts, with ``note``."""
    return Floor(forward=sum(f.forward for f in floors), gradient=sum(f.gradient for f in floors),
                 backward=sum(f.backward for f in floors), note=note)


def uap_fit_floor(ctx: AuditContext, params: Any, passes: int) -> Floor:
    """The universal perturbation's fit on the reference split, ``passes`` passes made. With
    the DeepFool fit (Moosavi-Dezfooli et al. 2017, Algorithm 1): the clean predictions of the
    fit samples; per pass and fit sample, the forward pass that finds whether v fools it, one
    linearised DeepFool step (the least a standing sample needs: a forward pass with the graph
    and the class gradients through it, c = candidates − 1 on the first pass and the
    ``KEEP_CANDIDATES`` = 3 of the class it crossed into on later ones, counted as in
    :func:`paper_deepfool_work`, and the forward pass that checks the step) and the pass's
    fooling-rate forward pass. It counts every fit sample as standing (the fit fooling rates of
    the digits ResNets stay below 0.15) and one step each: a lower bound on Algorithm 1's work
    for the passes made. With the SGD fit (Shafahi et al. 2020), per pass and fit sample one
    gradient and the fooling-rate forward pass."""
    from robaudit.ops.deepfool import KEEP_CANDIDATES

    fit = min(params.fit_limit, len(ctx.data(ctx.reference)))
    c = min(params.candidates, ctx.model.num_classes(ctx.data().x)) - 1
    later = min(c, KEEP_CANDIDATES)
    if params.method == "deepfool":
        return Floor(forward=fit + 3 * passes * fit, gradient=passes * fit,
                     backward=fit * (c - 1) + (passes - 1) * fit * (later - 1))
    return Floor(forward=fit + passes * fit, gradient=passes * fit)


def uap_floor(ctx: AuditContext, check: Check, result: CheckResult, shared: bool) -> Floor:
    """``uap_fooling_rate``: its fit (:func:`uap_fit_floor`, the passes it made), the held-out
    and noise forward passes of the audit split, and the paper's DeepFool on it for the
    boundary normals (:func:`paper_deepfool_floor`) unless another check already ran it
    (``shared``: the run was in ``ctx.cache`` before the check)."""
    params = check.params
    passes = int(result.details.get("passes", params.max_passes))
    floors = [uap_fit_floor(ctx, params, passes), Floor(forward=2 * len(ctx.data()))]
    if not shared:
        floors.append(paper_deepfool_floor(ctx, ctx.split, {
            "norm": "l2", "overshoot": params.overshoot, "candidates": params.candidates,
            "max_iter": params.max_iter}))
    return _plus(*floors, note=f"{passes} passes of one DeepFool step per fit sample, the "
                               "evaluation")


def category_floor(ctx: AuditContext, check: Check, result: CheckResult, shared: bool
                   ) -> Floor:
    """``robustness_category``: the universal perturbation's fit (:func:`uap_fit_floor`, the
    passes it made) unless it was in ``ctx.cache`` before the check (``shared``: in a whole
    audit ``uap_fooling_rate`` fits it first), the noise and universal forward passes of the
    audit split, and the per-sample attack. PGD stops on a sample as soon as an iterate fools
    it, so the least it needs is one gradient for a sample it fooled and its ``steps``
    gradients for one it did not (from ``details.attack_fooling_rate``), and the forward pass
    of the final prediction; DeepFool, the paper's steps in the check's norm
    (:func:`paper_deepfool_floor`), counted even where another check ran that DeepFool
    first."""
    params = check.params
    passes = int(result.details.get("uap_passes", params.max_passes))
    audit = len(ctx.data())
    floors = [Floor(forward=2 * audit)]
    if not shared:
        floors.append(uap_fit_floor(ctx, params, passes))
    if params.attack == "pgd":
        fooled = round(float(result.details["attack_fooling_rate"]) * audit)
        floors.append(Floor(forward=audit, gradient=fooled + (audit - fooled) * params.steps))
    else:
        floors.append(paper_deepfool_floor(ctx, ctx.split, {
            "norm": params.norm, "overshoot": params.overshoot,
            "candidates": params.candidates, "max_iter": params.max_iter}))
    fit = "the shared fit not counted" if shared else f"the fit ({passes} passes)"
    return _plus(*floors, note=f"{fit}, the noise and UAP evaluations, the per-sample "
                               f"{params.attack}")


def autoattack_floor(ctx: AuditContext, check: Check, result: CheckResult, shared: bool
                     ) -> Floor:
    """``autoattack_accuracy`` (Croce & Hein 2020, section 5): every attack of the protocol the
    params select (:func:`robaudit.ops.autoattack.protocol`: standard APGD-CE, APGD-T, FAB-T,
    Square; fast without FAB-T, at most 3 targets and 1000 queries), on the points it attacked,
    from the check's cascade (``details.cascade``: in order, how many points each attack broke;
    the clean-correct points it did not break go on to the next). Per point an attack ran on and
    left robust: APGD-CE ``restarts`` runs of ``steps`` gradients, APGD-T ``steps`` gradients
    towards each of its T = min(targets, classes − 1) targets, Square ``queries`` forward
    passes; a point it broke counts one gradient (one query), the least that took. FAB-T, a
    minimum-norm attack, takes its ``steps`` gradients per target on every point it attacks,
    broken or not. Each run of an attack ends in a forward pass that verifies its
    points, and every point has two clean passes. With a list of eps the cascade is that of the
    first: one eps's work is counted, a lower bound for the curve."""
    from robaudit.ops.autoattack import protocol

    params = check.params
    plan = protocol(params.version, params.attacks, steps=params.steps,
                    restarts=params.restarts, targets=params.targets, queries=params.queries)
    total = len(ctx.data())
    targets = min(plan.targets, ctx.model.num_classes(ctx.data().x) - 1)
    alive = round(float(result.details["clean_accuracy"]) * total)
    forward, gradient = 2 * total, 0
    for step in result.details["cascade"]:
        name, broken = step["attack"], int(step["broken"])
        left = alive - broken
        runs = {"apgd-ce": plan.restarts, "apgd-t": targets}.get(name, 1)
        forward += alive + left * (runs - 1)  # the verifying passes of the runs
        if name == "square":
            forward += left * plan.queries + broken
        elif name == "fab-t":  # a minimum-norm attack: every step on every point it runs on
            gradient += alive * targets * plan.steps
        else:
            gradient += left * runs * plan.steps + broken
        alive = left
    attacks = ", ".join(plan.attacks)
    return Floor(forward=forward, gradient=gradient,
                 note=f"{attacks} on the points each attacked ({plan.steps} steps, {targets} "
                      f"targets, {plan.queries} queries)")


#: Floors counted after the check from what it did (the metric's own ``floor()`` counts
#: before it runs): metric name -> function of the run's context, the check, its result and
#: whether the work it shares was cached before it (the audit split's DeepFool run with the
#: check's options; for ``robustness_category`` the universal perturbation's fit).
AFTER_THE_RUN: dict[str, Callable[[AuditContext, Check, CheckResult, bool], Floor]] = {
    "deepfool_min_distortion": deepfool_floor,
    "uap_fooling_rate": uap_floor,
    "robustness_category": category_floor,
    "autoattack_accuracy": autoattack_floor,
}


class FloorSession(Session):
    """A session that also records each check's floor and the run's base context."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.floors: dict[str, Floor | None] = {}
        #: each check's CPU seconds (``time.process_time``), its floor's counting left out
        self.cpu_s: dict[str, float] = {}
        self.context: AuditContext | None = None

    def run_check(self, check: Check, ctx: AuditContext, *args: Any, **kwargs: Any
                  ) -> CheckResult:
        """Record the floor, then run the check as :class:`Session` does (whatever else it
        passes along, so that a change of the runner's arguments cannot break the benches);
        for the metrics of :data:`AFTER_THE_RUN` the floor is counted after the check."""
        self.context = ctx
        self.floors[check.id] = check.metric.floor(ctx, check.params)
        after = AFTER_THE_RUN.get(check.metric.name)
        cached = SHARED_WORK.get(check.metric.name, _deepfool_cached)
        shared = after is not None and cached(ctx, check)
        cpu = time.process_time()
        result = super().run_check(check, ctx, *args, **kwargs)
        self.cpu_s[check.id] = time.process_time() - cpu
        if after is not None and result.outcome != "error":
            self.floors[check.id] = after(ctx, check, result, shared)
        return result


def _uap_fit_cached(ctx: AuditContext, check: Check) -> bool:
    """Whether the universal perturbation that the check fits is in ``ctx.cache`` (the key of
    :func:`robaudit.plugins.metrics.universal.uap.fitted_uap`)."""
    return ("uap", ctx.model.name, ctx.reference, *check.params.fit_key()) in ctx.cache


def _deepfool_cached(ctx: AuditContext, check: Check) -> bool:
    """Whether the audit split's ℓ2 DeepFool run with the check's options is in ``ctx.cache``
    (False for a check without DeepFool options, e.g. ``autoattack_accuracy``)."""
    params = check.params
    if not hasattr(params, "overshoot"):
        return False
    key = ("deepfool", ctx.model.name, ctx.split, "l2", params.overshoot, params.candidates,
           params.max_iter)
    return all((*key, unit.start, unit.stop) in ctx.cache
               for unit in work_units(len(ctx.data()), ctx.batch_size))


#: The work a check of :data:`AFTER_THE_RUN` may find done by an earlier check, where it is not
#: the audit split's ℓ2 DeepFool run (:func:`_deepfool_cached`): metric name -> whether it is
#: in ``ctx.cache`` before the check.
SHARED_WORK: dict[str, Callable[[AuditContext, Check], bool]] = {
    "robustness_category": _uap_fit_cached,
}


def session_options(overrides: list[str] | None = None, threads: int | None = None,
                    keyword: str | None = None) -> argparse.Namespace:
    """The options of a quiet ``robaudit run`` with ``--set``, ``--threads`` and ``-k``."""
    return argparse.Namespace(quiet=1, verbose=0, overrides=overrides or [], threads=threads,
                              keyword=keyword)


def run_with_floors(spec: str, overrides: list[str] | None = None, threads: int | None = None,
                    keyword: str | None = None
                    ) -> tuple[list[CheckResult], dict[str, Floor | None], Throughput, float]:
    """Run a spec quietly; return its results, floors, the model throughput and wall time."""
    options = session_options(overrides, threads, keyword)
    session = FloorSession(load_plugins(), options)
    start = time.perf_counter()
    [result], _ = session.run([spec])
    wall = time.perf_counter() - start
    assert session.context is not None
    ctx = session.context
    batch = next(ctx.batches())[0]
    with ctx.model:
        rates = measure_throughput(ctx.model, batch)
    return result.checks, session.floors, rates, wall
