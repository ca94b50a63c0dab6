"""``region_convexity``: are classification regions convex? (Fawzi et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError, ParamError
from robaudit.metric import IncludedParams, included

if TYPE_CHECKING:
    from robaudit.context import AuditContext
    from robaudit.ops.classgroups import ClassGroups


class ConvexityParams(IncludedParams):
    k: list[Annotated[int, Field(ge=2)]] = Field(
        [2, 3, 5, 10, 20], min_length=1,
        description="numbers of points combined (each ≥ 2 and at most the size of every "
                    "predicted class with 2 or more audit samples)",
    )
    combinations: int = Field(100, ge=1, le=1_000_000,
                              description="random convex combinations per class and per k")


class RegionConvexity(Metric):
    """Fraction of random convex combinations of k same-class points still in that class.

    Fawzi, Moosavi-Dezfooli, Frossard & Soatto (CVPR 2018), "Topology of classification
    regions", convexity: take k images of one estimated class and check whether a random convex
    combination of them is classified in that class too (the paper finds that it is not
    always: the regions are not convex, and the more points are combined, the less often).

    For every predicted class c with at least 2 audit samples and every k in ``k``:
    ``combinations`` sets of k distinct samples predicted c, each combined with weights drawn
    from the flat Dirichlet distribution (uniform on the simplex; the paper does not say which
    weights it draws). value: the fraction of all combinations predicted c (higher is better;
    1 for convex regions). details: the fraction per k (the paper's trend: it falls with k)
    and per class and k.

    Choices: a class with fewer than 2 audit samples is listed in ``details.skipped_classes``
    and skipped (its samples are counted in ``details.included``, the audit samples of the
    classes combined; below ``min_included`` the check is error, design §10); a k larger
    than the size of a class with 2 or more samples is a located spec error found before the
    run (:meth:`check_data`). The sets and weights are drawn per
    combination from the check's generator; the combinations are classified ``batch_size`` at
    a time.

    Runs whole on one process: its unit of work is a combination of samples of a class (design §8).
    """

    name: ClassVar[str] = "region_convexity"
    Params: ClassVar[type[MetricParams]] = ConvexityParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = ("Fawzi et al. 2018, Empirical study of the topology and geometry "
                             "of deep networks, convexity of classification regions")
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def check_data(self, ctx: AuditContext, params: ConvexityParams) -> None:
        groups = _groups(ctx)
        eligible = groups.eligible(2)
        if eligible.numel() == 0:
            return
        smallest = int(eligible[groups.counts[eligible].argmin()])
        size = int(groups.counts[smallest])
        if max(params.k) > size:
            raise ParamError("k", f"k = {max(params.k)} points asked for, but predicted class "
                                  f"{smallest} has only {size} audit samples")

    def compute(self, ctx: AuditContext, params: ConvexityParams) -> MetricResult:
        import torch

        from robaudit.ops.stats import wilson_interval

        data = ctx.data()
        groups = _groups(ctx)
        eligible = groups.eligible(2).tolist()
        if not eligible:
            raise MetricError("no predicted class has 2 audit samples: nothing to combine")
        if max(params.k) > int(groups.counts[eligible].min()):
            raise MetricError("k is larger than a predicted class (see check_data)")
        share = included(int(groups.counts[eligible].sum()), len(data), params.min_included,
                         "audit samples (in a predicted class of at least 2)")
        indices, weights, owners, sizes = [], [], [], []
        for cls in eligible:
            members = groups.members(cls)
            for k in params.k:
                pick = torch.rand(params.combinations, members.shape[0],
                                  generator=ctx.generator).topk(k, dim=1).indices
                draw = -torch.log1p(-torch.rand(params.combinations, k, generator=ctx.generator,
                                                dtype=torch.float64))
                indices.append(members[pick])
                weights.append(draw / draw.sum(dim=1, keepdim=True))
                owners.append(torch.full((params.combinations,), cls))
                sizes.append(torch.full((params.combinations,), k))
        owner, size = torch.cat(owners), torch.cat(sizes)
        kept = torch.empty(owner.shape[0], dtype=torch.bool)
        task = ctx.progress(owner.shape[0], "convex combinations")
        position = 0
        for idx, w in zip(indices, weights, strict=True):
            for start in range(0, idx.shape[0], ctx.batch_size):
                rows = slice(start, start + ctx.batch_size)
                x = data.x[idx[rows]].to(ctx.device)  # (B, k, *input)
                shape = (*w[rows].shape, *([1] * (x.dim() - 2)))
                combined = (w[rows].to(ctx.device, x.dtype).view(shape) * x).sum(dim=1)
                predicted = ctx.model.predict(combined).cpu()
                count = predicted.shape[0]
                kept[position:position + count] = predicted == owner[position:position + count]
                position += count
                task.advance(count)
        by_k = [float(kept[size == k].double().mean()) for k in params.k]
        table = [{"class": cls, **{f"k={k}": float(kept[(owner == cls) & (size == k)]
                                                   .double().mean()) for k in params.k}}
                 for cls in eligible]
        successes = int(kept.sum())
        return MetricResult(
            value=successes / kept.shape[0],
            samples=kept.double().numpy(),
            ci=wilson_interval(successes, kept.shape[0]),
            details={
                "by_k": [{"k": k, "fraction": f} for k, f in zip(params.k, by_k, strict=True)],
                "by_class": table,
                "skipped_classes": (groups.counts == 1).nonzero().squeeze(1).tolist(),
                "included": share,
            },
            figures=[LinePlot(
                title="Convex combinations of k same-class points still in the class",
                x=tuple(float(k) for k in params.k), series={"fraction": tuple(by_k)},
                xlabel="k (points combined)", ylabel="fraction in the class",
            )],
        )

    def floor(self, ctx: AuditContext, params: ConvexityParams) -> Floor:
        classes = int(_groups(ctx).eligible(2).numel())
        return Floor(forward=classes * len(params.k) * params.combinations,
                     note="one forward pass per combination")


def _groups(ctx: AuditContext) -> ClassGroups:
    """The audit samples grouped by predicted class (the split's cached logits)."""
    from robaudit.ops.classgroups import ClassGroups

    logits = ctx.logits()
    return ClassGroups.of(logits.argmax(dim=1), num_classes=logits.shape[1])


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(RegionConvexity())
