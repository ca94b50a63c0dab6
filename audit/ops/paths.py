"""Batched path finding inside a classification region (Fawzi, Moosavi-Dezfooli, Frossard &
Soatto, CVPR 2018, section "Topology of classification regions", Algorithm 1 FINDPATH).

FINDPATH(x₁, x₂) takes the midpoint x_m of the segment, projects it into the region of
k̂(x₁) when it is outside (the targeted minimal perturbation of :mod:`robaudit.ops.targeted`),
accepts the path (x₁, x_m, x₂) when both of its segments stay in the region, and otherwise
recurses on both halves. Validity is checked by sampling each segment at spacing
``step`` × ‖x₁ − x₂‖ (the paper's ``step`` is 10⁻⁴).

Choices where the paper is silent or that a batched, bounded form needs:

- Only the *invalid* halves are searched again. The paper recurses on both, but on a valid
  half that recursion only inserts collinear anchors (its midpoint is in the region and both
  its halves are valid), so the path and its length are the same and the anchor count is not
  inflated. A pair whose straight segment is valid has one anchor, its midpoint (the paper's
  P = (x₁, x_m, x₂)).
- The recursion "does not take no for an answer" in the paper; here it is bounded: a segment
  still invalid at depth ``max_depth`` (the top call has depth 1), more than ``max_anchors``
  anchors, or a midpoint that the targeted step does not bring into the region within its
  ``max_iter`` steps, end the search of that pair with "not found".
- Validity: a segment of length ℓ is cut into m = ⌈ℓ / spacing⌉ equal intervals and its
  m − 1 interior points are classified (the endpoints are in the region by construction), so
  an excursion of the segment out of the region longer than the spacing is always seen.
  The interior points are visited in a coarse-to-fine order (a golden-ratio stride through
  the grid) and a segment's remaining points are skipped once one point is out, so an invalid
  segment usually costs a handful of forward passes.
- Batching: all the segments of one recursion level, of every pair, are processed together;
  midpoints, projections and validity points go through the model in chunks of
  ``batch_size``. Memory: the open segments (at most ``max_anchors`` + 1 per pair) and one
  chunk of points; callers pass chunks of pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from robaudit.ops.targeted import targeted_deepfool

#: The golden ratio's fractional part: the stride of the coarse-to-fine visiting order.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class PathResult:
    """The outcome of :func:`find_paths` for P pairs (tensors on the pairs' device).

    found        (P,) bool: a valid path was found within the budget.
    anchors      (P,) long: the anchor points p₁ … p_n inserted (final count when found).
    length       (P,) float64: the path's length Σ‖p_i − p_{i+1}‖ (when found).
    ratio        (P,) float64: D(p) = length / ‖x₁ − x₂‖ (1 for a straight path; NaN when not
                 found).
    straight     (P,) bool: the straight segment x₁ → x₂ is valid.
    depth        (P,) long: the deepest recursion level reached.
    forwards     (P,) long: forward passes spent (midpoints and validity points).
    projections  (P,) long: linearised targeted steps spent on midpoints (each one forward
                 pass and ``candidates`` − 1 input gradients).
    """

    found: torch.Tensor
    anchors: torch.Tensor
    length: torch.Tensor
    ratio: torch.Tensor
    straight: torch.Tensor
    depth: torch.Tensor
    forwards: torch.Tensor
    projections: torch.Tensor

    @staticmethod
    def concat(parts: list[PathResult]) -> PathResult:
        """The results of consecutive chunks of pairs as one result."""
        return PathResult(
            *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(PathResult))
        )


def segments_valid(
    predict: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    end: torch.Tensor,
    label: torch.Tensor,
    spacing: torch.Tensor,
    *,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each segment start[s] → end[s] stays in the region of ``label[s]``, sampled at
    ``spacing[s]`` (see the module docstring), and the forward passes spent on each segment.

    ``predict`` maps a batch of inputs to labels. Returns (valid (S,) bool, forwards (S,) long).
    """
    device = start.device
    count = start.shape[0]
    lengths = (end - start).flatten(1).double().norm(dim=1)
    intervals = torch.where(
        spacing > 0, torch.ceil(lengths / spacing.double().clamp_min(1e-300)), 1.0
    ).clamp_min(1.0).long()
    intervals = intervals.cpu()
    interior = intervals - 1
    strides = torch.tensor([_coprime_stride(int(m)) for m in interior], dtype=torch.long)
    valid = torch.ones(count, dtype=torch.bool, device=device)
    forwards = torch.zeros(count, dtype=torch.long, device=device)
    ends = interior.cumsum(0)
    total = int(ends[-1]) if count else 0
    for first in range(0, total, batch_size):
        flat = torch.arange(first, min(first + batch_size, total))
        seg = torch.searchsorted(ends, flat, right=True)
        rank = flat - (ends[seg] - interior[seg])
        keep = valid[seg.to(device)].cpu()
        seg, rank = seg[keep], rank[keep]
        if seg.numel() == 0:
            continue
        index = 1 + (rank * strides[seg]) % interior[seg]
        t = (index.double() / intervals[seg].double()).to(device, start.dtype)
        seg = seg.to(device)
        shape = (-1, *([1] * (start.dim() - 1)))
        points = start[seg] + t.view(shape) * (end[seg] - start[seg])
        out = predict(points) != label[seg]
        forwards.index_add_(0, seg, torch.ones_like(seg))
        valid[seg[out]] = False
    return valid, forwards


def _coprime_stride(m: int) -> int:
    """A stride near golden · m that is coprime with m, so that r ↦ r · stride mod m visits
    every grid point once, spreading the first visits over the whole segment."""
    if m <= 2:
        return 1
    stride = max(1, round(_GOLDEN * m))
    while math.gcd(stride, m) != 1:
        stride += 1
    return stride


def find_paths(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x1: torch.Tensor,
    x2: torch.Tensor,
    label: torch.Tensor,
    *,
    step: float = 1e-2,
    max_depth: int = 10,
    max_anchors: int = 64,
    batch_size: int = 256,
    candidates: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
    input_range: tuple[float, float] | None = None,
) -> PathResult:
    """FINDPATH (Algorithm 1) for the pairs x1[p] → x2[p] inside the region of ``label[p]``,
    both endpoints being classified as ``label[p]``; all pairs are searched at once, one
    recursion level at a time. See the module docstring for the choices and the budget.
    ``candidates``, ``overshoot``, ``max_iter`` and ``input_range`` go to the targeted step."""
    device = x1.device
    pairs = x1.shape[0]
    label = label.to(device).long()

    def predict(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return logits_fn(v).argmax(dim=1)

    distance = (x2 - x1).flatten(1).double().norm(dim=1)
    spacing = step * distance
    anchors, depth, forwards, projections = (
        torch.zeros(pairs, dtype=torch.long, device=device) for _ in range(4)
    )
    length = torch.zeros(pairs, dtype=torch.float64, device=device)
    failed = torch.zeros(pairs, dtype=torch.bool, device=device)
    straight = torch.zeros(pairs, dtype=torch.bool, device=device)
    # A pair of identical points is joined by the empty path.
    owner = (distance > 0).nonzero().squeeze(1)
    start, end = x1[owner], x2[owner]
    level = 1
    while owner.numel() > 0:
        depth[owner] = level
        mid = (start + end) / 2
        for first in range(0, owner.numel(), batch_size):
            part = slice(first, first + batch_size)
            outside = predict(mid[part]) != label[owner[part]]
            forwards.index_add_(0, owner[part], torch.ones_like(owner[part]))
            which = outside.nonzero().squeeze(1) + first
            if which.numel() == 0:
                continue
            moved = targeted_deepfool(
                logits_fn, mid[which], label[owner[which]], candidates=candidates,
                overshoot=overshoot, max_iter=max_iter, input_range=input_range,
            )
            mid[which] = moved.point
            projections.index_add_(0, owner[which], moved.iterations)
            failed[owner[which[~moved.reached]]] = True
        anchors.index_add_(0, owner, torch.ones_like(owner))
        failed |= anchors > max_anchors
        halves_start = torch.cat([start, mid])
        halves_end = torch.cat([mid, end])
        halves_owner = torch.cat([owner, owner])
        live = ~failed[halves_owner]
        halves_start, halves_end = halves_start[live], halves_end[live]
        halves_owner = halves_owner[live]
        valid, spent = segments_valid(
            predict, halves_start, halves_end, label[halves_owner], spacing[halves_owner],
            batch_size=batch_size,
        )
        forwards.index_add_(0, halves_owner, spent)
        if level == 1:
            both = torch.zeros(pairs, dtype=torch.long, device=device)
            both.index_add_(0, halves_owner, valid.long())
            straight = (both == 2) & (projections == 0)
        seg_length = (halves_end - halves_start).flatten(1).double().norm(dim=1)
        length.index_add_(0, halves_owner[valid], seg_length[valid])
        again = ~valid
        if level >= max_depth:
            failed[halves_owner[again]] = True
        keep = again & ~failed[halves_owner]
        owner, start, end = halves_owner[keep], halves_start[keep], halves_end[keep]
        level += 1
    straight = straight | (distance == 0)
    found = ~failed
    ratio = torch.where(found & (distance > 0), length / distance.clamp_min(1e-300),
                        torch.where(found, 1.0, float("nan")).double())
    return PathResult(
        found=found, anchors=anchors, length=length, ratio=ratio, straight=straight,
        depth=depth, forwards=forwards, projections=projections,
    )
