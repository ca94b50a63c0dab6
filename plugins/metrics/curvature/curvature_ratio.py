"""``curvature_ratio``: shared directions of high curvature (Fawzi et al. 2018, section 3,
"are directions of high curvature shared across data points?")."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.plugins.metrics.curvature._common import (
    BoundaryPoints,
    CurvatureFit,
    SubspaceParams,
    check_points,
    check_subspace,
    curvature_fit,
    hessians,
    point_share,
    require_curved,
    require_points,
    shared_subspace,
    step_label,
    unit_boundary_points,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from robaudit.context import AuditContext


class CurvatureRatioParams(SubspaceParams):
    samples: int = Field(
        64, ge=1, description="random unit directions v of the denominator E_v |vᵀPHPv|")


def ratios(ctx: AuditContext, params: CurvatureRatioParams, h: float, basis: torch.Tensor,
           gaussian: torch.Tensor, pts: BoundaryPoints, floor: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """ρ_i(z) = |u_iᵀ P H P u_i| / mean_v |vᵀ P H P v| at the boundary points ``pts``: (n, m),
    with ``gaussian`` (T, d) made unit (uniform on the sphere) and common to all points; NaN
    at a point whose denominator is at most ``floor`` (flat along random directions: 0/0 or a
    ratio of rounding noise). Also the largest curvature magnitude seen at each point (n,)."""
    import torch

    from robaudit.ops.curvature import quadratic_forms

    units = gaussian / gaussian.norm(dim=1, keepdim=True)
    rows = [torch.zeros(0, basis.shape[1], dtype=torch.float64)]
    sizes = [torch.zeros(0, dtype=torch.float64)]
    for op in hessians(ctx, params, pts.z, pts.own, pts.target, h):
        shared = quadratic_forms(op, basis.T.to(op.gradient)).abs().double().cpu()
        random = quadratic_forms(op, units.to(op.gradient)).abs().mean(1, keepdim=True)
        random = random.double().cpu()
        rho = shared / random.clamp_min(1e-300)
        rows.append(torch.where(random > floor, rho, float("nan")))
        sizes.append(torch.cat([shared, random], dim=1).amax(dim=1))
    return torch.cat(rows), torch.cat(sizes)


class CurvatureRatio(SampleMetric):
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
    ``h`` the value at each h, ``included`` (the points used of the first ``points``: a point
    whose DeepFool did not converge, or whose curvature along random directions is
    numerically zero so that ρ is 0/0, is left out; below ``min_included`` the check is
    error). A Hessian numerically zero at every point, whatever ``hvp`` (e.g. a linear
    model), is an error, not the best score 0 (design §10). The fit is cached per run and
    shared with ``curvature_subspace_vulnerability`` (Lanczos start from the spec's seed).

    Per sample, so it shards (design §8): its fit (:class:`CurvatureFit`, once, broadcast) is
    the shared subspace at each h on the reference split and the random directions v from the
    check's generator; each work unit takes DeepFool and ρ_i at its points.
    """

    name: ClassVar[str] = "curvature_ratio"
    Params: ClassVar[type[MetricParams]] = CurvatureRatioParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Fawzi et al. 2018, section 3 (shared directions, ρ_i(z))"

    def sample_count(self, ctx: AuditContext, params: CurvatureRatioParams) -> int:
        return min(len(ctx.data()), params.points)

    def affinity(self, params: CurvatureRatioParams) -> Hashable:
        """The shared curvature subspace, cached and shared with
        ``curvature_subspace_vulnerability``: one process fits it for both (design §8)."""
        return ("curvature_fit", *params.fit_key())

    def fit(self, ctx: AuditContext, params: CurvatureRatioParams) -> CurvatureFit:
        import torch

        check_points(ctx, params)
        d = int(ctx.data().x[0].numel())
        gaussian = torch.randn(params.samples, d, generator=ctx.generator, dtype=torch.float64)
        steps = params.steps(d, ctx.model.input_range)
        subspaces = tuple(shared_subspace(ctx, params, h) for h in steps)
        return curvature_fit(ctx, params, {"gaussian": gaussian}, subspaces)

    def fit_summary(self, fitted: CurvatureFit) -> dict[str, Any]:
        fit = fitted.subspaces[0]
        return {**fitted.summary(), "fit_points": fit.fit, "fit_excluded": fit.excluded,
                "singular_values": [round(float(v), 6) for v in fit.singular]}

    def per_sample(self, ctx: AuditContext, params: CurvatureRatioParams, unit: Unit,
                   fitted: CurvatureFit) -> UnitResult:
        import numpy as np
        pts = unit_boundary_points(ctx, params, unit)
        rows = pts.index.numpy()
        arrays: dict[str, np.ndarray] = {"converged": np.zeros(len(unit), dtype=bool)}
        arrays["converged"][rows] = True
        for i, (h, fit) in enumerate(zip(fitted.steps, fitted.subspaces, strict=True)):
            rho = np.full((len(unit), fit.basis.shape[1]), np.nan)
            size = np.full(len(unit), np.nan)
            rho[rows], size[rows] = (a.numpy() for a in ratios(
                ctx, params, h, fit.basis, fitted.draws["gaussian"], pts, fitted.floors[i]))
            arrays.update({f"rho_{i}": rho, f"size_{i}": size})
        return UnitResult(arrays)

    def reduce(self, params: CurvatureRatioParams, gathered: Gathered) -> MetricResult:
        import numpy as np
        import torch

        fit, arrays = gathered.fit, gathered.arrays
        converged = arrays["converged"].astype(bool)
        require_points(fit, params, converged)
        per_h: list[dict[str, Any]] = []
        first: dict[str, Any] = {}
        for i, h in enumerate(fit["steps"]):
            require_curved(params, torch.from_numpy(arrays[f"size_{i}"][converged]),
                           fit["floors"][i], h, int(converged.sum()))
            defined = np.isfinite(arrays[f"rho_{i}"]).all(axis=1)
            share = point_share(params, int(defined.sum()), len(converged))
            curve = torch.from_numpy(arrays[f"rho_{i}"][defined]).mean(0)
            best = int(curve.argmax())
            per_h.append({"h": step_label(params, h), "value": float(curve[best]),
                          "argmax": best + 1, "rho_last": float(curve[-1]),
                          "included": share})
            if not first:
                first = {"curve": curve, "best": best}
        curve, points = first["curve"], per_h[0]["included"]["used"]
        details: dict[str, Any] = {
            "points": points,
            "excluded": len(converged) - points,
            "included": per_h[0]["included"],
            "fit_points": fit["fit_points"],
            "fit_excluded": fit["fit_excluded"],
            "hvp": params.hvp,
            "h": per_h[0]["h"],
            "dimension": fit["dimension"],
            "rho": [round(float(v), 6) for v in curve],
            "singular_values": list(fit["singular_values"]),
        }
        if len(per_h) > 1:
            details["by_h"] = per_h
        if params.hvp == "softplus":
            details.update(fit["accuracy"])
        return MetricResult(
            value=per_h[0]["value"],
            samples=arrays["rho_0"][:, first["best"]],
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
        per_fit = d - 1 if d <= params.dense_max else min(
            d - 1, params.iterations or 2 * params.directions + 40)  # Lanczos steps
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
