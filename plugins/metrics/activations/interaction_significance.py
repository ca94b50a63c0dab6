"""``interaction_significance``: significant weight·activation interactions (Khaitan 2024,
§2.1, Figure 10)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult

if TYPE_CHECKING:
    from robaudit.context import AuditContext


class InteractionParams(MetricParams):
    layers: tuple[str, ...] | None = Field(
        None, min_length=1,
        description="nn.Linear modules whose interactions are counted (dotted names as "
                    "named_modules gives them); default: the last nn.Linear",
    )
    count_bias: bool = Field(
        True,
        description="n in the 1/n threshold counts the bias column (n = n_in + 1, the "
                    "matrix's columns); false: n = n_in",
    )
    bins: int = Field(10, ge=2, le=1000, description="bins of the per-class histograms")


class InteractionSignificance(SampleMetric):
    """Mean fraction of significant weight·activation interactions of a linear layer.

    Khaitan (2024), §2.1: for an nn.Linear with weights W (n_out × n_in), bias b and input h,
    the n_out × (n_in + 1) matrix [W diag(h) | b] holds each product w_ij·h_j and the bias as
    one more column; an entry is significant when its share of its row's sum exceeds 1/n
    (see :func:`robaudit.ops.activations.significance` for the choices: n = n_in + 1 with
    ``count_bias``, the signed share, a zero-sum row has none). value: the mean over audit
    samples (and over the named layers) of the fraction of significant entries (lower = sparser
    interactions). samples: per-sample fractions (one layer) or their mean over the layers.
    details per layer and class: the mean fraction and the histogram of per-interaction
    significance frequencies within the class (the paper's binned proportions, Figure 10),
    drawn as one curve per class.

    No best score on a dead layer (design §10): when no weight·activation product of a layer
    is significant on any audit sample (its input is 0 everywhere: every unit before it
    dead; or its weights are 0), only the bias column can be, the layer's output is its bias
    and the fraction is as small as it can be; the check is error naming the layer.

    Per sample, so it shards (design §8): each work unit reads its samples' fractions and
    per-class counts (:func:`robaudit.ops.activations.unit_statistics`), and the counts are
    summed; its fit is only the number of classes and the layers' names.
    """

    name: ClassVar[str] = "interaction_significance"
    Params: ClassVar[type[MetricParams]] = InteractionParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Khaitan 2024, §2.1 (significant interactions, Figure 10)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def check_data(self, ctx: AuditContext, params: InteractionParams) -> None:
        from robaudit.ops.activations import check_layer_names

        check_layer_names(ctx.model, params.layers, linear=True)

    def fit(self, ctx: AuditContext, params: InteractionParams) -> dict[str, Any]:
        from robaudit.ops.activations import linear_sites, split_classes

        sites = linear_sites(ctx.model, params.layers)
        return {"classes": split_classes(ctx), "layers": [site.label for site in sites]}

    def fit_summary(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return fitted

    def per_sample(self, ctx: AuditContext, params: InteractionParams, unit: Unit,
                   fitted: dict[str, Any]) -> UnitResult:
        from robaudit.ops.activations import InteractionStats, linear_sites, unit_statistics

        sites = linear_sites(ctx.model, params.layers)
        stats = unit_statistics(ctx, sites, "interactions", unit, fitted["classes"],
                                count_bias=params.count_bias)
        arrays, significant, samples = {}, [], []
        for i, interactions in enumerate(stats):
            assert isinstance(interactions, InteractionStats)
            arrays[f"fraction_{i}"] = interactions.fraction
            significant.append(interactions.significant.numpy())
            samples.append(interactions.samples.numpy())
        return UnitResult(arrays, {"significant": significant, "samples": samples})

    def reduce(self, params: InteractionParams, gathered: Gathered) -> MetricResult:
        import numpy as np
        import torch

        edges = torch.linspace(0, 1, params.bins + 1, dtype=torch.float64)
        centres = tuple(float(c) for c in (edges[:-1] + edges[1:]) / 2)
        labels = gathered.fit["layers"]
        table, figures, fractions = [], [], []
        for i, label in enumerate(labels):
            fractions.append(torch.from_numpy(gathered.arrays[f"fraction_{i}"]))
            significant = torch.from_numpy(sum(np.asarray(e["significant"][i], dtype=np.int64)
                                               for e in gathered.extras))
            if not bool(significant[..., :-1].any()):
                raise MetricError(f"no weight·activation product of {label} is significant on "
                                  "any audit sample (its input is 0 everywhere: dead units "
                                  "before it; or its weights are 0): only the bias column is")
            samples = sum(np.asarray(e["samples"][i], dtype=np.int64) for e in gathered.extras)
            series = {}
            for c in range(samples.size):
                n = int(samples[c])
                if n == 0:
                    continue
                frequency = significant[c].flatten().double() / n
                counts = torch.histogram(frequency, bins=edges).hist
                share = counts / frequency.numel()
                series[f"class {c}"] = tuple(float(v) for v in share)
                table.append({"layer": label, "class": c, "samples": n,
                              "mean_fraction": float(frequency.mean()),
                              "histogram": [int(v) for v in counts.tolist()]})
            figures.append(LinePlot(
                title=f"significance frequency of interactions per class, {label}",
                x=centres, series=series, xlabel="fraction of the class's samples significant",
                ylabel="share of interactions",
            ))
        per_sample = torch.stack(fractions).mean(dim=0)
        return MetricResult(
            value=float(per_sample.mean()),
            samples=per_sample.numpy(),
            details={"layers": list(labels),
                     "per_layer": {label: float(fraction.mean())
                                   for label, fraction in zip(labels, fractions, strict=True)},
                     "classes": table},
            figures=figures,
        )

    def floor(self, ctx: AuditContext, params: InteractionParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="one forward pass of the split")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(InteractionSignificance())
