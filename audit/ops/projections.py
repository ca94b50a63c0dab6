"""ℓp norms and projections onto ℓp balls, per sample (the budget constraint of attacks and of
universal perturbations, Moosavi-Dezfooli et al. 2017, Algorithm 1's projection P_{p,ξ}).

Every function takes ``batched``: with ``batched=True`` (the default) the first dimension of
``v`` indexes samples and each sample ``v[i]`` (any shape) is measured / projected on its own;
with ``batched=False`` ``v`` is one perturbation and all of its entries are taken together.
"""

from __future__ import annotations

from typing import Literal

import torch

Norm = Literal["l2", "linf"]


def lp_norm(v: torch.Tensor, norm: Norm, *, batched: bool = True) -> torch.Tensor:
    """The ℓ2 or ℓ∞ norm of each sample of ``v``: shape (N,) when batched, else a scalar."""
    flat = v.flatten(1) if batched else v.reshape(1, -1)
    if norm == "l2":
        out = flat.norm(p=2, dim=1)
    elif norm == "linf":
        out = flat.abs().amax(dim=1)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected 'l2' or 'linf'")
    return out if batched else out[0]


def project_lp(
    v: torch.Tensor, eps: float | torch.Tensor, norm: Norm, *, batched: bool = True
) -> torch.Tensor:
    """The Euclidean projection of each sample of ``v`` onto the ℓp ball of radius ``eps``.

    ℓ∞: every entry clipped to [−eps, eps]. ℓ2: the sample rescaled to norm ``eps`` only when it
    lies outside the ball (inside points are returned unchanged). ``eps`` is a number or, when
    batched, a tensor of one radius per sample. The projection is idempotent.
    """
    radius = torch.as_tensor(eps, dtype=v.dtype, device=v.device)
    if batched and radius.dim() == 1:
        radius = radius.view(-1, *([1] * (v.dim() - 1)))
    if norm == "linf":
        return torch.maximum(torch.minimum(v, radius), -radius)
    if norm == "l2":
        size = lp_norm(v, "l2", batched=batched)
        if batched:
            size = size.view(-1, *([1] * (v.dim() - 1)))
        scale = torch.clamp(radius / size.clamp_min(torch.finfo(v.dtype).tiny), max=1.0)
        return v * scale
    raise ValueError(f"unknown norm {norm!r}; expected 'l2' or 'linf'")


def clip_to_box(v: torch.Tensor, input_range: tuple[float, float] | None) -> torch.Tensor:
    """``v`` clamped to the input box ``[low, high]`` (unchanged when there is no box)."""
    return v if input_range is None else v.clamp(*input_range)
