"""``manifold_entanglement``: ranks and overlaps of the class manifolds (Khaitan 2024, §2.5,
§3.4, Figure 17)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.figures import Heatmap
from robaudit.metric import IncludedParams, included

if TYPE_CHECKING:
    from robaudit.context import AuditContext


class EntanglementParams(IncludedParams):
    layers: tuple[str, ...] | None = Field(
        None, min_length=1,
        description="modules whose outputs are read (dotted names as named_modules gives "
                    "them); default: the input of the last nn.Linear (the penultimate layer)",
    )
    tol: float = Field(
        1e-3, ge=1e-6, lt=1,
        description="numerical rank: singular values above tol × the largest count",
    )
    max_dim: int = Field(
        2048, ge=1, le=16384,
        description="widest layer read (its per-class Gram matrices take classes × units² "
                    "float64 numbers)",
    )


class ManifoldEntanglement(Metric):
    """Mean pairwise overlap of the class manifolds at the penultimate layer (inclusion–exclusion).

    Khaitan (2024), §2.5: the rows of a layer's activations for the audit samples of class a
    (true labels) form a matrix A; the class manifold's dimension is its numerical rank r_a
    (singular values above ``tol`` × the largest). The overlap of classes a and b, by inclusion–
    exclusion, is r_a + r_b − rank([A; B]), divided by min(r_a, r_b) (design §6): 0 for disjoint
    subspaces, 1 when one lies in the other (it can pass 1 slightly when the singular values
    trail off: each rank's tolerance is relative to its own matrix's largest singular value).
    value: the mean overlap over unordered class pairs and over the named layers (lower is
    better). Ranks come from per-class Gram matrices AᵀA accumulated per batch (rank [A; B]
    from AᵀA + BᵀB, through the small factors of :func:`robaudit.ops.activations.gram_factor`),
    so memory does not grow with the split.
    Default layer: the input of the last nn.Linear (the paper's n−1-th hidden layer).
    details: per layer the mean overlap and rank and the classes with too few samples for
    their rank to measure the manifold; ``ranks`` the rank tables and ``overlap`` the overlap
    matrices by layer (heat map, Figure 17). Too few samples: a class with fewer
    samples than the layer has units has rank at most its sample count (``undersampled``);
    one with fewer than 2 samples has no rank and is left out of the overlaps, counted in
    ``details.included`` (classes used of the classes with samples; below ``min_included``
    the check is error, design §10).

    Undefined is an error, never the best value (design §10): a class whose activations are
    all 0 at a layer (every unit dead on it) has rank 0, so min(r_a, r_b) = 0 and its overlap
    is 0/0; the check is error naming the class and the layer, not an overlap of 0.

    No confidence interval (``by: ci`` is a spec error): the value is a function of ranks,
    not a mean over samples, and a rank cannot be resampled without bias: a bootstrap
    resample holds a subset of the class's rows, whose rank is at most the class's own, so
    every replicate sits at or below the measured ranks and their percentiles are not a 95%
    interval of the value.

    Runs whole on one process: its ranks are per class and layer over the whole split
    (design §8).
    """

    name: ClassVar[str] = "manifold_entanglement"
    Params: ClassVar[type[MetricParams]] = EntanglementParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Khaitan 2024, §2.5, §3.4 (manifold entanglement, Figure 17)"
    has_interval: ClassVar[bool] = False

    def check_data(self, ctx: AuditContext, params: EntanglementParams) -> None:
        from robaudit.ops.activations import check_layer_names

        check_layer_names(ctx.model, params.layers)

    def compute(self, ctx: AuditContext, params: EntanglementParams) -> MetricResult:
        import torch

        from robaudit.ops.activations import (
            GramStats,
            gram_factor,
            layer_statistics,
            linear_sites,
            output_sites,
            stacked_rank,
        )

        sites = (output_sites(ctx.model, params.layers) if params.layers is not None
                 else linear_sites(ctx.model, None))
        stats = layer_statistics(ctx, sites, "gram", max_dim=params.max_dim)
        values, layers, figures = [], [], []
        shares: list[dict[str, Any]] = []
        rank_tables: dict[str, object] = {}
        overlaps: dict[str, object] = {}
        for site, gram in zip(sites, stats, strict=True):
            assert isinstance(gram, GramStats)
            units = gram.gram.shape[1]
            present = [c for c in range(gram.samples.numel()) if int(gram.samples[c]) > 0]
            usable = [c for c in present if int(gram.samples[c]) >= 2]
            if len(usable) < 2:
                raise MetricError("manifold_entanglement needs 2 classes with at least 2 "
                                  f"samples each; {site.label} has {len(usable)}")
            share = included(len(usable), len(present), params.min_included,
                             "classes (the others have fewer than 2 samples)")
            shares.append(share)
            factors = {c: gram_factor(gram.gram[c]) for c in usable}
            ranks = {c: stacked_rank([factors[c]], params.tol) for c in usable}
            dead = [c for c in usable if ranks[c] == 0]
            if dead:
                raise MetricError(
                    f"class(es) {', '.join(map(str, dead))} have rank 0 at {site.label}: "
                    "every activation of their samples is 0 (dead units), so their manifold "
                    "has no dimension and the overlap min-rank ratio is 0/0")
            overlap = torch.full((len(usable), len(usable)), float("nan"), dtype=torch.float64)
            pairs = []
            for (i, a), (j, b) in itertools.combinations(enumerate(usable), 2):
                union = stacked_rank([factors[a], factors[b]], params.tol)
                pair = (ranks[a] + ranks[b] - union) / min(ranks[a], ranks[b])
                overlap[i, j] = overlap[j, i] = pair
                pairs.append(pair)
            overlap.fill_diagonal_(1.0)
            values.append(sum(pairs) / len(pairs))
            rank_tables[site.label] = [{"class": c, "samples": int(gram.samples[c]),
                                        "rank": ranks[c]} for c in usable]
            overlaps[site.label] = [[float(v) for v in row] for row in overlap]
            layers.append({
                "layer": site.label, "units": units, "mean_overlap": values[-1],
                "included": share,
                "mean_rank": sum(ranks.values()) / len(ranks),
                "undersampled": [c for c in usable if int(gram.samples[c]) < units],
                "too_few_samples": [c for c in range(gram.samples.numel())
                                    if 0 < int(gram.samples[c]) < 2],
            })
            figures.append(Heatmap(
                title=f"pairwise entanglement of class manifolds, {site.label}",
                values=tuple(tuple(float(v) for v in row) for row in overlap),
                xlabels=tuple(str(c) for c in usable),
                ylabels=tuple(f"{c} (r={ranks[c]})" for c in usable),
                colorbar="(r_a + r_b − r_ab) / min(r_a, r_b)"))
        return MetricResult(value=sum(values) / len(values),
                            details={"included": min(shares, key=lambda inc: inc["share"]),
                                     "layers": layers, "ranks": rank_tables,
                                     "overlap": overlaps},
                            figures=figures)

    def floor(self, ctx: AuditContext, params: EntanglementParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="one forward pass of the split")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(ManifoldEntanglement())
