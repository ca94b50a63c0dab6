"""``clean_accuracy``: the fraction of the audit split that the model classifies correctly."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.context import AuditContext
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.ops.perclass import accuracy_result


class CleanAccuracy(SampleMetric):
    """Accuracy on the unperturbed audit split (the baseline of every robustness number).

    Per-sample correctness (0/1) are the samples; the 95% interval is Wilson's score interval.
    Shares the forward pass over the split with the feature metrics (``ctx.unit_logits``);
    per sample, so it shards (design §8).
    """

    name: ClassVar[str] = "clean_accuracy"
    Params: ClassVar[type[MetricParams]] = MetricParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "baseline (Szegedy et al. 2014, Tables 2 and 4, clean rows)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def per_sample(self, ctx: AuditContext, params: MetricParams, unit: Unit, fitted: None
                   ) -> UnitResult:
        labels = ctx.data().y[unit.indices]
        correct = ctx.unit_logits(unit).argmax(dim=1) == labels
        return UnitResult({"correct": correct, "label": labels})

    def reduce(self, params: MetricParams, gathered: Gathered) -> MetricResult:
        return accuracy_result(gathered.arrays["correct"], gathered.arrays["label"])

    def floor(self, ctx: AuditContext, params: MetricParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="one forward pass over the split")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(CleanAccuracy())
