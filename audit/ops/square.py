"""The Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): a black-box random
search that needs only the logits, the gradient-free member of AutoAttack (Croce & Hein 2020).

It minimises the margin loss L = z_y − max_{j≠y} z_j (the sample is fooled when L < 0). Each
query changes the perturbation inside one random square window of side s, with s² ≈ p · H · W
and p halved on the schedule of the paper (p_init = 0.8, halved at the iterations 10, 50,
200, 500, 1000, 2000, 4000, 6000, 8000 of 10 000, rescaled to ``queries``), and keeps the
change only when L decreases.

- ℓ∞ (section 3.1): the start is vertical stripes, ±ε per channel and column; a query sets
  the window to ±ε per channel (a vertex of the ball), clipped to the input box.
- ℓ2 (section 3.2): the start is ±ε/√d per channel and column; a query moves the mass of two
  random windows into the first, as a centred bump (weights 1/(1 + r)², r the ℓ∞ distance
  to the window's centre) of random sign per channel, and the whole perturbation is rescaled
  to norm ε (a simplification of the paper's mass-preserving update: the norm is exactly ε
  before the clip to the box, which can only shrink it).

Inputs of shape (C, H, W) are windowed as images; a flat input of d numbers as a 1 × 1 × d
image whose "squares" are segments of length ≈ p · d. Every random number of a sample (its
start, its windows and signs) is drawn at once from its own seed (:mod:`robaudit.ops.sampling`),
so its run does not depend on its batch; samples leave the batch once fooled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robaudit.ops.projections import Norm, clip_to_box, lp_norm
from robaudit.ops.sampling import per_sample

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

#: The initial window share p.
P_INIT = 0.8
#: The iterations (of 10 000) at which p is halved.
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_share(iteration: int, queries: int) -> float:
    """p at ``iteration`` of a run of ``queries`` queries."""
    scaled = iteration * 10_000 / max(queries, 1)
    return P_INIT / 2 ** sum(scaled > h for h in HALVINGS)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per sample (negative when misclassified)."""
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return logits.gather(1, y[:, None]).squeeze(1) - other


def _as_image(shape: torch.Size) -> tuple[int, int, int]:
    """The (C, H, W) view of a sample's shape: images as they are, anything else flat."""
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    return 1, 1, int(torch.Size(shape).numel())


def _window(p: float, height: int, width: int) -> tuple[int, int]:
    """The window's (rows, columns) for share p: a square, or a segment on a 1-row image."""
    if height == 1:
        return 1, max(1, min(width, round(p * width)))
    side = max(1, min(height, width, round(math.sqrt(p * height * width))))
    return side, side


def _mask(top: torch.Tensor, left: torch.Tensor, rows: int, cols: int, height: int,
          width: int) -> torch.Tensor:
    """(N, 1, H, W) masks of the windows at ``top``/``left`` (N each) of size rows × cols."""
    r = torch.arange(height, device=top.device)
    c = torch.arange(width, device=top.device)
    inside_r = (r[None, :] >= top[:, None]) & (r[None, :] < top[:, None] + rows)
    inside_c = (c[None, :] >= left[:, None]) & (c[None, :] < left[:, None] + cols)
    return (inside_r[:, :, None] & inside_c[:, None, :])[:, None]


@dataclass(frozen=True)
class SquareResult:
    """Square on N samples: the final points, whether each was fooled, its lowest margin."""

    points: torch.Tensor
    fooled: torch.Tensor
    best_margin: torch.Tensor


def square(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    queries: int,
    seeds: torch.Tensor,
    input_range: tuple[float, float] | None = None,
) -> SquareResult:
    """The Square attack on ``x`` (labels ``y``) within the ℓp ball of radius ``eps``, at most
    ``queries`` forward passes per sample (the start counts as one)."""
    x = x.detach()
    n = x.shape[0]
    channels, height, width = _as_image(x.shape[1:])
    image = x.reshape(n, channels, height, width)
    per_query = 4 + channels
    # a sample's draws: the start's signs, then per query two windows' corners and the signs
    draws = per_sample(seeds, lambda g: torch.rand(channels * width + queries * per_query,
                                                   generator=g))
    start_signs = torch.where(draws[:, : channels * width] < 0.5, -1.0, 1.0)
    steps = draws[:, channels * width:].reshape(n, queries, per_query)
    stripes = start_signs.reshape(n, channels, 1, width).expand(n, channels, height, width)
    dim = channels * height * width
    scale = eps if norm == "linf" else eps / math.sqrt(dim)
    delta = scale * stripes.to(x.device, x.dtype)  # ±scale exactly in x's precision

    def evaluate(rows: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidate = clip_to_box(image[rows] + d, input_range)
        with torch.no_grad():
            loss = margin(logits_fn(candidate.reshape(-1, *x.shape[1:])), y[rows])
        return candidate - image[rows], loss

    every = torch.arange(n, device=x.device)
    delta, best = evaluate(every, delta)
    for it in range(queries - 1):
        rows = (best >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        u = steps[rows.cpu(), it].to(x.device, x.dtype)
        wr, wc = _window(window_share(it, queries), height, width)
        top = (u[:, 0] * (height - wr + 1)).long().clamp(max=height - wr)
        left = (u[:, 1] * (width - wc + 1)).long().clamp(max=width - wc)
        first = _mask(top, left, wr, wc, height, width)
        signs = torch.where(u[:, 4:] < 0.5, -1.0, 1.0).to(x.dtype).view(-1, channels, 1, 1)
        current = delta[rows]
        if norm == "linf":
            proposal = torch.where(first, eps * signs, current)
        else:
            top2 = (u[:, 2] * (height - wr + 1)).long().clamp(max=height - wr)
            left2 = (u[:, 3] * (width - wc + 1)).long().clamp(max=width - wc)
            both = first | _mask(top2, left2, wr, wc, height, width)
            mass = (current * both).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            bump = _bump(top, left, wr, wc, height, width).to(x.dtype) * signs * first
            bump = bump * mass / bump.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            proposal = torch.where(both, bump, current)
            size = lp_norm(proposal, "l2").clamp_min(1e-30).view(-1, 1, 1, 1)
            proposal = proposal * (eps / size)
        moved, loss = evaluate(rows, proposal)
        keep = loss < best[rows]
        delta[rows[keep]] = moved[keep]
        best[rows[keep]] = loss[keep]
    points = (image + delta).reshape(x.shape)
    return SquareResult(points=points, fooled=best < 0, best_margin=best)


def _bump(top: torch.Tensor, left: torch.Tensor, rows: int, cols: int, height: int,
          width: int) -> torch.Tensor:
    """(N, 1, H, W) weights 1/(1 + r)² inside each window, r the ℓ∞ distance (in pixels) to
    the window's centre; 0 outside."""
    r = torch.arange(height, device=top.device, dtype=torch.float64)
    c = torch.arange(width, device=top.device, dtype=torch.float64)
    dr = (r[None, :] - (top[:, None] + (rows - 1) / 2)).abs()
    dc = (c[None, :] - (left[:, None] + (cols - 1) / 2)).abs()
    distance = torch.maximum(dr[:, :, None], dc[:, None, :])
    return (1.0 / (1.0 + distance) ** 2)[:, None]
