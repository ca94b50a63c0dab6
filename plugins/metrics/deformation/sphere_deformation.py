"""``sphere_deformation``: the condition number of g on small spheres (Ghorbani & Zou 2017,
Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field, field_validator

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, IncludedParams, SampleMetric, Unit, UnitResult, included

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext

#: The paper's n: points per sphere in Figures 3(a) and 4(a) (r = 1).
PAPER_POINTS = 1000

#: The prefixes of each sphere's points at which ``details.k_by_points`` reports the mean k.
PREFIXES = (50, 100, 200, 500, 1000)


class SphereParams(IncludedParams):
    radius: float | list[float] = Field(
        1.0, description="sphere radius r, or a list of radii (Appendix B sweeps 0.01 … 100); "
                         "the value is reported at the first"
    )
    points: int = Field(
        PAPER_POINTS, ge=2, le=100_000,
        description="points per sphere (the paper's n = 1000); k grows with it (a max/min "
                    "over more points), so compare values at the same n only")
    samples: int = Field(
        50, ge=1, description="audit samples (spheres); the first `samples` of a random "
                              "permutation of the split (the paper uses 1000)"
    )
    clip: bool = Field(False, description="clip the sphere points to the model's input_range")

    @field_validator("radius")
    @classmethod
    def _positive(cls, value: float | list[float]) -> float | list[float]:
        radii = value if isinstance(value, list) else [value]
        if not radii:
            raise ValueError("give at least one radius")
        if any(r <= 0 for r in radii):
            raise ValueError("every radius must be > 0")
        return value

    @property
    def radii(self) -> list[float]:
        return list(self.radius) if isinstance(self.radius, list) else [self.radius]


def _prefixes(points: int) -> list[int]:
    """The prefixes of ``points`` at which ``details.k_by_points`` reports the mean k."""
    return sorted({n for n in PREFIXES if n < points} | {points})


class SphereDeformation(SampleMetric):
    """Max/min stretch of a small input sphere through the feature map g (a condition number).

    Ghorbani & Zou (2017), section 3, Algorithm 1 and Appendix B. For an audit sample x, draw
    ``points`` points p_i uniformly on the sphere of radius r around x (Gaussian directions
    normalised to unit ℓ2 norm in the flattened input space), compute d_i = ‖g(x) − g(p_i)‖₂ in
    the feature space g (the model's feature layer) and k(x) = max_i d_i / min_i d_i. k = 1 for
    an isometry (up to scale); larger k means g stretches some directions far more than others.
    value: the mean k over the audited samples at the first radius (lower is better); the
    per-sample k at that radius are the samples. With a list of radii (the paper's Appendix B
    sweep), ``details["radii"]`` holds mean / median / std of k per radius and a LinePlot draws
    mean k against r.

    k depends on n: it is a max/min over n points, so it grows with n (on the shipped digits
    ResNet at r = 1, 50 spheres: 4.2 at n = 50, 5.7 at 200, 7.5 at 1000). Values are only
    comparable at the same n, and the default is the paper's n = 1000 (Figures 3(a) and
    4(a)); ``details.k_by_points`` gives the mean k at the first radius over the first
    50, 100, 200, 500 and 1000 points of each sphere (those up to ``points``, and
    ``points`` itself): prefixes of the same uniform draw, so one run shows k at a smaller
    n beside the paper's at no extra cost. ``samples`` defaults to 50 spheres, not the
    paper's 1000 (``{samples: 1000}`` is the paper's setting, 20 times the work); r = 1 as
    in the paper, in input units. The spheres go through the model in batches of at most
    ``batch_size`` points (whole spheres of several samples when ``points < batch_size``).
    Each sphere's directions are drawn from its own seed (:mod:`robaudit.ops.sampling`; the
    spheres and their seeds come from the check's generator), so the result does not depend
    on ``batch_size``, and the metric is per sample and shards (design §8). All radii reuse
    the same directions (a paired comparison). Points are not clipped to the input box by
    default: the metric is about the map g, not about valid inputs; ``clip: true`` clamps
    them to ``input_range`` (they then no longer lie exactly on the sphere). A sample whose
    smallest d_i is 0 (g collapses a direction completely, e.g. a dead ReLU layer) has an
    infinite k (0/0 when g is constant on the whole sphere): it is left out of the mean and
    counted as ``degenerate`` in details and in ``details.included`` (spheres used of those
    drawn); if every sample is degenerate the check errors with that cause, and below
    ``min_included`` it is error too (design §10): the mean of the spheres g does not
    collapse is not the deformation of g.
    """

    name: ClassVar[str] = "sphere_deformation"
    Params: ClassVar[type[MetricParams]] = SphereParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Ghorbani & Zou 2017, section 3, Algorithm 1; Appendix B"

    def sample_count(self, ctx: AuditContext, params: SphereParams) -> int:
        return min(params.samples, len(ctx.data()))

    def fit(self, ctx: AuditContext, params: SphereParams) -> tuple[torch.Tensor, torch.Tensor]:
        """The spheres' centres (positions in the audit split, in increasing order) and each
        sphere's seed for its directions."""
        import torch

        from robaudit.ops import sampling

        data = ctx.data()
        if len(data) == 0:
            raise MetricError("sphere_deformation: the audit split is empty")
        chosen = torch.randperm(len(data), generator=ctx.generator)[: params.samples]
        return chosen.sort().values, sampling.sample_seeds(ctx.generator, chosen.shape[0])

    def per_sample(self, ctx: AuditContext, params: SphereParams, unit: Unit,
                   fitted: tuple[torch.Tensor, torch.Tensor]) -> UnitResult:
        import torch

        from robaudit.ops import sampling

        centres, seeds = fitted[0][unit.indices], fitted[1][unit.indices]
        x_all = ctx.data().x[centres]
        radii = params.radii
        model = ctx.model
        low, high = model.input_range
        per_chunk = max(1, ctx.batch_size // params.points)
        k = torch.empty(x_all.shape[0], len(radii), dtype=torch.float64)
        prefixes = _prefixes(params.points)
        k_prefix = torch.empty(x_all.shape[0], len(prefixes), dtype=torch.float64)
        dim = x_all[0].numel()
        with torch.no_grad():
            for start in range(0, x_all.shape[0], per_chunk):
                rows = slice(start, start + per_chunk)
                x = x_all[rows]
                # each sample's directions from its own seed: independent of the batching
                directions = sampling.per_sample(
                    seeds[rows], lambda g: torch.randn(params.points, dim, generator=g))
                directions = directions / directions.norm(dim=2, keepdim=True)
                x_dev = x.to(ctx.device)
                centre = model.features(x_dev)
                directions = directions.to(ctx.device)
                for j, radius in enumerate(radii):
                    points = (x_dev.flatten(1)[:, None, :] + radius * directions)
                    points = points.reshape(-1, *x.shape[1:])
                    if params.clip:
                        points = points.clamp(low, high)
                    feats = torch.cat([model.features(points[i : i + ctx.batch_size])
                                       for i in range(0, points.shape[0], ctx.batch_size)])
                    feats = feats.view(x.shape[0], params.points, -1)
                    dist = (feats - centre[:, None, :]).double().norm(dim=2)
                    k[rows, j] = (dist.max(dim=1).values / dist.min(dim=1).values).cpu()
                    if j == 0:
                        for i, count in enumerate(prefixes):
                            head = dist[:, :count]
                            k_prefix[rows, i] = (
                                head.max(dim=1).values / head.min(dim=1).values).cpu()
        return UnitResult({"k": k, "k_prefix": k_prefix})

    def reduce(self, params: SphereParams, gathered: Gathered) -> MetricResult:
        import torch

        k = torch.from_numpy(gathered.arrays["k"]).T
        k_prefix = torch.from_numpy(gathered.arrays["k_prefix"]).T
        radii = params.radii
        finite = torch.isfinite(k)
        if not finite[0].any():
            raise MetricError(
                f"sphere_deformation: g maps some sphere direction of every sample onto g(x) "
                f"(min distance 0) at r = {radii[0]}; k = max/min is infinite there, or undefined "
                f"(0/0) where g is constant on the whole sphere"
            )
        share = included(int(finite[0].sum()), finite.shape[1], params.min_included,
                         f"spheres (the others have a point that g maps onto g(x) at "
                         f"r = {radii[0]}: k infinite, or 0/0 where g is constant on it)")
        rows = []
        for j, radius in enumerate(radii):
            values = k[j][finite[j]]
            rows.append({
                "radius": radius,
                "mean": float(values.mean()) if values.numel() else float("nan"),
                "median": float(values.median()) if values.numel() else float("nan"),
                "std": float(values.std()) if values.numel() > 1 else 0.0,
                "degenerate": int((~finite[j]).sum()),
            })
        samples = k[0][finite[0]].numpy()
        figures = []
        if len(radii) > 1:
            figures.append(LinePlot(
                title="Sphere deformation k against the sphere radius (Appendix B)",
                x=tuple(radii), series={"mean k": tuple(r["mean"] for r in rows)},
                xlabel="radius r", ylabel="mean k", logx=True,
            ))
        return MetricResult(
            value=float(np.mean(samples)),
            samples=samples,
            details={"radius": radii[0], "median": rows[0]["median"], "std": rows[0]["std"],
                     "degenerate": rows[0]["degenerate"], "samples": int(k.shape[1]),
                     "included": share,
                     "points": params.points, "radii": rows,
                     "k_by_points": [
                         {"points": count,
                          "mean": float(row[torch.isfinite(row)].mean())
                          if bool(torch.isfinite(row).any()) else float("nan")}
                         for count, row in zip(_prefixes(params.points), k_prefix,
                                               strict=True)]},
            figures=figures,
        )

    def floor(self, ctx: AuditContext, params: SphereParams) -> Floor:
        spheres = min(params.samples, len(ctx.data()))
        return Floor(forward=spheres * (1 + params.points * len(params.radii)),
                     note="the centre and every sphere point through g, per radius")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(SphereDeformation())
