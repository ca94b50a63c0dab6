"""What the curvature metrics share (Fawzi et al. 2018, section 3): params, the boundary points
taken from the shared DeepFool cache (of a work unit, design §8, or of the first points of the
reference split), the Hessian operator for the chosen ``hvp`` method, the guard against a
Hessian that is (numerically) zero at every point whatever the ``hvp`` method (design §10: a flat
boundary has no curvature to compare, rank or threshold), the shared high-curvature subspace S,
and what a check's fit holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PositiveFloat

from robaudit.errors import MetricError, ParamError
from robaudit.metric import IncludedParams, Unit, included

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.ops.curvature import MarginHessian
    from robaudit.ops.deepfool import DeepFoolResult

Steps = PositiveFloat | Annotated[list[PositiveFloat], Field(min_length=1)] | None

#: Curvatures |κ| at most this many float epsilons per unit of the method's length scale are
#: numerically zero (:func:`flat_floor`).
ZERO_EPSILONS = 64.0


class CurvatureParams(IncludedParams):
    """Parameters shared by the curvature metrics (``min_included``: the least share of the
    asked points whose DeepFool converged, design §10)."""

    hvp: Literal["finite_difference", "exact", "softplus"] = Field(
        "finite_difference",
        description="Hessian-vector products: central differences of input gradients at step "
                    "h; exact double backpropagation (smooth networks only); or exact on a "
                    "copy with every ReLU replaced by Softplus(beta)")
    h: Steps = Field(
        None,
        description="finite-difference step(s) > 0 (finite_difference only); a list gives "
                    "the value at each h in details (the value is the first's); default: the "
                    "authors' rule 10·sqrt(d)·(max − min)/512")
    beta: float = Field(50.0, gt=0, description="softplus: the β of Softplus(β)")
    points: int = Field(100, ge=1, description="boundary points: the first this many samples")
    dense_max: int = Field(
        256, ge=2, description="input dimension up to which the whole spectrum is computed "
                               "densely (d − 1 HVPs and d × d numbers a point); above it, "
                               "Lanczos")
    iterations: int | None = Field(
        None, ge=1, description="Lanczos steps (default min(d − 1, 2k + 40))")
    overshoot: float = Field(0.02, ge=0, le=1, description="DeepFool's overshoot (shared cache)")
    candidates: int = Field(10, ge=2, description="DeepFool's candidate classes")
    max_iter: int = Field(50, ge=1, le=10_000, description="DeepFool's iterations")

    def steps(self, dim: int, input_range: tuple[float, float]) -> list[float]:
        """The finite-difference steps to evaluate (one, unused, for the exact methods)."""
        from robaudit.ops.curvature import default_step

        if self.hvp != "finite_difference":
            return [0.0]
        if self.h is None:
            return [default_step(dim, input_range)]
        return [self.h] if isinstance(self.h, float) else list(self.h)

    def deepfool_key(self) -> dict[str, Any]:
        return {"overshoot": self.overshoot, "candidates": self.candidates,
                "max_iter": self.max_iter}


def step_label(params: CurvatureParams, h: float) -> str:
    """How a step is named in details: the number, or the exact method."""
    return f"{h:.6g}" if params.hvp == "finite_difference" else params.hvp


@dataclass(frozen=True)
class BoundaryPoints:
    """Boundary points z = x + r(x) of the first ``considered`` samples of a split whose DeepFool
    converged (CPU tensors). ``index`` their rows in the split, ``own`` k̂ (the clean
    prediction), ``target`` the class z crossed into; ``excluded`` how many did not converge."""

    x: torch.Tensor
    z: torch.Tensor
    own: torch.Tensor
    target: torch.Tensor
    perturbation: torch.Tensor
    index: torch.Tensor
    considered: int

    @property
    def excluded(self) -> int:
        return self.considered - int(self.index.numel())

    @property
    def dim(self) -> int:
        return int(self.z[0].numel())

    def __len__(self) -> int:
        return int(self.index.numel())


def boundary_points(ctx: AuditContext, params: CurvatureParams, split: str | None = None,
                    limit: int | None = None) -> BoundaryPoints:
    """The converged DeepFool boundary points among the first ``limit`` (default
    ``params.points``) samples of ``split`` (default: the audit split). Raises MetricError
    when none converged, with the count."""
    name = split or ctx.split
    data = ctx.data(name)
    count = min(len(data), limit or params.points)
    if count == 0:
        raise MetricError(f"the {name!r} split is empty: no boundary points")
    result = leading_deepfool(ctx, params, name, count)
    own = ctx.logits(name)[:count].argmax(dim=1).cpu()
    index = result.converged[:count].nonzero().squeeze(1)
    if index.numel() == 0:
        raise MetricError(
            f"all {count} boundary points excluded: DeepFool did not converge within "
            f"{params.max_iter} steps for any of the first {count} samples of {name!r}")
    return BoundaryPoints(
        x=data.x[index], z=result.boundary[index], own=own[index],
        target=result.crossed_into[index], perturbation=result.perturbation[index],
        index=index, considered=count)


def split_unit(ctx: AuditContext, unit: Unit) -> Unit:
    """The work unit of the whole audit split that holds ``unit``, a unit of its first
    ``points`` samples (the same one unless ``unit`` is the last, partial one). DeepFool and
    the clean predictions are read from it, the shared runs of
    :func:`~robaudit.ops.deepfool.deepfool_unit` and :meth:`AuditContext.unit_logits`, whose
    numbers do not depend on which process runs them or on what else the run cached."""
    return Unit(unit.index, unit.start, min(unit.start + ctx.batch_size, len(ctx.data())))


def unit_boundary_points(ctx: AuditContext, params: CurvatureParams, unit: Unit
                         ) -> BoundaryPoints:
    """The converged DeepFool boundary points of a work unit (design §8) of the audit split,
    read from :func:`split_unit`; ``index`` their rows in the unit."""
    from robaudit.ops.deepfool import deepfool_unit

    data = ctx.data()
    whole = split_unit(ctx, unit)
    rows = slice(0, len(unit))
    result = deepfool_unit(ctx, whole, **params.deepfool_key()).rows(rows)
    own = ctx.unit_logits(whole)[rows].argmax(dim=1).cpu()
    index = result.converged.nonzero().squeeze(1)
    return BoundaryPoints(
        x=data.x[unit.indices][index], z=result.boundary[index], own=own[index],
        target=result.crossed_into[index], perturbation=result.perturbation[index],
        index=index, considered=len(unit))


def check_points(ctx: AuditContext, params: CurvatureParams) -> int:
    """The number of audit samples whose boundary points a check uses (its work units' count);
    MetricError when the split is empty."""
    count = min(len(ctx.data()), params.points)
    if count == 0:
        raise MetricError(f"the {ctx.split!r} split is empty: no boundary points")
    return count


def require_points(fit: dict[str, Any], params: CurvatureParams, converged: Any) -> None:
    """MetricError, with the count, when no boundary point of the units converged
    (``converged`` the per-sample flags in sample order)."""
    count = len(converged)
    if not bool(converged.any()):
        raise MetricError(
            f"all {count} boundary points excluded: DeepFool did not converge within "
            f"{params.max_iter} steps for any of the first {count} samples of {fit['split']!r}")


@dataclass(frozen=True)
class CurvatureFit:
    """What every work unit of a curvature check shares (its fit, design §8): the audit
    split's name, dimension d and dtype (e.g. "float32"), the steps h, random directions
    drawn from the check's generator (common to every point), the shared subspace S at each
    step when the check uses one, with ``hvp: softplus`` the clean accuracies of the
    network and of its Softplus copy on the audit split, and at each step the largest |κ|
    that is numerically zero (:func:`flat_floor`)."""

    split: str
    dimension: int
    dtype: str
    steps: tuple[float, ...]
    floors: tuple[float, ...]
    draws: dict[str, torch.Tensor] = field(default_factory=dict)
    subspaces: tuple[SharedSubspace, ...] = ()
    accuracy: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What a reduce reports of the fit: the split, d, the dtype, the steps, their zero
        floors, the accuracies."""
        return {"split": self.split, "dimension": self.dimension, "dtype": self.dtype,
                "steps": list(self.steps), "floors": list(self.floors),
                "accuracy": dict(self.accuracy)}


def curvature_fit(ctx: AuditContext, params: CurvatureParams, draws: dict[str, torch.Tensor],
                  subspaces: tuple[SharedSubspace, ...] = ()) -> CurvatureFit:
    """A :class:`CurvatureFit` of the audit split with the given draws and subspaces."""
    x = ctx.data().x
    d = int(x[0].numel())
    accuracy = softplus_accuracy(ctx, params.beta) if params.hvp == "softplus" else {}
    steps = tuple(params.steps(d, ctx.model.input_range))
    floors = tuple(flat_floor(params, h, x.dtype, d, ctx.model.input_range) for h in steps)
    return CurvatureFit(ctx.split, d, str(x.dtype).removeprefix("torch."), steps, floors,
                        draws, subspaces, accuracy)


def leading_deepfool(ctx: AuditContext, params: CurvatureParams, split: str, count: int
                     ) -> DeepFoolResult:
    """DeepFool (ℓ2, clipped to the box, from the clean predictions) of the first ``count``
    samples of ``split`` (``count`` at most the fit's ``points``, so its memory does not grow
    with the split): the shared runs of the split's work units
    (:func:`~robaudit.ops.deepfool.deepfool_unit`) when ``count`` covers the whole split,
    else a run on those samples only, in ``ctx.batch_size`` chunks (e.g. the fit's 100
    reference points, not the whole reference split). Either way the numbers do not depend on
    what the run cached before; both are bounded entries of the run cache, computed again
    when they did not fit its budget."""
    from robaudit.ops.deepfool import DeepFoolResult, deepfool, deepfool_split

    mua = ctx.model
    if count >= len(ctx.data(split)):
        return deepfool_split(ctx, split=split, **params.deepfool_key())

    def compute() -> DeepFoolResult:
        x = ctx.data(split).x[:count]
        return DeepFoolResult.concat([
            deepfool(mua.logits, x[s:s + ctx.batch_size].to(ctx.device),
                     input_range=mua.input_range, **params.deepfool_key()).to("cpu")
            for s in range(0, count, ctx.batch_size)])

    key = ("deepfool_leading", mua.name, split, "l2", params.overshoot, params.candidates,
           params.max_iter, count)
    return ctx.cache.get_or_compute(key, compute, bounded=True)


def hessians(ctx: AuditContext, params: CurvatureParams, z: torch.Tensor, own: torch.Tensor,
             target: torch.Tensor, h: float) -> Iterator[MarginHessian]:
    """The Hessian operators of F = f_target − f_own for consecutive ``ctx.batch_size`` slices
    of the points (CPU tensors in, the operator on ``ctx.device``)."""
    from robaudit.ops.curvature import MarginHessian, softplus_logits

    logits = ctx.model.logits
    if params.hvp == "softplus":
        logits = softplus_logits(logits, params.beta)
    method = "finite_difference" if params.hvp == "finite_difference" else "exact"
    for start in range(0, z.shape[0], ctx.batch_size):
        sl = slice(start, start + ctx.batch_size)
        yield MarginHessian(
            logits, z[sl].to(ctx.device), target[sl].to(ctx.device), own[sl].to(ctx.device),
            method=method, h=h if h > 0 else 1.0, chunk=ctx.batch_size)


def flat_floor(params: CurvatureParams, h: float, dtype: torch.dtype, dim: int,
               input_range: tuple[float, float]) -> float:
    """The largest |κ| that is indistinguishable from 0: :data:`ZERO_EPSILONS` float epsilons of
    the data's dtype per unit of the method's length scale. With finite differences the scale
    is the step h (rounding in ∇F(z ± h v) gives |κ| of order ε/h, and a linear model gives
    exactly 0); with the exact methods it is the diagonal of the input box (max − min)·√d, so
    a boundary is flat when its radius of curvature exceeds the box's diagonal / (64 ε)."""
    import torch

    eps = torch.finfo(dtype).eps
    if params.hvp == "finite_difference":
        return ZERO_EPSILONS * eps / h
    low, high = input_range
    diagonal = (high - low) * math.sqrt(dim)
    return ZERO_EPSILONS * eps / diagonal if math.isfinite(diagonal) else 0.0


def flat_reason(params: CurvatureParams, h: float, floor: float, points: int) -> str:
    """Why a Hessian that is numerically zero at every point is not measured, for each ``hvp``
    method, naming what to try instead."""
    zero = (f"gives a projected Hessian of F that is (numerically) zero at every one of the "
            f"{points} boundary points (every |κ| ≤ {floor:.3g})")
    if params.hvp == "exact":
        return (f"hvp: exact {zero}: the network is piecewise linear (ReLU, LeakyReLU, "
                f"max-pool) or linear, and such a network's exact Hessian is zero almost "
                f"everywhere, so its curvature is not measured this way; use hvp: "
                f"finite_difference (curvature at the scale h) or, for ReLU, hvp: softplus "
                f"(ReLU replaced by Softplus(beta))")
    if params.hvp == "softplus":
        return (f"hvp: softplus (beta {params.beta:g}) {zero}: softplus replaces only ReLU "
                f"(torch.relu, F.relu, nn.ReLU), so a network that is piecewise linear through "
                f"other operations (LeakyReLU, PReLU, Hardtanh, max-pool) or linear stays "
                f"piecewise linear and its Hessian zero; use hvp: finite_difference "
                f"(curvature at the scale h)")
    return (f"hvp: finite_difference at step h = {h:.6g} {zero}: the input gradients at "
            f"z ± h·v are equal, so the decision boundary is flat at that scale (a linear "
            f"model, or no kink of a piecewise-linear network within h of the boundary) and "
            f"there is no curvature to measure; try a larger h (a list of h gives the value "
            f"at each)")


def require_curved(params: CurvatureParams, values: torch.Tensor, floor: float, h: float,
                   points: int) -> None:
    """MetricError when every curvature in ``values`` (any shape, the converged points' only;
    NaN ignored) is at most ``floor`` in magnitude: a Hessian that is zero at every point, for
    any ``hvp`` method, is not a flat boundary to report as curvature 0 (design §10)."""
    import torch

    finite = values[torch.isfinite(values)]
    if finite.numel() == 0 or float(finite.abs().max()) <= floor:
        raise MetricError(flat_reason(params, h, floor, points))


def point_share(params: CurvatureParams, used: int, asked: int) -> dict[str, Any]:
    """``details.included`` of the boundary points a value rests on (MetricError below
    ``min_included``, design §10)."""
    return included(used, asked, params.min_included,
                    "boundary points (DeepFool converged and the curvature defined)")


def softplus_accuracy(ctx: AuditContext, beta: float) -> dict[str, float]:
    """Clean accuracy of the network and of its Softplus(β) copy on the audit split."""
    import torch

    from robaudit.ops.curvature import softplus_logits

    def compute() -> dict[str, float]:
        smooth = softplus_logits(ctx.model.logits, beta)
        hits = torch.zeros(2)
        with torch.no_grad():
            for x, y in ctx.batches():
                hits[0] += float((ctx.model.logits(x).argmax(1) == y).sum())
                hits[1] += float((smooth(x).argmax(1) == y).sum())
        acc = (hits / max(1, len(ctx.data()))).tolist()
        return {"accuracy": acc[0], "softplus_accuracy": acc[1],
                "softplus_accuracy_change": acc[1] - acc[0]}

    return ctx.cache.get_or_compute(("softplus_accuracy", ctx.model.name, ctx.split, beta),
                                    compute)


def principal(op: MarginHessian, params: CurvatureParams, k: int, start: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal curvatures (ascending) and directions: the whole spectrum when d ≤
    ``dense_max``, else the k smallest and k largest by Lanczos from ``start`` (d,)."""
    from robaudit.ops.curvature import principal_curvatures_dense, principal_curvatures_lanczos

    if op.dim <= params.dense_max:
        curv = principal_curvatures_dense(op)
    else:
        curv = principal_curvatures_lanczos(op, k, start, params.iterations)
    return curv.values, curv.vectors


def spectrum_width(params: CurvatureParams, d: int, k: int) -> int:
    """How many principal curvatures :func:`principal` gives a point: d − 1 (dense), else
    the 2k extremes of Lanczos (all its steps when it takes at most 2k)."""
    if d <= params.dense_max:
        return d - 1
    return min(2 * k, min(d - 1, params.iterations or 2 * k + 40))


@dataclass(frozen=True)
class SharedSubspace:
    """The shared high-curvature directions u_i (columns of ``basis``, d × m, orthonormal, in
    decreasing singular value order ``singular``) fitted at ``fit`` reference points."""

    basis: torch.Tensor
    singular: torch.Tensor
    fit: int
    excluded: int


class SubspaceParams(CurvatureParams):
    """Parameters of the shared-subspace fit (section 3, "shared directions")."""

    fit: int = Field(100, ge=1, description="reference boundary points of the fit (paper: 100)")
    directions: int = Field(
        20, ge=1, description="principal directions of largest |curvature| taken per fit point")
    subspace: int = Field(20, ge=1, description="shared directions u_i kept (the dimension of S)")

    def fit_key(self) -> tuple[Any, ...]:
        """Every parameter M Mᵀ depends on (not ``subspace``: it only slices the fit)."""
        return (self.hvp, self.beta, self.dense_max, self.iterations, self.fit,
                self.directions, *self.deepfool_key().values())


def check_subspace(ctx: AuditContext, params: SubspaceParams) -> None:
    """``directions`` and ``subspace`` must fit in the d − 1 tangent dimensions and M."""
    d = int(ctx.data().x[0].numel())
    for key in ("directions", "subspace"):
        if getattr(params, key) > d - 1:
            raise ParamError(key, f"must be at most d − 1 = {d - 1} (the tangent dimensions)")
    if params.subspace > params.directions * params.fit:
        raise ParamError("subspace", "must be at most directions × fit (the columns of M)")


def shared_subspace(ctx: AuditContext, params: SubspaceParams, h: float) -> SharedSubspace:
    """The top ``subspace`` left singular vectors of M, the matrix whose columns are the
    ``directions`` principal directions of largest |κ| at each of the first ``fit`` converged
    reference boundary points. A point whose principal curvatures are all numerically zero
    (:func:`flat_floor`) has no principal directions and is left out of M, counted like a
    DeepFool that did not converge (below ``min_included`` of the ``fit`` points asked the
    check is error). M is kept as at most max(``fit`` × ``directions``, 2d) columns
    (:class:`LeftSingular`), so memory grows with neither the number of audit points nor d²
    when fit × directions < d; its thin SVD is cached without ``subspace``, so checks that
    keep different numbers of directions share one fit. Lanczos start vectors come from a
    generator seeded with the spec's seed, so that every check with the same fit params
    shares it."""
    import torch

    def compute() -> tuple[torch.Tensor, torch.Tensor, int, int]:
        pts = boundary_points(ctx, params, ctx.reference, params.fit)
        d = pts.dim
        generator = torch.Generator().manual_seed(ctx.run_seed)
        start = torch.randn(d, generator=generator, dtype=torch.float64)
        floor = flat_floor(params, h, pts.z.dtype, d, ctx.model.input_range)
        columns = LeftSingular(d, min(d, params.directions * params.fit))
        found = []
        for op in hessians(ctx, params, pts.z, pts.own, pts.target, h):
            values, vectors = principal(op, params, params.directions, start)
            size = values.abs().amax(dim=1)
            found.append(size.cpu())
            top = values.abs().topk(min(params.directions, values.shape[1]), dim=1).indices
            chosen = vectors.gather(2, top[:, None, :].expand(-1, d, -1))
            columns.add(chosen[(size > floor).to(chosen.device)])  # flat: no direction
        sizes = torch.cat(found)
        require_curved(params, sizes, floor, h, len(pts))
        singular, vectors = columns.decompose()
        return singular, vectors, int((sizes > floor).sum()), pts.considered

    # "_svd": entries of the disk cache written before hold M Mᵀ's eigenpairs, not (σ, U)
    key = ("curvature_fit_svd", ctx.model.name, ctx.reference, h, *params.fit_key())
    singular, vectors, fit, considered = ctx.cache.get_or_compute(key, compute)
    included(fit, considered, params.min_included,
             f"reference boundary points of the fit ({ctx.reference!r}: DeepFool converged, "
             f"curvature not zero)")
    return SharedSubspace(vectors[:, : params.subspace], singular[: params.subspace], fit,
                          considered - fit)


class LeftSingular:
    """The singular values and left singular vectors of a d-row matrix M given a block of
    columns at a time, in float64 on the CPU. The columns are kept as they come until there
    are more than 2d; then M is replaced by U Σ of its thin SVD (the same M Mᵀ, so the same
    left singular pairs), so it never holds more than 2d columns and one block."""

    def __init__(self, d: int, least: int) -> None:
        import torch

        self.d, self.least = d, least
        self.columns = torch.zeros(d, 0, dtype=torch.float64)

    def add(self, block: torch.Tensor) -> None:
        """Append the columns of ``block`` (B, d, m): B × m columns."""
        import torch

        flat = block.detach().double().cpu().transpose(0, 1).reshape(self.d, -1)
        self.columns = torch.cat([self.columns, flat], dim=1)
        if self.columns.shape[1] > 2 * self.d:
            vectors, singular, _ = torch.linalg.svd(self.columns, full_matrices=False)
            self.columns = vectors * singular

    def decompose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Singular values (descending) and the orthonormal left singular vectors (d × q), at
        least ``least`` of them (zero columns pad M: the vectors of singular value 0 are an
        orthonormal completion); each vector's largest-magnitude entry is positive."""
        import torch

        pad = max(0, self.least - self.columns.shape[1])
        m = torch.cat([self.columns, torch.zeros(self.d, pad, dtype=torch.float64)], dim=1)
        vectors, singular, _ = torch.linalg.svd(m, full_matrices=False)
        peak = vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True))
        return singular, vectors * torch.where(peak < 0, -1.0, 1.0).to(vectors)
