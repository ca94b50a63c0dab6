"""``rank_order_spearman``: rank-order deformation (Ghorbani & Zou 2017, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import IncludedParams, included

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext


class SpearmanParams(IncludedParams):
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
    features of the split come from one cached forward pass (``ctx.features``); the distances
    of the sampled pairs come, in each space and for each chunk of up to 200,000 pairs, from
    whichever needs fewer distance evaluations (:mod:`robaudit.ops.pairdistances`): the pairs
    themselves (trials × pairs) or the blocks of the split's distance matrix that hold a pair
    (about N²/2 on a small split, where pairs repeat). Both give the same bits for a pair, so
    the value is Algorithm 2's on the sampled pairs either way. Memory: a chunk of pairs' rows
    or one block of the matrix at a time (about batch_size × max(D, 4096) inputs and
    chunk_rows² distances), never the N×N matrix nor the gathered inputs of every pair; the
    inputs are read as ``data.x[a:b]`` and ``data.x[indices]``, never whole.

    Undefined is an error, never a number (design §10): when every audit sample has the same
    features (a network whose feature units are all dead, or that ignores its input) or the
    same input, one space's distances are all 0 and their rank order is undefined: the check
    is error naming the space. A trial whose distances are all equal in one space (e.g. its
    pairs are copies of one sample) has no r_s and is left out, counted in
    ``details.included`` (below ``min_included`` the check is error).

    Runs whole on one process: its unit of work is a trial of random pairs across the whole
    split, not a sample (design §8).
    """

    name: ClassVar[str] = "rank_order_spearman"
    Params: ClassVar[type[MetricParams]] = SpearmanParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Ghorbani & Zou 2017, section 2, Algorithm 2"
    value_range: ClassVar[tuple[float, float] | None] = (-1.0, 1.0)

    def compute(self, ctx: AuditContext, params: SpearmanParams) -> MetricResult:
        import torch

        from robaudit.ops.neighbors import chunk_rows
        from robaudit.ops.pairdistances import sampled_pair_distances
        from robaudit.ops.stats import spearman

        data = ctx.data()
        n = len(data)
        if n < 2:
            raise MetricError(f"rank_order_spearman needs at least 2 samples, the split has {n}")
        feats, _ = ctx.features()
        rows = {"input": chunk_rows(ctx.batch_size, data.x[0].numel()),
                "feature": chunk_rows(ctx.batch_size, feats.shape[1])}
        for space, values in (("input", data.x), ("feature", feats)):
            if all_equal(values, rows[space]):
                cause = (" (g(x) is constant: dead units, or a model that ignores its input)"
                         if space == "feature" else "")
                raise MetricError(f"every audit sample has the same {space} vector{cause}: "
                                  f"all {space}-space distances are 0 and their rank order is "
                                  "undefined")
        first = torch.randint(0, n, (params.trials, params.pairs), generator=ctx.generator)
        offset = torch.randint(1, n, (params.trials, params.pairs), generator=ctx.generator)
        second = (first + offset) % n
        # each pair in a canonical order: (a, b) and (b, a) get bit-identical distances
        first, second = torch.minimum(first, second), torch.maximum(first, second)
        values = []
        task = ctx.progress(params.trials, "rank-order trials")
        chunk = max(1, 200_000 // params.pairs)
        for start in range(0, params.trials, chunk):
            a, b = first[start : start + chunk], second[start : start + chunk]
            d_input = sampled_pair_distances(data.x, a, b, rows=rows["input"],
                                             device=ctx.device)
            d_feature = sampled_pair_distances(feats, a, b, rows=rows["feature"],
                                               device=ctx.device)
            values.append(spearman(d_input, d_feature))
            task.advance(a.shape[0])
        every = torch.cat(values).cpu()
        share = included(int(torch.isfinite(every).sum()), every.numel(), params.min_included,
                         "trials (the others have all-equal distances in a space)")
        r_s = every[torch.isfinite(every)].numpy()
        return MetricResult(
            value=float(r_s.mean()),
            samples=r_s,
            details={"std": float(r_s.std()), "min": float(r_s.min()), "max": float(r_s.max()),
                     "feature_dim": int(feats.shape[1]), "included": share},
        )

    def floor(self, ctx: AuditContext, params: SpearmanParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="features of the split, one forward pass")


def all_equal(values: torch.Tensor, rows: int) -> bool:
    """Whether every row of ``values`` equals the first, read ``rows`` rows at a time."""
    first = values[:1].flatten(1)
    return all(bool((values[start : start + rows].flatten(1) == first).all())
               for start in range(0, len(values), rows))


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(RankOrderSpearman())
