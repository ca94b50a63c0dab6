"""FAB-T, the targeted fast adaptive boundary attack (Croce & Hein, ICML 2020, "Minimally
distorted adversarial examples with a fast adaptive boundary attack", section 3; the targeted
version of "Reliable evaluation…", section 5), a minimum-norm attack.

For a target class t, the boundary between the label y and t is linearised at the iterate x_i:
g(z) ≈ g(x_i) + ∇g(x_i)·(z − x_i) with g = f_t − f_y. The projections onto that hyperplane of
x_i and of the original x are δ_i and δ_o (ℓ2: −g̃ · w/‖w‖₂², ℓ∞: −g̃ · sign(w)/‖w‖₁, g̃ the
linearised g at the projected point), and the next iterate is the biased step

    x_{i+1} = clip((1 − α)(x_i + η δ_i) + α (x + η δ_o)),  α = min(‖δ_i‖ / (‖δ_i‖ + ‖δ_o‖), α_max)

with η = 1.05 (the overshoot) and α_max = 0.1. Once an iterate is misclassified it is kept if
it is the nearest so far, and the next iterate steps back towards x: x_{i+1} ← (1 − β) x + β
x_{i+1}, β = 0.9. The paper projects onto the hyperplane intersected with the box exactly;
here the unconstrained projection is clipped to the box (the same where the box is far, as
in the tests' closed forms; a longer path near its faces). The first iterate is x itself,
and each target of the top ``targets`` other classes (by the clean logits) is one run; the
result per sample is the smallest misclassified point over the targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from robaudit.ops.projections import Norm, clip_to_box, lp_norm

if TYPE_CHECKING:
    from robaudit.context import AuditContext
    from robaudit.metric import Unit

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

#: The overshoot η of each projection.
OVERSHOOT = 1.05
#: The largest weight α of the step from the original point.
ALPHA_MAX = 0.1
#: The backward step β after a misclassified iterate.
BETA = 0.9


@dataclass(frozen=True)
class MinNormResult:
    """A minimum-norm attack on N samples: ``points`` (the nearest misclassified point found,
    or the sample itself), ``found`` (one was found) and ``norm`` (its distance, inf if none)."""

    points: torch.Tensor
    found: torch.Tensor
    norm: torch.Tensor


def _boundary(logits_fn: LogitsFn, point: torch.Tensor, y: torch.Tensor, t: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g = f_t − f_y at ``point``, its input gradient, and the predictions there."""
    with torch.enable_grad():
        xa = point.detach().requires_grad_(True)
        logits = logits_fn(xa)
        g = logits.gather(1, t[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(g.sum(), xa)
    return g.detach(), grad, logits.detach().argmax(dim=1)


def _projection(value: torch.Tensor, grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The step onto the hyperplane {value + grad·δ = 0} of least ℓp norm (0 where the
    gradient vanishes)."""
    shape = (-1, *([1] * (grad.dim() - 1)))
    flat = grad.flatten(1)
    if norm == "l2":
        dual = (flat * flat).sum(dim=1)
        direction = grad
    else:
        dual = flat.abs().sum(dim=1)
        direction = grad.sign()
    length = torch.where(dual > 0, -value / dual.clamp_min(1e-30), torch.zeros_like(value))
    return length.view(shape) * direction


def fab_targeted(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm,
    steps: int,
    targets: int,
    input_range: tuple[float, float] | None = None,
) -> MinNormResult:
    """FAB-T on ``x`` with labels ``y``: ``steps`` iterations towards each of the ``targets``
    other classes with the largest clean logits (capped at the classes there are)."""
    x = x.detach()
    with torch.no_grad():
        clean = logits_fn(x)
    count = min(targets, clean.shape[1] - 1)
    ranked = clean.scatter(1, y[:, None], float("-inf")).topk(count, dim=1).indices
    best_points = x.clone()
    best_norm = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    for k in range(count):
        points, found, size = _fab_run(logits_fn, x, y, ranked[:, k], norm, steps, input_range)
        better = found & (size < best_norm)
        best_points[better], best_norm[better] = points[better], size[better]
    return MinNormResult(points=best_points, found=torch.isfinite(best_norm), norm=best_norm)


def _fab_run(logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
             norm: Norm, steps: int, input_range: tuple[float, float] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FAB run towards ``target``: the nearest misclassified iterate, whether there was
    one, and its distance."""
    shape = (-1, *([1] * (x.dim() - 1)))
    current = x.clone()
    best = x.clone()
    best_norm = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    for _ in range(steps):
        g, grad, predicted = _boundary(logits_fn, current, y, target)
        wrong = predicted != y
        size = lp_norm(current - x, norm)
        better = wrong & (size < best_norm)
        best[better], best_norm[better] = current[better], size[better]
        own = _projection(g, grad, norm)
        from_x = _projection(g + (grad * (x - current)).flatten(1).sum(dim=1), grad, norm)
        a, b = lp_norm(own, norm), lp_norm(from_x, norm)
        alpha = (a / (a + b).clamp_min(1e-30)).clamp(max=ALPHA_MAX).view(shape)
        moved = (1 - alpha) * (current + OVERSHOOT * own) + alpha * (x + OVERSHOOT * from_x)
        moved = torch.where(wrong.view(shape), (1 - BETA) * x + BETA * current, moved)
        current = clip_to_box(moved, input_range)
    with torch.no_grad():
        wrong = logits_fn(current).argmax(dim=1) != y
    size = lp_norm(current - x, norm)
    better = wrong & (size < best_norm)
    best[better], best_norm[better] = current[better], size[better]
    return best, torch.isfinite(best_norm), best_norm


def fab_unit(ctx: AuditContext, unit: Unit, *, norm: Norm, steps: int, targets: int
             ) -> MinNormResult:
    """FAB-T on one work unit of the audit split (design §8), labels the clean predictions
    (the true labels on every correctly classified point), on the CPU; cached per run under
    ``("fab", model, split, norm, steps, targets, start, stop)``, so that
    ``autoattack_accuracy`` (at every eps) and ``min_norm_distortion`` share one run. The
    entry is bounded (:class:`robaudit.context.RunCache`): FAB-T draws no random numbers, so a
    unit that the budget did not keep is recomputed to the same numbers, and the run never
    holds an input-sized result per sample of the split."""
    key = ("fab", ctx.model.name, ctx.split, norm, steps, targets, unit.start, unit.stop)

    def compute() -> MinNormResult:
        x = ctx.unit_batch(unit)[0]
        labels = ctx.unit_logits(unit).argmax(dim=1).to(ctx.device)
        result = fab_targeted(ctx.model.logits, x, labels, norm=norm, steps=steps,
                              targets=targets, input_range=ctx.model.input_range)
        return MinNormResult(*(t.cpu() for t in (result.points, result.found, result.norm)))

    return ctx.cache.get_or_compute(key, compute, bounded=True)
