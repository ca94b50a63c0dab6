"""``min_norm_distortion``: the per-point minimum of several minimum-norm attacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, Histogram, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, IncludedParams, SampleMetric, Unit, UnitResult, included
from robaudit.ops.preflight import PREFLIGHT_DOC, PreflightParams

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext

MinNormAttack = Literal["deepfool", "fmn", "fab"]


class MinNormParams(IncludedParams, PreflightParams):
    norm: Literal["l2", "linf"] = Field("l2", description="the perturbation's norm")
    attacks: list[MinNormAttack] = Field(
        ["deepfool", "fmn", "fab"], min_length=1,
        description="the minimum-norm attacks whose per-point minimum is taken")
    steps: int = Field(100, ge=1, le=10_000, description="iterations of FMN and FAB")
    targets: int = Field(9, ge=1, le=1000, description="target classes of FAB (the top others)")


class MinNormDistortion(SampleMetric):
    """Mean relative minimal perturbation ρ = ‖r(x)‖/‖x‖, r the smallest of several attacks.

    The value is ``deepfool_min_distortion``'s ρ_adv (Moosavi-Dezfooli et al. 2016, section
    4.1) with r(x) the per-point smallest verified perturbation of the minimum-norm attacks in
    ``attacks``: DeepFool (the shared run of ``deepfool_min_distortion``, its defaults), FMN
    (Pintor et al. 2021, Algorithm 1, :mod:`robaudit.ops.fmn`) and FAB-T (Croce & Hein 2020,
    :mod:`robaudit.ops.fab`, the run shared with ``autoattack_accuracy``). As DeepFool alone
    overestimates the minimal distortion, the minimum is the tighter upper bound. Every point
    moves out of its predicted class, as in ``deepfool_min_distortion``; each attack's point
    is re-checked (misclassified by a fresh forward pass, inside the input box) before it
    counts. Lower = closer boundaries, so higher is better. samples: ρ per point (NaN where no
    attack found an adversarial point: left out, ``details.included``, ``min_included``);
    details: which attack gave each point's minimum (counts), how much the minimum improves
    on DeepFool (``improvement_on_deepfool``: the mean and median of 1 − ‖r_min‖/‖r_DeepFool‖
    over the points DeepFool broke), the mean and median ‖r‖. Per sample, so it shards.

    Preflight (design §6; ``preflight: error`` makes a finding the check's error):
    """

    name: ClassVar[str] = "min_norm_distortion"
    Params: ClassVar[type[MetricParams]] = MinNormParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = ("Moosavi-Dezfooli et al. 2016, section 4.1 (ρ_adv); Pintor et al. "
                             "2021 (FMN); Croce & Hein 2020 (FAB)")

    def fit(self, ctx: AuditContext, params: MinNormParams) -> list[dict[str, str]]:
        from robaudit.ops.preflight import audit_findings

        return audit_findings(ctx)

    def fit_summary(self, fitted: list[dict[str, str]]) -> dict[str, Any]:
        return {"preflight": fitted}

    def per_sample(self, ctx: AuditContext, params: MinNormParams, unit: Unit, fitted: Any
                   ) -> UnitResult:
        import torch

        from robaudit.ops.projections import lp_norm
        from robaudit.ops.verify import verified

        x = ctx.unit_batch(unit)[0]
        label = ctx.unit_logits(unit).argmax(dim=1).to(ctx.device)
        box = ctx.model.input_range
        sizes = []
        for attack in params.attacks:
            points = self._points(ctx, params, unit, attack, x, label).to(ctx.device, x.dtype)
            ok, _ = verified(ctx.model.logits, x, points, label, norm=params.norm,
                             input_range=box)
            size = lp_norm(points - x, params.norm)
            sizes.append(torch.where(ok, size, torch.full_like(size, float("inf"))))
        table = torch.stack(sizes, dim=1)
        smallest, best = table.min(dim=1)
        found = torch.isfinite(smallest)
        rho = smallest / lp_norm(x, params.norm).clamp_min(1e-12)
        nan = torch.full_like(rho, float("nan"))
        deepfool = (table[:, params.attacks.index("deepfool")] if "deepfool" in params.attacks
                    else torch.full_like(smallest, float("inf")))
        return UnitResult({
            "rho": torch.where(found, rho, nan).double().cpu(),
            "norm": torch.where(found, smallest, nan).double().cpu(),
            "best": torch.where(found, best, -1).cpu(),
            "deepfool": torch.where(torch.isfinite(deepfool), deepfool, nan).double().cpu()})

    @staticmethod
    def _points(ctx: AuditContext, params: MinNormParams, unit: Unit, attack: str,
                x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        from robaudit.ops.deepfool import deepfool_unit
        from robaudit.ops.fab import fab_unit
        from robaudit.ops.fmn import fmn

        if attack == "deepfool":
            return deepfool_unit(ctx, unit, norm=params.norm).boundary
        if attack == "fab":
            return fab_unit(ctx, unit, norm=params.norm, steps=params.steps,
                            targets=params.targets).points
        return fmn(ctx.model.logits, x, label, norm=params.norm, steps=params.steps,
                   input_range=ctx.model.input_range).points

    def reduce(self, params: MinNormParams, gathered: Gathered) -> MetricResult:
        import numpy as np

        from robaudit.ops.preflight import preflight_details

        arrays = gathered.arrays
        rho, norms, best = arrays["rho"], arrays["norm"], arrays["best"]
        found = np.isfinite(rho)
        if not found.any():
            raise MetricError(
                f"none of {', '.join(params.attacks)} changed the prediction of any of the "
                f"{len(rho)} points inside the input box: the model's prediction does not "
                "depend on its input, or its boundaries lie outside the box")
        share = included(int(found.sum()), len(rho), params.min_included)
        value = float(np.nanmean(rho))
        deepfool = arrays["deepfool"]
        both = found & np.isfinite(deepfool)
        gain = 1 - norms[both] / deepfool[both]
        improvement = ({"mean": float(gain.mean()), "median": float(np.median(gain)),
                        "points": int(both.sum())} if both.any() else {})
        return MetricResult(
            value=value, samples=rho,
            details={
                "included": share, "norm": params.norm,
                "mean_norm": float(norms[found].mean()),
                "median_norm": float(np.median(norms[found])),
                "smallest_by": {name: int((best == k).sum())
                                for k, name in enumerate(params.attacks)},
                "improvement_on_deepfool": improvement,
                **preflight_details(list(gathered.fit.get("preflight", [])), params.preflight),
            },
            figures=[Histogram(title=f"minimum-norm relative distortion ‖r‖/‖x‖ ({params.norm})",
                               values=tuple(float(v) for v in rho[found]),
                               xlabel="ρ = ‖r(x)‖ / ‖x‖", markers={"mean": value})])

    def floor(self, ctx: AuditContext, params: MinNormParams) -> Floor:
        n = len(ctx.data())
        return Floor(forward=n, gradient=n * params.steps * ("fmn" in params.attacks),
                     note="FMN's steps on every point")


MinNormDistortion.__doc__ = f"{MinNormDistortion.__doc__}\n{PREFLIGHT_DOC}\n"


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(MinNormDistortion())
