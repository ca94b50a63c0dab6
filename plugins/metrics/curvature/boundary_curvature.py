"""``boundary_curvature``: principal curvatures of the decision boundary near the data (Fawzi et al.
2018, section 3, "Curvature of the decision boundaries")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.context import AuditContext
from robaudit.ops.curvature import mean_curvature
from robaudit.plugins.metrics.curvature._common import (
    CurvatureParams,
    boundary_points,
    hessians,
    principal,
    require_nonzero,
    softplus_accuracy,
    step_label,
)


class BoundaryCurvatureParams(CurvatureParams):
    k: int = Field(10, ge=1, description="principal curvatures reported at each end")
    directions: int = Field(
        64, ge=1, description="random tangent directions of the mean-curvature estimate "
                              "(Lanczos only; the dense spectrum gives the exact trace)")


class BoundaryCurvature(Metric):
    """Mean curvature of the decision boundary at the DeepFool boundary points z = x + r(x).

    Fawzi, Moosavi-Dezfooli, Frossard & Soatto (CVPR 2018), section 3: at z, F = f_j − f_k̂
    (k̂ the clean prediction, j the class z crossed into), G = P H_F P / ‖∇F‖ with
    P = I − n nᵀ; the principal curvatures are the d − 1 tangent eigenvalues of G. Oriented
    from the own class: a convex own-class region is positive (a ball of radius ρ: +1/ρ), and
    the paper's finding is a negative average near natural images.

    value: the mean over points of the mean curvature trace(G)/(d − 1) (exact from the dense
    spectrum when d ≤ ``dense_max``; else estimated from ``directions`` random unit tangent
    directions, common to all points, drawn from the check's generator). samples: the
    per-point mean curvature (NaN where DeepFool did not converge: those points are left out
    and counted). details: the averaged sorted spectrum of the ``k`` smallest and largest
    principal curvatures (the paper's figure), the fraction of points with negative mean
    curvature, and with a list of ``h`` the value at each h (the first h gives ``value``; a
    ReLU network's curvature depends on h). Neither higher nor lower is better in the
    paper's sense; ``higher_is_better`` marks a flatter-or-convex boundary as better, so a
    ``min`` threshold bounds how concave the boundary may be near the data.
    """

    name: ClassVar[str] = "boundary_curvature"
    Params: ClassVar[type[MetricParams]] = BoundaryCurvatureParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Fawzi et al. 2018, section 3 (principal curvatures at z = x + r(x))"

    def compute(self, ctx: AuditContext, params: BoundaryCurvatureParams) -> MetricResult:
        pts = boundary_points(ctx, params)
        d = pts.dim
        gaussian = torch.randn(params.directions, d, generator=ctx.generator, dtype=torch.float64)
        start = torch.randn(d, generator=ctx.generator, dtype=torch.float64)
        per_h: list[dict[str, Any]] = []
        first: dict[str, Any] = {}
        for h in params.steps(d, ctx.model.input_range):
            means, lows, highs = [], [], []
            for op in hessians(ctx, params, pts.z, pts.own, pts.target, h):
                values, _ = principal(op, params, params.k, start)
                if d <= params.dense_max:
                    means.append(values.double().mean(1).cpu())
                else:
                    means.append(mean_curvature(op, gaussian.to(op.gradient)).double().cpu())
                kk = min(params.k, values.shape[1])
                lows.append(values[:, :kk].double().cpu())
                highs.append(values[:, -kk:].double().cpu())
            mean = torch.cat(means)
            require_nonzero(params, torch.cat([*lows, *highs]))
            row = {
                "h": step_label(params, h),
                "value": float(mean.mean()),
                "negative_fraction": float((mean < 0).double().mean()),
                "mean_largest": float(torch.cat(highs)[:, -1].mean()),
                "mean_smallest": float(torch.cat(lows)[:, 0].mean()),
            }
            per_h.append(row)
            if not first:
                first = {"mean": mean, "low": torch.cat(lows).mean(0),
                         "high": torch.cat(highs).mean(0)}
        samples = np.full(pts.considered, np.nan)
        samples[pts.index.numpy()] = first["mean"].numpy()
        low = [round(float(v), 6) for v in first["low"]]
        high = [round(float(v), 6) for v in first["high"]]
        details: dict[str, Any] = {
            "points": len(pts),
            "excluded": pts.excluded,
            "hvp": params.hvp,
            "h": per_h[0]["h"],
            "dimension": d,
            "spectrum": "dense" if d <= params.dense_max else "lanczos",
            "negative_fraction": per_h[0]["negative_fraction"],
            "smallest_curvatures": low,
            "largest_curvatures": high,
        }
        if len(per_h) > 1:
            details["by_h"] = per_h
        if params.hvp == "softplus":
            details.update(softplus_accuracy(ctx, params.beta))
        ranks = tuple(float(i) for i in range(1, len(low) + len(high) + 1))
        return MetricResult(
            value=per_h[0]["value"],
            samples=samples,
            details=details,
            figures=[LinePlot(
                title=f"Averaged sorted principal curvatures ({len(pts)} points, "
                      f"h {details['h']})",
                x=ranks, series={"mean principal curvature": tuple(low + high)},
                xlabel=f"rank ({len(low)} smallest, then {len(high)} largest)",
                ylabel="curvature")],
        )

    def floor(self, ctx: AuditContext, params: BoundaryCurvatureParams) -> Floor:
        n = min(len(ctx.data()), params.points)
        d = int(ctx.data().x[0].numel())
        per_point = d - 1 if d <= params.dense_max else min(d - 1, 2 * params.k + 40) + (
            params.directions)
        per_hvp = 2 if params.hvp == "finite_difference" else 3
        steps = len(params.steps(d, ctx.model.input_range))
        return Floor(gradient=n * (1 + per_point * per_hvp * steps),
                     note="HVPs × (2 gradients for finite differences, ≈3 for double "
                          "backprop) per point, plus ∇F; the DeepFool it reuses is cached")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(BoundaryCurvature())
