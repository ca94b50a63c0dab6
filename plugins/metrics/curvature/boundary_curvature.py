"""``boundary_curvature``: principal curvatures of the decision boundary near the data (Fawzi et al.
2018, section 3, "Curvature of the decision boundaries")."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.plugins.metrics.curvature._common import (
    CurvatureFit,
    CurvatureParams,
    check_points,
    curvature_fit,
    hessians,
    point_share,
    principal,
    require_curved,
    require_points,
    spectrum_width,
    step_label,
    unit_boundary_points,
)

if TYPE_CHECKING:
    import numpy as np

    from robaudit.context import AuditContext


class BoundaryCurvatureParams(CurvatureParams):
    k: int = Field(10, ge=1, description="principal curvatures reported at each end")
    directions: int = Field(
        64, ge=1, description="random tangent directions of the mean-curvature estimate "
                              "(Lanczos only; the dense spectrum gives the exact trace)")


class BoundaryCurvature(SampleMetric):
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
    ReLU network's curvature depends on h); ``included``, the converged points used of the
    first ``points`` (below ``min_included`` the check is error). A Hessian that is
    numerically zero at every point, whatever ``hvp`` (a linear model; a piecewise-linear
    network with ``exact``, or with ``softplus`` when its kinks are not ReLUs), is an error
    naming the method and what to try, not a curvature of 0 (design §10). Neither higher
    nor lower is better in the paper's sense; ``higher_is_better`` marks a flatter-or-convex
    boundary as better, so a ``min`` threshold bounds how concave the boundary may be near the data.

    Per sample, so it shards (design §8): its fit (:class:`CurvatureFit`, once, broadcast) is
    the random directions and the Lanczos start from the check's generator; each work unit
    takes DeepFool and the principal curvatures of its points.
    """

    name: ClassVar[str] = "boundary_curvature"
    Params: ClassVar[type[MetricParams]] = BoundaryCurvatureParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Fawzi et al. 2018, section 3 (principal curvatures at z = x + r(x))"

    def sample_count(self, ctx: AuditContext, params: BoundaryCurvatureParams) -> int:
        return min(len(ctx.data()), params.points)

    def fit(self, ctx: AuditContext, params: BoundaryCurvatureParams) -> CurvatureFit:
        import torch

        check_points(ctx, params)
        d = int(ctx.data().x[0].numel())
        gaussian = torch.randn(params.directions, d, generator=ctx.generator, dtype=torch.float64)
        start = torch.randn(d, generator=ctx.generator, dtype=torch.float64)
        return curvature_fit(ctx, params, {"gaussian": gaussian, "start": start})

    def fit_summary(self, fitted: CurvatureFit) -> dict[str, Any]:
        return fitted.summary()

    def per_sample(self, ctx: AuditContext, params: BoundaryCurvatureParams, unit: Unit,
                   fitted: CurvatureFit) -> UnitResult:
        import numpy as np

        from robaudit.ops.curvature import mean_curvature

        pts = unit_boundary_points(ctx, params, unit)
        d, rows = fitted.dimension, pts.index.numpy()
        width = min(params.k, spectrum_width(params, d, params.k))
        arrays: dict[str, np.ndarray] = {"converged": np.zeros(len(unit), dtype=bool)}
        arrays["converged"][rows] = True
        for i, h in enumerate(fitted.steps):
            mean = np.full(len(unit), np.nan)
            low, high = np.full((len(unit), width), np.nan), np.full((len(unit), width), np.nan)
            for op in hessians(ctx, params, pts.z, pts.own, pts.target, h):
                values, _ = principal(op, params, params.k, fitted.draws["start"])
                if d <= params.dense_max:
                    mean[rows] = values.double().mean(1).cpu().numpy()
                else:
                    mean[rows] = mean_curvature(op, fitted.draws["gaussian"].to(op.gradient)
                                                ).double().cpu().numpy()
                low[rows] = values[:, :width].double().cpu().numpy()
                high[rows] = values[:, -width:].double().cpu().numpy()
            arrays.update({f"mean_{i}": mean, f"low_{i}": low, f"high_{i}": high})
        return UnitResult(arrays)

    def reduce(self, params: BoundaryCurvatureParams, gathered: Gathered) -> MetricResult:
        import torch

        fit, arrays = gathered.fit, gathered.arrays
        converged = arrays["converged"].astype(bool)
        require_points(fit, params, converged)
        points = int(converged.sum())
        share = point_share(params, points, len(converged))
        d = fit["dimension"]
        per_h: list[dict[str, Any]] = []
        first: dict[str, Any] = {}
        for i, h in enumerate(fit["steps"]):
            mean = torch.from_numpy(arrays[f"mean_{i}"][converged])
            lows = torch.from_numpy(arrays[f"low_{i}"][converged])
            highs = torch.from_numpy(arrays[f"high_{i}"][converged])
            require_curved(params, torch.cat([lows, highs]), fit["floors"][i], h, points)
            row = {
                "h": step_label(params, h),
                "value": float(mean.mean()),
                "negative_fraction": float((mean < 0).double().mean()),
                "mean_largest": float(highs[:, -1].mean()),
                "mean_smallest": float(lows[:, 0].mean()),
            }
            per_h.append(row)
            if not first:
                first = {"low": lows.mean(0), "high": highs.mean(0)}
        low = [round(float(v), 6) for v in first["low"]]
        high = [round(float(v), 6) for v in first["high"]]
        details: dict[str, Any] = {
            "points": points,
            "excluded": len(converged) - points,
            "included": share,
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
            details.update(fit["accuracy"])
        ranks = tuple(float(i) for i in range(1, len(low) + len(high) + 1))
        return MetricResult(
            value=per_h[0]["value"],
            samples=arrays["mean_0"],
            details=details,
            figures=[LinePlot(
                title=f"Averaged sorted principal curvatures ({points} points, "
                      f"h {details['h']})",
                x=ranks, series={"mean principal curvature": tuple(low + high)},
                xlabel=f"rank ({len(low)} smallest, then {len(high)} largest)",
                ylabel="curvature")],
        )

    def floor(self, ctx: AuditContext, params: BoundaryCurvatureParams) -> Floor:
        n = min(len(ctx.data()), params.points)
        d = int(ctx.data().x[0].numel())
        per_point = d - 1 if d <= params.dense_max else min(
            d - 1, params.iterations or 2 * params.k + 40) + params.directions
        per_hvp = 2 if params.hvp == "finite_difference" else 3
        steps = len(params.steps(d, ctx.model.input_range))
        return Floor(gradient=n * (1 + per_point * per_hvp * steps),
                     note="HVPs × (2 gradients for finite differences, ≈3 for double "
                          "backprop) per point, plus ∇F; the DeepFool it reuses is cached")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(BoundaryCurvature())
