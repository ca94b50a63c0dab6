"""Fast minimum-norm attack, FMN (Pintor, Roli, Brendel & Biggio, NeurIPS 2021, "Fast
minimum-norm adversarial attacks through adaptive norm constraints", Algorithm 1).

FMN descends the logit margin L = z_y − max_{j≠y} z_j inside an ℓp ball whose radius ε_k it
adapts at each step: while no adversarial point has been found, ε_k is the linear estimate
of the distance to the boundary, ‖δ‖ + L/‖∇L‖_q (q the dual norm), times 1 + γ_k (without
that overshoot, which the paper does not have, a step lands on the linearised boundary, not
across it, and on a linear model stays there); afterwards it shrinks to
min(ε_{k−1}, ‖δ*‖)(1 − γ_k) while the iterate is adversarial (δ* the smallest adversarial
perturbation so far) and grows to ε_{k−1}(1 + γ_k) while it is not. The step is
δ ← δ − α_k · ∇L/‖∇L‖₂ (ℓ2) or − α_k · sign(∇L) (ℓ∞), then the projection onto the ε_k ball
and the clip to the input box. γ_k and α_k decay from γ_0 = 0.05 to 0.001 and from α_0 to
α_0/100 by cosine annealing, as in the paper.

Choice: the paper's α_0 is in input units (1 for ℓ2 on images in [0, 1]); here the step is
α_k times the current radius ε_k with α_0 = 1, so that the attack needs no scale and works
the same on any input range.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from robaudit.ops.fab import MinNormResult
from robaudit.ops.projections import Norm, clip_to_box, lp_norm, project_lp
from robaudit.ops.square import margin

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

GAMMA_INIT, GAMMA_FINAL = 0.05, 0.001
ALPHA_INIT, ALPHA_FINAL = 1.0, 0.01


def _cosine(start: float, end: float, k: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def fmn(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm,
    steps: int,
    input_range: tuple[float, float] | None = None,
) -> MinNormResult:
    """FMN on ``x`` with labels ``y`` for ``steps`` steps: the smallest misclassified point
    found per sample."""
    x = x.detach()
    n = x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))
    delta = torch.zeros_like(x)
    radius = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    best = x.clone()
    best_norm = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    for k in range(steps + 1):
        with torch.enable_grad():
            da = delta.detach().requires_grad_(True)
            loss = margin(logits_fn(x + da), y)
            (grad,) = torch.autograd.grad(loss.sum(), da)
        loss = loss.detach()
        size = lp_norm(delta, norm)
        adversarial = loss < 0
        better = adversarial & (size < best_norm)
        best[better], best_norm[better] = x[better] + delta[better], size[better]
        if k == steps:
            break
        gamma = _cosine(GAMMA_INIT, GAMMA_FINAL, k, steps)
        alpha = _cosine(ALPHA_INIT, ALPHA_FINAL, k, steps)
        dual = grad.flatten(1).norm(p=1 if norm == "linf" else 2, dim=1)
        estimate = (size + loss.clamp_min(0) / dual.clamp_min(1e-30)) * (1 + gamma)
        found = torch.isfinite(best_norm)
        radius = torch.where(
            found,
            torch.where(adversarial, torch.minimum(radius, best_norm) * (1 - gamma),
                        radius * (1 + gamma)),
            estimate)
        if norm == "l2":
            direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
        else:
            direction = grad.sign()
        moved = delta - alpha * radius.view(shape) * direction
        delta = clip_to_box(x + project_lp(moved, radius, norm), input_range) - x
    return MinNormResult(points=best, found=torch.isfinite(best_norm), norm=best_norm)
