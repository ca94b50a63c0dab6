"""The preflight of attack-based checks: signs that an attack's number is not to be trusted.

Design §6, "Attack strength", after AutoAttack's ``checks`` (Croce & Hein 2020) and Carlini
et al. 2019, "On evaluating adversarial robustness", section 5 (the red flags of gradient
masking). Each finding is a warning in the check's ``details.preflight`` (and the line the
reports show in ``details.warnings``); ``preflight: error`` in the check's params makes any
finding the check's error. The model checks run once per check, on the first
:data:`PREFLIGHT_SAMPLES` samples of the audit split (in ``fit``, so that they do not depend
on the batch size or the number of processes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from robaudit.errors import MetricError
from robaudit.metric import MetricParams

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.model import ModelUnderAudit

LogitsFn = Callable[["torch.Tensor"], "torch.Tensor"]

#: Samples of the audit split the model checks look at.
PREFLIGHT_SAMPLES = 64
#: Two forward passes differ when a logit differs by more than this times (1 + max |logit|).
RANDOMNESS_TOLERANCE = 1e-5
#: A share of samples with a zero input gradient above this is a finding.
ZERO_GRADIENT_SHARE = 0.05
#: Robust accuracy above this at the large budget (the whole input box) is a finding.
LARGE_BUDGET_ACCURACY = 0.05
#: The black-box attack may break at most this share of the points more than the white-box.
BLACK_BOX_MARGIN = 0.01
#: PGD steps of the large-budget probe.
LARGE_BUDGET_STEPS = 20

#: Every finding: what it means and what to do (``robaudit metrics NAME`` prints these).
FINDINGS: dict[str, str] = {
    "randomness": "two identical forward passes gave different logits: the model is random "
                  "at test time (dropout left on, noise layers, stochastic defences), so an "
                  "attack's gradient is a single sample of a random function. Put the "
                  "model in eval mode, or attack the expectation (EOT) and run a custom "
                  "evaluation.",
    "probabilities": "the outputs are in [0, 1] and sum to 1 per row: the model returns "
                     "probabilities, not logits, so cross-entropy and margin losses saturate "
                     "and their gradients vanish. Remove the final softmax.",
    "zero_gradients": "the cross-entropy's input gradient is exactly zero for a share of the "
                      "samples: gradient attacks cannot move them (gradient masking: "
                      "quantisation, thresholds, saturated softmax). Trust only the "
                      "black-box attack (Square) for them, or remove the non-differentiable "
                      "step.",
    "black_box": "the black-box attack broke points that every white-box attack missed, "
                 "more than the margin allows: the gradients mislead the white-box attacks "
                 "(gradient masking), and the gradient attacks' accuracy overstates "
                 "robustness. Use autoattack_accuracy (with Square) as the gate.",
    "large_budget": "robust accuracy under PGD is far from 0 at a budget that covers the "
                    "whole input box, where every point can be moved anywhere: the attack, "
                    "not the model, is failing (gradient masking or a bug). Do not trust "
                    "this check's value; use autoattack_accuracy.",
}

PREFLIGHT_DOC = "\n".join(f"- ``{name}``: {text}" for name, text in FINDINGS.items())


class PreflightParams(MetricParams):
    """Params of an attack-based check: what a preflight finding does."""

    preflight: Literal["warn", "error"] = Field(
        "warn", description="a preflight finding is a warning in details (warn) or makes the "
                            "check error (error)")


def finding(name: str, message: str) -> dict[str, str]:
    """A finding as details hold it."""
    return {"check": name, "message": message}


def model_findings(logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor,
                   input_range: tuple[float, float]) -> list[dict[str, str]]:
    """The model checks on the samples ``x`` (labels ``y``): randomness, probabilities, zero
    gradients and PGD at a budget covering the whole box."""
    import torch
    import torch.nn.functional as F

    from robaudit.ops.attacks import pgd
    from robaudit.ops.sampling import sample_seeds

    x = x[:PREFLIGHT_SAMPLES]
    y = y[:PREFLIGHT_SAMPLES]
    found = []
    with torch.no_grad():
        first, second = logits_fn(x), logits_fn(x)
    spread = float((first - second).abs().max())
    if spread > RANDOMNESS_TOLERANCE * (1 + float(first.abs().max())):
        found.append(finding("randomness", f"two identical forward passes differ by up to "
                                           f"{spread:.3g} in a logit"))
    sums = first.sum(dim=1)
    if bool(((first >= 0) & (first <= 1)).all()) and bool(((sums - 1).abs() < 1e-4).all()):
        found.append(finding("probabilities", "every output row is in [0, 1] and sums to 1: "
                                              "probabilities, not logits"))
    with torch.enable_grad():
        xa = x.detach().requires_grad_(True)
        loss = F.cross_entropy(logits_fn(xa), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
    zero = (grad.flatten(1) == 0).all(dim=1).double().mean().item()
    if zero > ZERO_GRADIENT_SHARE:
        found.append(finding("zero_gradients", f"{zero:.0%} of the samples have a zero input "
                                               "gradient"))
    correct = first.argmax(dim=1) == y
    if correct.any():
        eps = input_range[1] - input_range[0]
        seeds = sample_seeds(torch.Generator().manual_seed(0), int(correct.sum()))
        adv = pgd(logits_fn, x[correct], y[correct], eps=eps, norm="linf",
                  steps=LARGE_BUDGET_STEPS, step_size=2.5 * eps / LARGE_BUDGET_STEPS,
                  seeds=seeds, input_range=input_range)
        with torch.no_grad():
            robust = (logits_fn(adv).argmax(dim=1) == y[correct]).double().mean().item()
        if robust > LARGE_BUDGET_ACCURACY:
            found.append(finding("large_budget", f"PGD-{LARGE_BUDGET_STEPS} at ℓ∞ eps {eps:g} "
                                                 f"(the whole box) leaves {robust:.0%} of the "
                                                 "correct samples robust"))
    return found


def audit_findings(ctx: AuditContext, model: ModelUnderAudit | None = None
                   ) -> list[dict[str, str]]:
    """:func:`model_findings` of ``model`` (default: the audited one; the model an attack
    runs on) on the first :data:`PREFLIGHT_SAMPLES` samples of the audit split: what every
    attack-based check runs once, in its ``fit``."""
    model = model or ctx.model
    data = ctx.data()
    return model_findings(model.logits, data.x[:PREFLIGHT_SAMPLES].to(ctx.device),
                          data.y[:PREFLIGHT_SAMPLES].to(ctx.device), model.input_range)


def black_box_finding(white_box_robust: float, final_robust: float, attack: str
                      ) -> list[dict[str, str]]:
    """A finding when the black-box ``attack`` lowered the robust accuracy left by the
    white-box attacks by more than :data:`BLACK_BOX_MARGIN`."""
    gap = white_box_robust - final_robust
    if gap <= BLACK_BOX_MARGIN:
        return []
    return [finding("black_box", f"{attack} broke {gap:.1%} of the points after every "
                                 f"white-box attack failed (robust accuracy "
                                 f"{white_box_robust:.4g} → {final_robust:.4g})")]


def preflight_details(found: list[dict[str, str]], mode: str) -> dict[str, Any]:
    """``details.preflight`` (and ``details.warnings``, the lines the reports show); raises
    :class:`MetricError` when ``mode`` is ``error`` and there is a finding."""
    lines = [f"preflight {f['check']}: {f['message']}" for f in found]
    if found and mode == "error":
        raise MetricError("; ".join(lines) + " (preflight: error)")
    return {"preflight": list(found), **({"warnings": lines} if lines else {})}
