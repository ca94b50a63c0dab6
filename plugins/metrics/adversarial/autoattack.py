"""``autoattack_accuracy``: robust accuracy under the AutoAttack protocol (Croce & Hein 2020)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.ops.autoattack import AttackName, Version
from robaudit.ops.preflight import PREFLIGHT_DOC, PreflightParams
from robaudit.plugins.metrics.adversarial.attack_accuracy import accuracy_curve, eps_levels

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.ops.autoattack import Protocol

Positive = Annotated[float, Field(gt=0)]


class AutoAttackParams(PreflightParams):
    eps: Positive | Annotated[list[Positive], Field(min_length=1)] = Field(
        0.1, description="radius of the ℓp ball, in input units; a list gives the accuracy "
                         "curve, the value at the first")
    norm: Literal["linf", "l2"] = Field("linf", description="the ball's norm")
    version: Version = Field(
        "standard", description="standard: APGD-CE, APGD-T, FAB-T, Square (the paper's); "
                                "fast: no FAB-T, at most 3 targets and 1000 queries; custom: "
                                "the attacks listed in `attacks`")
    attacks: list[AttackName] | None = Field(
        None, min_length=1, description="the attacks of version custom, in order (apgd-ce, "
                                        "apgd-t, fab-t, square)")
    steps: int = Field(100, ge=1, le=10_000, description="iterations of APGD and FAB-T")
    restarts: int = Field(1, ge=1, le=100, description="random restarts of APGD-CE")
    targets: int = Field(9, ge=1, le=1000,
                         description="target classes of APGD-T and FAB-T (the top others)")
    queries: int = Field(5000, ge=1, le=1_000_000,
                         description="queries of Square (forward passes per point)")

    @model_validator(mode="after")
    def _attacks_with_custom(self) -> AutoAttackParams:
        if (self.version == "custom") != (self.attacks is not None):
            raise ValueError("attacks is the list of version custom (and only of it)")
        if self.attacks is not None and len(set(self.attacks)) != len(self.attacks):
            raise ValueError("attacks lists an attack twice")
        return self


@dataclass(frozen=True)
class AutoAttackFit:
    """Per-sample seeds ``(rows, N)`` of the random starts and Square's draws, and the
    preflight's model findings."""

    seeds: torch.Tensor
    preflight: list[dict[str, str]]


def _plan(params: AutoAttackParams) -> Protocol:
    from robaudit.ops.autoattack import protocol

    return protocol(params.version, params.attacks, steps=params.steps,
                    restarts=params.restarts, targets=params.targets, queries=params.queries)


