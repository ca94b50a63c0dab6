"""``clean_accuracy``: the fraction of the audit split that the model classifies correctly."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, IncludedParams, SampleMetric, Unit, UnitResult, included

if TYPE_CHECKING:
    from robaudit.context import AuditContext


class CleanAccuracy(SampleMetric):
    """Accuracy on the unperturbed audit split (the baseline of every robustness number).

    Per-sample correctness (0/1) are the samples; the 95% interval is Wilson's score interval.
    A sample whose largest logit is shared by two classes has no prediction (argmax would
    decide by class index, design §10): it is left out, counted in ``details.included``;
    when every sample is tied (e.g. a model whose logits are all equal) or fewer than
    ``min_included`` remain, the check is error with that cause.
    Shares the forward pass over the split with the feature metrics (``ctx.unit_logits``);
    per sample, so it shards (design §8).
    """

    name: ClassVar[str] = "clean_accuracy"
    Params: ClassVar[type[MetricParams]] = IncludedParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "baseline (Szegedy et al. 2014, Tables 2 and 4, clean rows)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def per_sample(self, ctx: AuditContext, params: IncludedParams, unit: Unit, fitted: None
                   ) -> UnitResult:
        import torch

        labels = ctx.data().y[unit.indices]
        logits = ctx.unit_logits(unit)
        correct = logits.argmax(dim=1) == labels.to(logits.device)
        best = logits.topk(min(2, logits.shape[1]), dim=1).values
        tied = (best[:, 0] == best[:, -1]) if logits.shape[1] > 1 else torch.zeros_like(correct)
        return UnitResult({"correct": correct.cpu(), "label": labels, "tied": tied.cpu()})

    def reduce(self, params: IncludedParams, gathered: Gathered) -> MetricResult:
        from robaudit.ops.perclass import accuracy_result

        decided = gathered.arrays["tied"] == 0
        if not decided.any():
            raise MetricError("every audit sample's largest logit is tied between classes (a "
                              "model whose logits are all equal?): no prediction, argmax "
                              "would pick the first class")
        share = included(int(decided.sum()), decided.size, params.min_included,
                         "samples (the others' largest logit is tied between classes)")
        return accuracy_result(gathered.arrays["correct"][decided],
                               gathered.arrays["label"][decided], included=share)

    def floor(self, ctx: AuditContext, params: IncludedParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="one forward pass over the split")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(CleanAccuracy())
