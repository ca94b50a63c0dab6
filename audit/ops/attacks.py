"""Gradient attacks on a batch: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018).

Both ascend the cross-entropy of the true label, take input gradients with
``torch.autograd.grad`` and clip every point to the model's input box when one is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from robaudit.ops.projections import Norm, clip_to_box, project_lp
from robaudit.ops.sampling import per_sample, sample_seeds

LogitsFn = Callable[[torch.Tensor], torch.Tensor]



def _loss_gradient(
    logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at ``x`` and the input gradient of the summed cross-entropy of ``y``
    (per-sample gradients, since the samples do not interact)."""
    with torch.enable_grad():
        xa = x.detach().requires_grad_(True)
        logits = logits_fn(xa)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
    return logits.detach(), grad


def fgsm(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    input_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The fast gradient sign method: x + eps · sign(∇ₓ loss(x, y)), clipped to the box
    (one forward and one backward pass)."""
    _, grad = _loss_gradient(logits_fn, x, y)
    return clip_to_box(x + eps * grad.sign(), input_range).detach()


def random_in_ball(
    seeds: torch.Tensor, sample_shape: Sequence[int], eps: float, norm: Norm
) -> torch.Tensor:
    """Points drawn uniformly from the ℓp ball of radius ``eps``, one per seed of ``seeds``
    (shape ``(len(seeds), *sample_shape)``, on the CPU; each from its own seed, see
    :mod:`robaudit.ops.sampling`): ℓ∞ uniform per coordinate; ℓ2 a Gaussian direction
    scaled by eps · u^(1/d), u uniform on [0, 1] and d the dimension of a sample."""
    shape = tuple(sample_shape)
    dim = int(torch.Size(shape).numel())

    def draw(generator: torch.Generator) -> torch.Tensor:
        if norm == "linf":
            return (2 * torch.rand(shape, generator=generator) - 1) * eps
        direction = torch.randn(shape, generator=generator)
        radius = eps * float(torch.rand((), generator=generator)) ** (1.0 / dim)
        return direction * (radius / float(direction.norm().clamp_min(1e-30)))

    return per_sample(seeds, draw)


def pgd(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float,
    random_start: bool = True,
    seeds: torch.Tensor | None = None,
    input_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Projected gradient ascent of the cross-entropy in the ℓp ball of radius ``eps``.

    Each step is x_t + step_size · sign(g) (ℓ∞) or x_t + step_size · g/‖g‖₂ (ℓ2), projected
    back onto the ball around x and clipped to the box. The start is x, or with
    ``random_start`` a uniform point of the ball drawn from the sample's own seed of
    ``seeds`` (one int64 seed per sample of x, from :func:`robaudit.ops.sampling.sample_seeds`;
    default: seeds from torch's global generator), so that a sample's start does not depend
    on the batch it is in.

    Returns, per sample, the first iterate that the model misclassifies, or the last iterate
    when none is: a sample leaves the batch as soon as one of its iterates is misclassified,
    so later steps compute only the samples still standing (the result is the same as
    running every sample for all ``steps`` and keeping any misclassified iterate).
    """
    x = x.detach()
    start = x
    if random_start:
        if seeds is None:
            seeds = sample_seeds(None, x.shape[0])
        start = x + random_in_ball(seeds, x.shape[1:], eps, norm).to(x.device, x.dtype)
    current = clip_to_box(start, input_range).clone()
    active = torch.arange(x.shape[0], device=x.device)
    shape = (-1, *([1] * (x.dim() - 1)))
    for _ in range(steps):
        if active.numel() == 0:
            break
        logits, grad = _loss_gradient(logits_fn, current[active], y[active])
        standing = logits.argmax(dim=1) == y[active]
        active, grad = active[standing], grad[standing]
        if norm == "linf":
            ascent = grad.sign()
        else:
            ascent = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
        moved = current[active] + step_size * ascent
        delta = project_lp(moved - x[active], eps, norm)
        current[active] = clip_to_box(x[active] + delta, input_range)
    return current
