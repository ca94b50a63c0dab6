"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", section 3, Algorithm 1) with the cross-entropy
and the (targeted) difference-of-logits-ratio loss of section 4.

APGD is PGD with momentum and a step size that needs no tuning: η starts at 2ε; at the
checkpoints w_j = ⌈p_j · steps⌉ (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} −
0.03, 0.06)) η is halved, and the iterate restarts from the best point found so far, when
either (1) the loss went up in fewer than ρ = 0.75 of the steps since the last checkpoint,
or (2) η was not halved at the last checkpoint and the best loss has not improved since.
Each step is z = P(x_k + η · s(∇)) then x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))
with α = 0.75 (the first step without momentum), s the sign (ℓ∞) or the ℓ2-normalised
gradient, P the projection onto the ε-ball around x followed by the clip to the input box.

Choices where the paper is silent or that a batch needs: every sample has its own η,
counters and best point (the checkpoints are common); the start is a uniform point of the
ball drawn from the sample's own seed (:func:`robaudit.ops.attacks.random_in_ball`), so a
sample's run does not depend on its batch; a sample leaves the batch as soon as an iterate
is misclassified, and that iterate is returned (else the best-loss iterate). The DLR losses
need 3 (untargeted) and 4 (targeted) classes for their scale; with fewer classes the
denominator is 1 (the plain logit margin, which is then what DLR reduces to up to scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from robaudit.ops.attacks import random_in_ball
from robaudit.ops.projections import Norm, clip_to_box, project_lp

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Loss = Literal["ce", "dlr", "dlr-targeted"]

#: The share of steps since the last checkpoint in which the loss must have risen (ρ).
RHO = 0.75
#: The momentum weight α of the update.
MOMENTUM = 0.75
#: Added to the DLR denominator (the paper's 1e-12).
DLR_TINY = 1e-12


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ⌈p_j · steps⌉ at which APGD may halve its step (w_0 = 0)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 9)) for q in p})  # round: 0.41 · 100 is 41


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
             ) -> torch.Tensor:
    """The DLR loss per sample (section 4), to be maximised: untargeted
    −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3), targeted −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2),
    π the logits sorted in decreasing order (denominator 1 with too few classes)."""
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    classes = logits.shape[1]
    if target is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        scale = ordered[:, 0] - ordered[:, 2] + DLR_TINY if classes >= 3 else 1.0
        return -(z_y - other) / scale
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    spread = ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 if classes >= 4 else None
    return -(z_y - z_t) / (1.0 if spread is None else spread + DLR_TINY)


def _loss_and_gradient(logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor, loss: Loss,
                       target: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, its input gradient and the logits at ``x`` (one forward, one
    backward pass; the samples do not interact, so the gradient of the sum is per sample)."""
    with torch.enable_grad():
        xa = x.detach().requires_grad_(True)
        logits = logits_fn(xa)
        if loss == "ce":
            values = F.cross_entropy(logits, y, reduction="none")
        else:
            values = dlr_loss(logits, y, target if loss == "dlr-targeted" else None)
        (grad,) = torch.autograd.grad(values.sum(), xa)
    return values.detach(), grad, logits.detach()


@dataclass(frozen=True)
class APGDResult:
    """APGD on N samples: ``points`` (the first misclassified iterate, else the best-loss one),
    ``fooled`` (an iterate was misclassified) and ``best_loss`` (the highest loss reached)."""

    points: torch.Tensor
    fooled: torch.Tensor
    best_loss: torch.Tensor


def apgd(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    seeds: torch.Tensor,
    loss: Loss = "ce",
    target: torch.Tensor | None = None,
    input_range: tuple[float, float] | None = None,
) -> APGDResult:
    """APGD (Algorithm 1) maximising ``loss`` in the ℓp ball of radius ``eps`` around each
    sample of ``x``, from a random start drawn from each sample's seed of ``seeds``;
    ``target``: the class of each sample for the targeted DLR loss."""
    x = x.detach()
    n = x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))

    def project(point: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return clip_to_box(x[rows] + project_lp(point - x[rows], eps, norm), input_range)

    def ascent(grad: torch.Tensor) -> torch.Tensor:
        if norm == "linf":
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)

    every = torch.arange(n, device=x.device)
    noise = random_in_ball(seeds, x.shape[1:], eps, norm).to(x.device, x.dtype)
    current = project(x + noise, every)
    values, grad, logits = _loss_and_gradient(logits_fn, current, y, loss, target)
    fooled = logits.argmax(dim=1) != y
    points = current.clone()
    best, best_point, best_grad = values.clone(), current.clone(), grad.clone()
    previous = current.clone()
    step = torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device)
    rises = torch.zeros(n, dtype=torch.long, device=x.device)
    marks = checkpoints(steps)
    last_mark, best_at_mark = 0, best.clone()
    halved = torch.zeros(n, dtype=torch.bool, device=x.device)
    for k in range(steps):
        rows = (~fooled).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        here = current[rows]
        z = project(here + step[rows].view(shape) * ascent(grad[rows]), rows)
        if k == 0:
            moved = z
        else:
            moved = project(here + MOMENTUM * (z - here) + (1 - MOMENTUM) * (here - previous[rows]),
                            rows)
        new_values, new_grad, logits = _loss_and_gradient(
            logits_fn, moved, y[rows], loss, None if target is None else target[rows])
        hit = logits.argmax(dim=1) != y[rows]
        points[rows[hit]] = moved[hit]
        fooled[rows[hit]] = True
        rises[rows] += (new_values > values[rows]).long()
        better = new_values > best[rows]
        improved = rows[better]
        best[improved], best_point[improved] = new_values[better], moved[better]
        best_grad[improved] = new_grad[better]
        previous[rows], current[rows] = here, moved
        values[rows], grad[rows] = new_values, new_grad
        if k + 1 in marks and k + 1 < steps:
            span = k + 1 - last_mark
            halve = (rises < RHO * span) | (~halved & (best <= best_at_mark))
            halve &= ~fooled
            step[halve] /= 2
            current[halve], previous[halve] = best_point[halve], best_point[halve]
            values[halve], grad[halve] = best[halve], best_grad[halve]
            last_mark, best_at_mark, halved = k + 1, best.clone(), halve
            rises.zero_()
    points[~fooled] = best_point[~fooled]
    return APGDResult(points=points, fooled=fooled, best_loss=best)