class AutoAttackAccuracy(SampleMetric):
    """Robust accuracy under AutoAttack: APGD-CE, APGD-T, FAB-T and Square in cascade.

    Croce & Hein (ICML 2020), "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks", section 5: a point is robust only if APGD-CE
    (cross-entropy, section 3), APGD-T (the targeted DLR loss, section 4, on the top
    ``targets`` other classes), FAB-T (the targeted minimum-norm attack) and Square (a
    black-box random search of ``queries`` queries) all fail to misclassify it within the
    ℓp ball of radius ``eps``; each attack runs only on the points still robust (see
    :mod:`robaudit.ops.autoattack` for the versions: ``fast`` drops FAB-T and runs APGD-T on
    at most 3 targets and Square with at most 1000 queries). Every returned point is
    re-checked by a fresh forward pass, inside the budget and the input box, before it
    counts. value: robust accuracy (a clean misclassification is not robust). samples:
    per-sample 0/1; ci: Wilson. details: ``cascade`` (the robust accuracy after each attack,
    in order, and how many points it broke), ``points`` (per point, at the first eps: the
    attack that broke it, or robust / misclassified, and its best loss, the lowest margin
    z_y − max_{j≠y} z_j that any attack's verified point reached; NaN where none ran),
    ``margin`` (that margin's quantiles), ``curve`` for an eps list.

    Random starts and Square's draws come from per-sample seeds drawn by ``fit``, so the
    check shards (design §8); FAB-T's run is cached per work unit and shared with
    ``min_norm_distortion`` and across the eps of a curve.

    Preflight (design §6; ``preflight: error`` makes a finding the check's error):
    """

    name: ClassVar[str] = "autoattack_accuracy"
    Params: ClassVar[type[MetricParams]] = AutoAttackParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Croce & Hein 2020, section 5 (AutoAttack)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def fit(self, ctx: AuditContext, params: AutoAttackParams) -> AutoAttackFit:
        from robaudit.ops.preflight import audit_findings
        from robaudit.ops.sampling import sample_seeds

        return AutoAttackFit(
            sample_seeds(ctx.generator, _plan(params).seed_rows, len(ctx.data())),
            audit_findings(ctx))

    def fit_summary(self, fitted: AutoAttackFit) -> dict[str, Any]:
        return {"preflight": fitted.preflight}

    def per_sample(self, ctx: AuditContext, params: AutoAttackParams, unit: Unit,
                   fitted: AutoAttackFit) -> UnitResult:
        from robaudit.ops.autoattack import autoattack
        from robaudit.ops.fab import fab_unit

        x, y = ctx.unit_batch(unit)
        logits = ctx.unit_logits(unit)
        clean = (logits.argmax(dim=1) == ctx.data().y[unit.indices]).to(ctx.device)
        plan = _plan(params)
        cascade = autoattack(
            ctx.model.logits, x, y, clean, levels=eps_levels(params.eps), norm=params.norm,
            plan=plan, seeds=fitted.seeds[:, unit.indices], input_range=ctx.model.input_range,
            fab=lambda: fab_unit(ctx, unit, norm=params.norm, steps=plan.steps,
                                 targets=plan.targets))
        return UnitResult({"robust": cascade.robust.cpu(), "broken_by": cascade.broken_by.cpu(),
                           "margin": cascade.margin.cpu(), "clean": clean.cpu(),
                           "label": y.cpu()})

    def reduce(self, params: AutoAttackParams, gathered: Gathered) -> MetricResult:
        import numpy as np

        from robaudit.ops.autoattack import WHITE_BOX
        from robaudit.ops.perclass import accuracy_result
        from robaudit.ops.preflight import black_box_finding, preflight_details

        arrays = gathered.arrays
        levels = eps_levels(params.eps)
        plan = _plan(params)
        curve, figures = accuracy_curve("eps", levels, arrays["robust"],
                                f"AutoAttack {params.norm} accuracy against eps")
        broken = arrays["broken_by"][:, 0]
        total = len(broken)
        clean_accuracy = float((broken >= 0).sum()) / total
        cascade, left = [], float((broken >= 0).sum())
        for index, name in enumerate(plan.attacks):
            left -= float((broken == index + 1).sum())
            cascade.append({"attack": name, "robust_accuracy": left / total,
                            "broken": int((broken == index + 1).sum())})
        found = list(gathered.fit.get("preflight", []))
        if plan.attacks and plan.attacks[-1] == "square" and any(
                a in WHITE_BOX for a in plan.attacks[:-1]):
            white = cascade[-2]["robust_accuracy"] if len(cascade) > 1 else clean_accuracy
            found += black_box_finding(white, cascade[-1]["robust_accuracy"], "square")
        names = ["misclassified", "robust", *plan.attacks]
        margins = arrays["margin"][:, 0]
        points = [{"sample": i, "broken_by": names[int(code) + 1], "margin": float(m)}
                  for i, (code, m) in enumerate(zip(broken, margins, strict=True))]
        attacked = margins[np.isfinite(margins)]
        quantiles = ({f"q{int(q * 100)}": float(np.quantile(attacked, q))
                      for q in (0.1, 0.5, 0.9)} if attacked.size else {})
        return accuracy_result(
            np.ascontiguousarray(arrays["robust"][:, 0]), arrays["label"], figures,
            clean_accuracy=clean_accuracy, eps=levels[0], norm=params.norm,
            version=params.version, attacks=list(plan.attacks), cascade=cascade,
            margin=quantiles, points=points, **({"curve": curve} if curve else {}),
            **preflight_details(found, params.preflight))

    def floor(self, ctx: AuditContext, params: AutoAttackParams) -> Floor:
        n = len(ctx.data()) * len(eps_levels(params.eps))
        plan = _plan(params)
        return Floor(forward=2 * n, gradient=n * plan.steps * plan.restarts,
                     note="APGD-CE's steps on every point: the later attacks run on the "
                          "points still robust, which only the run tells (bench/floors.py "
                          "counts every attack of the protocol after it)")


AutoAttackAccuracy.__doc__ = f"{AutoAttackAccuracy.__doc__}\n{PREFLIGHT_DOC}\n"


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(AutoAttackAccuracy())
