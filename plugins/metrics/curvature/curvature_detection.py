"""``curvature_detection``: detecting perturbed samples by the sign of the boundary curvature
(Fawzi et al. 2018, section 4, Algorithm 2)."""

from __future__ import annotations

import math
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
    require_curved,
    require_points,
    step_label,
    unit_boundary_points,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from robaudit.context import AuditContext


class DetectionParams(CurvatureParams):
    T: int = Field(16, ge=1, description="random unit directions v_j per sample (Algorithm 2)")
    t: float = Field(0.0, description="the threshold t: perturbed when ρ ≥ t (paper: 0)")


def roc(negative: np.ndarray, positive: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """ROC AUC (the Mann–Whitney probability that a positive scores above a negative, ties
    counting ½) and the curve (FPR, TPR) over every threshold, from (0, 0) to (1, 1)."""
    import numpy as np
    scores = np.concatenate([negative, positive])
    labels = np.concatenate([np.zeros(len(negative)), np.ones(len(positive))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tpr = np.r_[0.0, np.cumsum(labels)[distinct] / len(positive)]
    fpr = np.r_[0.0, np.cumsum(1 - labels)[distinct] / len(negative)]
    return float(np.trapezoid(tpr, fpr)), fpr, tpr


def paired_auc_interval(negative: np.ndarray, positive: np.ndarray, level: float = 0.95
                        ) -> tuple[float, float]:
    """Normal-approximation interval of the ROC AUC of ``positive`` over ``negative`` scores
    that come in pairs (row i of each from the same sample: a clean point and its perturbed
    copy). DeLong, DeLong & Clarke-Pearson (1988) structural components V10_i = P(positive_i >
    a negative), V01_i = P(a positive > negative_i) (ties ½); the AUC is a U-statistic of the
    n pairs, whose first-order variance is Var(V10_i + V01_i)/n, DeLong's Var(V10)/n +
    Var(V01)/n plus the pairs' covariance term. Clipped to [0, 1]."""
    import numpy as np
    n = len(positive)
    if n != len(negative) or n < 2:
        raise ValueError("the interval needs at least 2 pairs of scores")
    above = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    v10, v01 = above.mean(axis=1), above.mean(axis=0)
    auc = float(v10.mean())
    from scipy import stats  # lazily: importing scipy.stats costs 0.6 s at start-up

    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(np.var(v10 + v01, ddof=1) / n)
    return max(0.0, auc - half), min(1.0, auc + half)


def recover(by_class: torch.Tensor, floor: float) -> torch.Tensor:
    """The recovered label argmax_i ρ_i of each row of ``by_class`` (n, L), or −1 where another
    class's ρ_i is within ``floor`` of the largest: a tie is not decided by index."""
    import torch

    best = by_class.max(dim=1)
    tied = (by_class >= best.values[:, None] - floor).sum(dim=1) > 1
    return torch.where(tied, -1, best.indices)


class CurvatureDetection(SampleMetric):
    """ROC AUC of detecting DeepFool-perturbed samples by their average boundary curvature.

    Fawzi, Moosavi-Dezfooli, Frossard & Soatto (CVPR 2018), section 4, Algorithm 2 (line 7
    read as "else perturbed ← true"): at a sample x with prediction k̂, for every other class i,
    F_i = f_i − f_k̂ and G_{F_i} = P_i H_{F_i} P_i / ‖∇F_i(x)‖ with P_i the projection orthogonal
    to ∇F_i (the paper writes ∇F; we project on each F_i's own tangent space);
    ρ_i = (1/T) Σ_j v_jᵀ G_{F_i} v_j with v_j uniform on the unit sphere (``T`` of them, common
    to every sample, from the check's generator), ρ = the mean of ρ_i over the L − 1 other
    classes (the paper's 1/(LT) differs by the constant L/(L − 1)). Perturbed when ρ ≥ ``t``;
    the recovered label is argmax_i ρ_i. A tie for the largest ρ_i (within the step's zero
    floor, e.g. two classes whose boundaries are equally flat) is not decided by class index:
    the label counts as not recovered (``details.label_ties``, the share of such ties).

    The clean samples are the first ``points`` audit samples whose DeepFool converged, the
    perturbed ones their DeepFool points x + r(x) (the shared cache). value: the ROC AUC of ρ
    separating perturbed (positive) from clean (higher is better; 0.5 is chance).
    details: the detection and false-alarm rates at ``t``, the label-recovery accuracy (the
    recovered label of a perturbed sample equals the clean prediction, over every perturbed
    sample; the paper reports 92 / 88 / 74 % on ImageNet models at t = 0), the mean ρ of each
    kind and the fraction of clean samples with ρ < 0, ``included`` (the converged points
    used of the first ``points``; below ``min_included`` the check is error). ci: the paired
    DeLong interval of the AUC (:func:`paired_auc_interval`; clean and perturbed scores come
    from the same samples). A Hessian numerically zero at every point, whatever ``hvp``
    (ρ = 0 everywhere, AUC ½ by ties), is an error (design §10). The ROC curve is a figure.

    Per sample, so it shards (design §8): its fit (:class:`CurvatureFit`, once, broadcast) is
    the T directions v_j from the check's generator; each work unit takes DeepFool and ρ at
    its clean and perturbed points, and the ROC is computed from every unit's scores.
    """

    name: ClassVar[str] = "curvature_detection"
    Params: ClassVar[type[MetricParams]] = DetectionParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Fawzi et al. 2018, section 4, Algorithm 2"

    def sample_count(self, ctx: AuditContext, params: DetectionParams) -> int:
        return min(len(ctx.data()), params.points)

    def fit(self, ctx: AuditContext, params: DetectionParams) -> CurvatureFit:
        import torch

        check_points(ctx, params)
        d = int(ctx.data().x[0].numel())
        gaussian = torch.randn(params.T, d, generator=ctx.generator, dtype=torch.float64)
        return curvature_fit(ctx, params, {"units": gaussian / gaussian.norm(dim=1, keepdim=True)})

    def fit_summary(self, fitted: CurvatureFit) -> dict[str, Any]:
        return fitted.summary()

    def per_sample(self, ctx: AuditContext, params: DetectionParams, unit: Unit,
                   fitted: CurvatureFit) -> UnitResult:
        import numpy as np
        import torch

        pts = unit_boundary_points(ctx, params, unit)
        rows = pts.index.numpy()
        arrays: dict[str, np.ndarray] = {"converged": np.zeros(len(unit), dtype=bool),
                                         "own": np.full(len(unit), -1)}
        arrays["converged"][rows] = True
        arrays["own"][rows] = pts.own.numpy()
        for i, h in enumerate(fitted.steps):
            clean, adversarial, recovered, size = (np.full(len(unit), np.nan) for _ in range(4))
            if len(pts):
                clean_rho, clean_by_class = self._scores(ctx, params, pts.x, h,
                                                         fitted.draws["units"])
                adv_rho, adv_by_class = self._scores(ctx, params, pts.z, h,
                                                     fitted.draws["units"])
                clean[rows], adversarial[rows] = clean_rho.numpy(), adv_rho.numpy()
                recovered[rows] = recover(adv_by_class, fitted.floors[i]).numpy()
                magnitude = torch.cat([clean_by_class, adv_by_class], dim=1).abs()
                size[rows] = magnitude.masked_fill(torch.isinf(magnitude), 0.0).amax(1).numpy()
            arrays.update({f"clean_{i}": clean, f"perturbed_{i}": adversarial,
                           f"recovered_{i}": recovered, f"size_{i}": size})
        return UnitResult(arrays)

    def reduce(self, params: DetectionParams, gathered: Gathered) -> MetricResult:
        import torch

        fit, arrays = gathered.fit, gathered.arrays
        converged = arrays["converged"].astype(bool)
        require_points(fit, params, converged)
        points = int(converged.sum())
        share = point_share(params, points, len(converged))
        own = torch.from_numpy(arrays["own"][converged])
        per_h: list[dict[str, Any]] = []
        first: dict[str, Any] = {}
        for i, h in enumerate(fit["steps"]):
            require_curved(params, torch.from_numpy(arrays[f"size_{i}"][converged]),
                           fit["floors"][i], h, points)
            clean_rho = torch.from_numpy(arrays[f"clean_{i}"][converged])
            adv_rho = torch.from_numpy(arrays[f"perturbed_{i}"][converged])
            recovered = torch.from_numpy(arrays[f"recovered_{i}"][converged])
            auc, fpr, tpr = roc(clean_rho.numpy(), adv_rho.numpy())
            row = {
                "h": step_label(params, h),
                "auc": auc,
                "detection_rate": float((adv_rho >= params.t).double().mean()),
                "false_alarm_rate": float((clean_rho >= params.t).double().mean()),
                "label_recovery": float((recovered == own).double().mean()),
                "label_ties": float((recovered == -1).double().mean()),
                "mean_rho_clean": float(clean_rho.mean()),
                "mean_rho_perturbed": float(adv_rho.mean()),
                "clean_negative_fraction": float((clean_rho < 0).double().mean()),
            }
            per_h.append(row)
            if not first:
                first = {"fpr": fpr, "tpr": tpr, "ci": paired_auc_interval(
                    clean_rho.numpy(), adv_rho.numpy()) if points >= 2 else None}
        details: dict[str, Any] = {"points": points, "excluded": len(converged) - points,
                                   "included": share, "hvp": params.hvp, "t": params.t,
                                   "T": params.T, **per_h[0]}
        if len(per_h) > 1:
            details["by_h"] = per_h
        if params.hvp == "softplus":
            details.update(fit["accuracy"])
        fpr, tpr = first["fpr"], first["tpr"]
        return MetricResult(
            value=per_h[0]["auc"],
            ci=first["ci"],
            details=details,
            figures=[LinePlot(
                title=f"Curvature detection ROC (AUC {per_h[0]['auc']:.3f}, h {per_h[0]['h']})",
                x=tuple(float(v) for v in fpr),
                series={"ρ ≥ threshold": tuple(float(v) for v in tpr),
                        "chance": tuple(float(v) for v in fpr)},
                xlabel="false alarm rate (clean flagged)",
                ylabel="detection rate (perturbed flagged)")],
        )

    @staticmethod
    def _scores(ctx: AuditContext, params: DetectionParams, x: torch.Tensor, h: float,
                units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ρ per sample (n,) and ρ_i per sample and class (n, L) with −inf at k̂."""
        import torch

        from robaudit.ops.curvature import quadratic_forms

        with torch.no_grad():
            pred = torch.cat([ctx.model.logits(x[s:s + ctx.batch_size].to(ctx.device)).cpu()
                              for s in range(0, x.shape[0], ctx.batch_size)])
        classes = pred.shape[1]
        own = pred.argmax(dim=1)
        others = torch.arange(classes)[None].expand(len(own), -1)
        others = others[others != own[:, None]].view(len(own), classes - 1)
        by_class = torch.full((len(own), classes), float("-inf"), dtype=torch.float64)
        step = max(1, ctx.batch_size // (classes - 1))
        for start in range(0, len(own), step):
            sl = slice(start, start + step)
            rows = x[sl].repeat_interleave(classes - 1, dim=0)
            forms = []
            for op in hessians(ctx, params, rows, own[sl].repeat_interleave(classes - 1),
                                  others[sl].reshape(-1), h):
                forms.append(quadratic_forms(op, units.to(op.gradient)).mean(1).double().cpu())
            values = torch.cat(forms).view(-1, classes - 1)
            by_class[sl] = by_class[sl].scatter(1, others[sl], values)
        rho = by_class.masked_fill(torch.isinf(by_class), 0.0).sum(1) / (classes - 1)
        return rho, by_class

    def floor(self, ctx: AuditContext, params: DetectionParams) -> Floor:
        n = min(len(ctx.data()), params.points)
        classes = ctx.model.num_classes(ctx.data().x)
        per_hvp = 2 if params.hvp == "finite_difference" else 3
        steps = len(params.steps(int(ctx.data().x[0].numel()), ctx.model.input_range))
        return Floor(forward=2 * n, gradient=steps * 2 * n * (classes - 1) * (
            1 + params.T * per_hvp), note="clean and perturbed: (L − 1) × T HVPs each")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(CurvatureDetection())
