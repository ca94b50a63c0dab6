"""``fgsm_output_change``: the ℓ1 change of the softmax output under FGSM (Ghorbani & Zou 2017,
Appendix G)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, IncludedParams, SampleMetric, Unit, UnitResult, included

if TYPE_CHECKING:
    from robaudit.context import AuditContext


class FgsmChangeParams(IncludedParams):
    eps: float = Field(
        2.0 / 256.0, gt=0,
        description="FGSM step in input units; default 2/256, the paper's ε = 2 on its "
                    "[0, 256] box scaled to a [0, 1] input range (use eps: 2 for a [0, 256] box)",
    )
    clip: bool = Field(True, description="clip x* to the model's input_range (the paper does not)")


class FgsmOutputChange(SampleMetric):
    """Mean ℓ1 change of the output probability vector when FGSM perturbs the input.

    Ghorbani & Zou (2017), section 4 (Figure 6) and Appendix G: for an audit sample x with label
    y, x* = x + ε·sign(∇ₓ L(x, y)) with L the cross-entropy of the model's softmax, and the
    robustness measure is ‖P − P*‖₁ where P and P* are the softmax vectors at x and x*.
    value: the mean over the audit split (0 = the output does not move, 2 = the largest
    possible change; lower is better); the per-sample changes are the samples. ``details``
    also give the fraction of predictions that FGSM changes and the accuracy before and after.

    Choices: ε is in input units, default 2/256 — the paper's ε = 2 was on its [0, 256]
    synthetic box, i.e. 1/128 of the box width, which is 2/256 for the usual [0, 1] range. By
    default x* is clipped to the model's ``input_range`` (as every attack of robaudit is);
    Appendix G's formula has no clipping, which ``clip: false`` reproduces. A zero gradient
    component gives sign 0 (no step along it), as torch.sign. The gradient is that of the
    summed per-sample losses, so each sample's step depends on its own loss only (the model
    is in eval mode): the metric is per sample and shards (design §8).

    Undefined is an error, never the best value (design §10): a sample whose loss gradient is
    exactly 0 gets no FGSM step, so its change of 0 says nothing about the output's
    robustness (a model whose output does not depend on its input, dead units, a saturated
    softmax). Such samples are left out of the mean, counted in ``details.included``; when
    every sample has a zero gradient, or fewer than ``min_included`` remain, the check is
    error with that cause.
    """

    name: ClassVar[str] = "fgsm_output_change"
    Params: ClassVar[type[MetricParams]] = FgsmChangeParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Ghorbani & Zou 2017, section 4 (Figure 6), Appendix G"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 2.0)

    def per_sample(self, ctx: AuditContext, params: FgsmChangeParams, unit: Unit,
                   fitted: None) -> UnitResult:
        import torch
        import torch.nn.functional as F

        model = ctx.model
        low, high = model.input_range
        x, y = ctx.unit_batch(unit)
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model.logits(x)
            loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x_adv = x + params.eps * grad.sign()
            if params.clip:
                x_adv = x_adv.clamp(low, high)
            logits_adv = model.logits(x_adv)
            p, p_adv = logits.softmax(dim=1), logits_adv.softmax(dim=1)
            pred, pred_adv = logits.argmax(dim=1), logits_adv.argmax(dim=1)
            return UnitResult({
                "change": (p - p_adv).abs().sum(dim=1).double().cpu(),
                "stepped": (grad.flatten(1) != 0).any(dim=1).cpu(),
                "flipped": (pred != pred_adv).cpu(),
                "correct": (pred == y).cpu(),
                "correct_adv": (pred_adv == y).cpu(),
            })

    def reduce(self, params: FgsmChangeParams, gathered: Gathered) -> MetricResult:
        import torch

        stepped = gathered.arrays["stepped"] > 0
        if not stepped.any():
            raise MetricError("the loss gradient is 0 at every audit sample (the output does "
                              "not depend on the input there): FGSM takes no step, and an "
                              "output change of 0 would measure nothing")
        share = included(int(stepped.sum()), stepped.size, params.min_included,
                         "samples (the others have a zero loss gradient: no FGSM step)")
        samples = gathered.arrays["change"][stepped]

        def mean(name: str) -> float:
            return float(torch.from_numpy(gathered.arrays[name][stepped]).mean())

        return MetricResult(
            value=float(samples.mean()),
            samples=samples,
            details={
                "eps": params.eps,
                "prediction_changed": mean("flipped"),
                "accuracy": mean("correct"),
                "fgsm_accuracy": mean("correct_adv"),
                "max_change": float(samples.max()),
                "included": share,
            },
        )

    def floor(self, ctx: AuditContext, params: FgsmChangeParams) -> Floor:
        n = len(ctx.data())
        return Floor(forward=n, gradient=n,
                     note="a gradient pass at x (giving P) and a forward pass at x*")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(FgsmOutputChange())
