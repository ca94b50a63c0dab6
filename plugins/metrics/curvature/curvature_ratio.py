"""``curvature_ratio``: shared directions of high curvature (Fawzi et al. 2018, section 3,
"are directions of high curvature shared across data points?")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.context import AuditContext
from robaudit.ops.curvature import quadratic_forms
from robaudit.plugins.metrics.curvature._common import (
    SubspaceParams,
    boundary_points,
    check_subspace,
    hessians,
    require_nonzero,
    shared_subspace,
    softplus_accuracy,
    step_label,
)


class CurvatureRatioParams(SubspaceParams):
    samples: int = Field(
        64, ge=1, description="random unit directions v of the denominator E_v |vᵀPHPv|")


def ratios(ctx: AuditContext, params: CurvatureRatioParams, h: float, basis: torch.Tensor,
           gaussian: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """ρ_i(z) = |u_iᵀ P H P u_i| / mean_v |vᵀ P H P v| at the audit boundary points: (n, m),
    with ``gaussian`` (T, d) made unit (uniform on the sphere) and common to all points."""
    pts = boundary_points(ctx, params)
    units = gaussian / gaussian.norm(dim=1, keepdim=True)
    rows = []
    for op in hessians(ctx, params, pts.z, pts.own, pts.target, h):
        shared = quadratic_forms(op, basis.T.to(op.gradient)).abs()
        random = quadratic_forms(op, units.to(op.gradient)).abs().mean(1, keepdim=True)
        require_nonzero(params, torch.cat([shared, random], dim=1))
        rows.append((shared / random.clamp_min(1e-30)).double().cpu())
    return torch.cat(rows), pts


class CurvatureRatio(Metric):
    """Largest mean ratio ρ_i of the boundary curvature along a shared direction to a random one.

    Fawzi, Moosavi-Dezfooli, Frossard & Soatto (CVPR 2018), section 3: the top ``directions``
    principal directions (largest |κ|; the paper says "largest") at the first ``fit``
    converged reference boundary points are stacked into M; its top ``subspace`` left singular
    vectors are u_i. At each audit boundary point, ρ_i(z) = |u_iᵀ P H P u_i| / E_v |vᵀ P H P v|
    with v uniform on the unit sphere (``samples`` directions common to every point).

    value: max_i of the mean over points of ρ_i (lower is better: a boundary whose curvature
    concentrates in a few directions shared by the data). A boundary curved by λ on an
    m-dimensional subspace and flat elsewhere gives d/m; a uniformly curved one 1.
    samples: ρ at the maximising i per point (NaN where DeepFool did not converge).
    details: the ρ_i curve (the paper's figure), the singular values of M, with a list of
    ``h`` the value at each h. The fit is cached per run and shared with
    ``curvature_subspace_vulnerability`` (Lanczos start from the spec's seed).
    """

    name: ClassVar[str] = "curvature_ratio"
    Params: ClassVar[type[MetricParams]] = CurvatureRatioParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Fawzi et al. 2018, section 3 (shared directions, ρ_i(z))"

    def compute(self, ctx: AuditContext, params: CurvatureRatioParams) -> MetricResult:
        d = int(ctx.data().x[0].numel())
        gaussian = torch.randn(params.samples, d, generator=ctx.generator, dtype=torch.float64)
        per_h: list[dict[str, Any]] = []
        first: dict[str, Any] = {}
        for h in params.steps(d, ctx.model.input_range):
            fit = shared_subspace(ctx, params, h)
            rho, pts = ratios(ctx, params, h, fit.basis, gaussian)
            curve = rho.mean(0)
            best = int(curve.argmax())
            per_h.append({"h": step_label(params, h), "value": float(curve[best]),
                          "argmax": best + 1, "rho_last": float(curve[-1])})
            if not first:
                first = {"rho": rho, "curve": curve, "best": best, "pts": pts, "fit": fit}
        pts, fit, curve = first["pts"], first["fit"], first["curve"]
        samples = np.full(pts.considered, np.nan)
        samples[pts.index.numpy()] = first["rho"][:, first["best"]].numpy()
        details: dict[str, Any] = {
            "points": len(pts),
            "excluded": pts.excluded,
            "fit_points": fit.fit,
            "fit_excluded": fit.excluded,
            "hvp": params.hvp,
            "h": per_h[0]["h"],
            "dimension": d,
            "rho": [round(float(v), 6) for v in curve],
            "singular_values": [round(float(v), 6) for v in fit.singular],
        }
        if len(per_h) > 1:
            details["by_h"] = per_h
        if params.hvp == "softplus":
            details.update(softplus_accuracy(ctx, params.beta))
        return MetricResult(
            value=per_h[0]["value"],
            samples=samples,
            details=details,
            figures=[LinePlot(
                title=f"Curvature along shared directions vs random ρ_i (h {details['h']})",
                x=tuple(float(i) for i in range(1, len(curve) + 1)),
                series={"mean ρ_i": tuple(float(v) for v in curve)},
                xlabel="shared direction i", ylabel="ρ_i")],
        )

    def check_data(self, ctx: AuditContext, params: CurvatureRatioParams) -> None:
        check_subspace(ctx, params)

    def floor(self, ctx: AuditContext, params: CurvatureRatioParams) -> Floor:
        n = min(len(ctx.data()), params.points)
        fit = min(len(ctx.data(ctx.reference)), params.fit)
        d = int(ctx.data().x[0].numel())
        per_fit = d - 1 if d <= params.dense_max else min(d - 1, 2 * params.directions + 40)
        per_hvp = 2 if params.hvp == "finite_difference" else 3
        hvps = fit * per_fit + n * (params.subspace + params.samples)
        steps = len(params.steps(d, ctx.model.input_range))
        deepfool = fit * (params.candidates - 1)
        return Floor(forward=fit, gradient=steps * (hvps * per_hvp + n + fit) + deepfool,
                     note="HVPs of the fit and of ρ_i at the audit points, one DeepFool step "
                          "at the fit points; the audit points' DeepFool is shared")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(CurvatureRatio())
