"""The local lower bound that ``lipschitz_bound`` reports beside its upper bound.

Any measured ratio ‖f(x) − f(x′)‖ / ‖x − x′‖, and the spectral norm ‖J(x)‖₂ of the logits'
Jacobian at a point where f is differentiable, is at most the network's Lipschitz constant L.
So the largest such number found around the audit points is a lower bound of L, and the upper
bound's ratio to it says how loose the layer-by-layer product of Szegedy et al. (2014, §4.3)
is on this network (the paper's Table 5 reports only the upper bounds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Logits = Callable[["torch.Tensor"], "torch.Tensor"]

#: Norms below this count as zero (a direction the network does not respond to).
TINY = 1e-30


@dataclass(frozen=True)
class LocalLower:
    """The largest local constant found (``value``), at which audit sample (``sample``, an
    index into the points), and how many points were searched."""

    value: float
    sample: int
    points: int


def _unit(v: torch.Tensor) -> torch.Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(TINY)
    return v / norms.view(-1, *[1] * (v.dim() - 1))


def jacobian_norms(logits: Logits, x: torch.Tensor, iterations: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """‖J(x_i) v_i‖ for each sample x_i and its unit vector v_i after ``iterations`` steps of
    power iteration on JᵀJ (so at most, and converging to, ‖J(x_i)‖₂), with the v_i.

    J v comes from the double-backward identity J v = ∂(Jᵀw)/∂w · v, Jᵀu from one backward
    pass; samples are independent because the model is in eval mode."""
    import torch

    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = logits(x)
        w = torch.zeros_like(y, requires_grad=True)
        (transposed,) = torch.autograd.grad(y, x, w, create_graph=True)
        v = _unit(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
        for _ in range(iterations):
            (jv,) = torch.autograd.grad(transposed, w, v, retain_graph=True)
            (jtjv,) = torch.autograd.grad(y, x, jv, retain_graph=True)
            v = _unit(jtjv)
        (jv,) = torch.autograd.grad(transposed, w, v)
    return jv.flatten(1).norm(dim=1).detach(), v.detach()


def ascend_ratios(logits: Logits, x: torch.Tensor, start: torch.Tensor, radius: float,
                  steps: int) -> torch.Tensor:
    """The largest ‖f(x + δ) − f(x)‖ / ‖δ‖ per sample over ``steps`` steps of normalised
    gradient ascent on δ, from δ = ``radius``·``start`` (a unit direction)."""
    import torch

    with torch.no_grad():
        base = logits(x)
    delta = (radius * start).detach()
    best = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        with torch.enable_grad():
            norms = delta.flatten(1).norm(dim=1).clamp_min(TINY)
            ratios = (logits(x + delta) - base).flatten(1).norm(dim=1) / norms
            (grad,) = torch.autograd.grad(ratios.sum(), delta)
        best = torch.maximum(best, ratios.detach())
        step = 0.5 * norms.detach().view(-1, *[1] * (x.dim() - 1)) * _unit(grad)
        delta = (delta.detach() + step).detach()
    return best


def local_lower_bound(logits: Logits, x: torch.Tensor, *, iterations: int, steps: int,
                      radius: float, batch_size: int, generator: torch.Generator
                      ) -> LocalLower:
    """The largest of ‖J(x_i)‖₂ (power iteration) and of the difference quotients found by
    gradient ascent from x_i along its top singular direction, over the points ``x``."""
    import torch

    found = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        norms, directions = jacobian_norms(logits, chunk, iterations, generator)
        ratios = ascend_ratios(logits, chunk, directions, radius, steps)
        found.append(torch.maximum(norms, ratios))
    values = torch.cat(found)
    best = int(values.argmax())
    return LocalLower(float(values[best]), best, len(x))
