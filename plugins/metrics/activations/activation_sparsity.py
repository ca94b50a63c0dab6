"""``activation_sparsity``: how often each unit fires (Khaitan 2024, §3.1, Figures 1–9)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from robaudit import Floor, Histogram, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult

if TYPE_CHECKING:
    from robaudit.context import AuditContext


class SparsityParams(MetricParams):
    layers: tuple[str, ...] | None = Field(
        None, min_length=1,
        description="modules whose outputs are read (dotted names as named_modules gives "
                    "them); default: the inputs of the last two nn.Linear",
    )
    bins: int = Field(20, ge=2, le=1000, description="bins of the frequency histograms")


class ActivationSparsity(SampleMetric):
    """Mean fraction of audit samples on which a unit of the named layers is active (> 0).

    Khaitan (2024), §3.1: per unit, the number of times it activates over the split divided by
    the split's size; the paper plots the histogram of these frequencies per layer (Figures
    1–9) and reads training as making them sparser (fewer units always on). value: the mean
    frequency over every unit of every named layer, pooled (lower = sparser). details per
    layer: its mean frequency, the share of units always on (frequency 1) and never on (0),
    and the histogram of frequencies (``bins`` equal bins of [0, 1]); one histogram figure per
    layer. "Active" is > 0 after the module, so for a layer that is not followed by a ReLU a
    negative value counts as off. No best score on a dead layer (design §10): a named layer
    with no unit active on any audit sample (every ReLU dead, or a model that ignores its
    input and sits at 0 there) would count as perfectly sparse; the check is error naming it.
    Counts are sums over samples, so it is per sample and
    shards (design §8): each work unit counts its samples' active units
    (:func:`robaudit.ops.activations.unit_statistics`) and the counts are summed; its fit is
    only the number of classes and the layers' names.
    """

    name: ClassVar[str] = "activation_sparsity"
    Params: ClassVar[type[MetricParams]] = SparsityParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Khaitan 2024, §3.1 (activation frequencies, Figures 1–9)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def check_data(self, ctx: AuditContext, params: SparsityParams) -> None:
        from robaudit.ops.activations import check_layer_names

        check_layer_names(ctx.model, params.layers)

    def fit(self, ctx: AuditContext, params: SparsityParams) -> dict[str, Any]:
        from robaudit.ops.activations import output_sites, split_classes

        sites = output_sites(ctx.model, params.layers)
        return {"classes": split_classes(ctx), "layers": [site.label for site in sites]}

    def fit_summary(self, fitted: dict[str, Any]) -> dict[str, Any]:
        return fitted

    def per_sample(self, ctx: AuditContext, params: SparsityParams, unit: Unit,
                   fitted: dict[str, Any]) -> UnitResult:
        from robaudit.ops.activations import UnitStats, output_sites, unit_statistics

        sites = output_sites(ctx.model, params.layers)
        active = []
        for stat in unit_statistics(ctx, sites, "units", unit, fitted["classes"]):
            assert isinstance(stat, UnitStats)
            active.append(stat.active.sum(0).numpy())
        return UnitResult({}, {"samples": len(unit), "active": active})

    def reduce(self, params: SparsityParams, gathered: Gathered) -> MetricResult:
        import numpy as np
        import torch

        samples = sum(extra["samples"] for extra in gathered.extras)
        table, figures, pooled = [], [], []
        edges = torch.linspace(0, 1, params.bins + 1, dtype=torch.float64)
        for i, label in enumerate(gathered.fit["layers"]):
            active = sum(np.asarray(extra["active"][i], dtype=np.int64)
                         for extra in gathered.extras)
            if not active.any():
                raise MetricError(f"no unit of {label} is active on any of the {samples} audit "
                                  "samples (a dead layer): its sparsity is not the network's")
            frequency = torch.from_numpy(active).double() / max(1, samples)
            pooled.append(frequency)
            counts = torch.histogram(frequency, bins=edges).hist
            table.append({
                "layer": label,
                "units": int(frequency.numel()),
                "mean_frequency": float(frequency.mean()),
                "always_on": float((frequency == 1).double().mean()),
                "never_on": float((frequency == 0).double().mean()),
                "histogram": [int(c) for c in counts.tolist()],
            })
            figures.append(Histogram(
                title=f"activation frequencies, {label}",
                values=tuple(frequency.tolist()), xlabel="fraction of samples active",
                bins=params.bins, markers={"mean": float(frequency.mean())},
            ))
        everything = torch.cat(pooled)
        return MetricResult(
            value=float(everything.mean()),
            details={"layers": table, "samples": samples,
                     "always_on": float((everything == 1).double().mean()),
                     "never_on": float((everything == 0).double().mean())},
            figures=figures,
        )

    def floor(self, ctx: AuditContext, params: SparsityParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="one forward pass of the split")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(ActivationSparsity())
