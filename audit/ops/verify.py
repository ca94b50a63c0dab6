"""Re-checking what an attack returns (design §6, "Attack strength"): a perturbation counts
only if it is inside the budget and the input box and one more plain forward pass, apart from
the attack's own, misclassifies it. An attack never reports a point it did not break."""

from __future__ import annotations

from collections.abc import Callable

import torch

from robaudit.ops.projections import Norm, lp_norm

#: Relative slack on the budget for floating-point rounding of the projection.
BUDGET_SLACK = 1e-6


def verified(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    points: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: Norm,
    eps: float | None = None,
    input_range: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, whether ``points`` is a valid adversarial example of ``x`` (label ``y``):
    finite, within ``eps`` in ``norm`` (any distance when ``eps`` is None), inside
    ``input_range``, and misclassified by a fresh forward pass. Also returns the margin
    z_y − max_{j≠y} z_j at ``points`` from that pass (negative when misclassified; inf for a
    point outside the budget or the box, which is no attack point at all)."""
    with torch.no_grad():
        logits = logits_fn(points)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    margin = logits.gather(1, y[:, None]).squeeze(1) - other
    inside = torch.isfinite(points.flatten(1)).all(dim=1)
    if eps is not None:
        inside &= lp_norm(points - x, norm) <= eps * (1 + BUDGET_SLACK)
    if input_range is not None:
        flat = points.flatten(1)
        inside &= (flat >= input_range[0]).all(dim=1) & (flat <= input_range[1]).all(dim=1)
    margin = torch.where(inside, margin, torch.full_like(margin, float("inf")))
    return inside & (logits.argmax(dim=1) != y), margin
