"""An example robaudit plugin: ``logit_margin``, the mean margin of the true class's logit.

margin(x) = z_y(x) − max_{j≠y} z_j(x): positive when x is classified correctly, and the larger
it is, the more the logits must move before the label changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from robaudit import AuditContext, Floor, Metric, MetricParams, MetricResult, hookimpl


class MarginParams(MetricParams):
    clip: float = Field(100.0, gt=0, description="margins are clipped to [-clip, clip]")


class LogitMargin(Metric):
    """Mean logit margin z_y − max_{j≠y} z_j over the audit split (higher is better).

    An example of the plugin API, not a paper's metric.
    """

    name: ClassVar[str] = "logit_margin"
    Params: ClassVar[type[MetricParams]] = MarginParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "robaudit plugin example"

    def compute(self, ctx: AuditContext, params: MarginParams) -> MetricResult:
        _, logits = ctx.features()  # one cached forward pass, shared with other checks
        labels = ctx.data().y.to(logits.device)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        margins = (true - others).clamp(-params.clip, params.clip)
        return MetricResult(
            value=float(margins.mean()),
            samples=margins.cpu().numpy(),
            details={"negative_fraction": float((margins < 0).double().mean())},
        )

    def floor(self, ctx: AuditContext, params: MarginParams) -> Floor:
        return Floor(forward=len(ctx.data()))


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(LogitMargin())
