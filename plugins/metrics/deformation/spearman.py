"""``rank_order_spearman``: rank-order deformation (Ghorbani & Zou 2017, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.context import AuditContext
from robaudit.errors import MetricError
from robaudit.ops.stats import pair_distances, spearman


class SpearmanParams(MetricParams):
    pairs: int = Field(100, ge=3, description="pairs per trial (the paper's n = 100)")
    trials: int = Field(
        1000, ge=1, le=1_000_000,
        description="independent trials (the paper runs 10,000; 1,000 keeps the default "
                    "audit fast and the 95% CI of the mean within about ±0.01)",
    )


class RankOrderSpearman(Metric):
    """Spearman correlation between input-space and feature-space distances of random pairs.

    Ghorbani & Zou (2017), section 2, Algorithm 2: sample ``pairs`` pairs (x_a, x_b) of audit
    samples, d_i = ‖x_a − x_b‖₂ in input space and D_i = ‖g(x_a) − g(x_b)‖₂ in the feature space
    g (the model's feature layer), r_s = Spearman(d, D); repeat ``trials`` times. value: mean r_s
    (1 = distances keep their order, no deformation; lower = more deformation).

    Choices where the paper is silent: the two members of a pair are distinct samples (pairs are
    drawn with replacement across the pair list); ties get average ranks (as scipy). The
    features of the split come from one cached forward pass (``ctx.features``), so the cost is
    that pass plus the distance and rank arithmetic, whatever the number of trials.
    """

    name: ClassVar[str] = "rank_order_spearman"
    Params: ClassVar[type[MetricParams]] = SpearmanParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Ghorbani & Zou 2017, section 2, Algorithm 2"

    def compute(self, ctx: AuditContext, params: SpearmanParams) -> MetricResult:
        data = ctx.data()
        n = len(data)
        if n < 2:
            raise MetricError(f"rank_order_spearman needs at least 2 samples, the split has {n}")
        feats, _ = ctx.features()
        inputs = data.x.flatten(1).to(feats.device)
        first = torch.randint(0, n, (params.trials, params.pairs), generator=ctx.generator)
        offset = torch.randint(1, n, (params.trials, params.pairs), generator=ctx.generator)
        second = (first + offset) % n
        first, second = first.to(feats.device), second.to(feats.device)
        input_distances, feature_distances = pair_distances(inputs), pair_distances(feats)
        values = []
        task = ctx.progress(params.trials, "rank-order trials")
        chunk = max(1, 200_000 // params.pairs)
        for start in range(0, params.trials, chunk):
            a, b = first[start : start + chunk], second[start : start + chunk]
            values.append(spearman(input_distances(a, b), feature_distances(a, b)))
            task.advance(a.shape[0])
        r_s = torch.cat(values).cpu().numpy()
        return MetricResult(
            value=float(r_s.mean()),
            samples=r_s,
            details={"std": float(r_s.std()), "min": float(r_s.min()), "max": float(r_s.max()),
                     "feature_dim": int(feats.shape[1])},
        )

    def floor(self, ctx: AuditContext, params: SpearmanParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="features of the split, one forward pass")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(RankOrderSpearman())
