"""Distances of sampled pairs of one set, from the pairs themselves or from a distance matrix
computed in blocks, whichever needs fewer distance evaluations.

Rank-order deformation (Ghorbani & Zou 2017, section 2, Algorithm 2) is defined on random
pairs; on a small split they repeat, and the distance matrix of the split holds every one of
them at a fraction of the cost. Both paths give the same bits for the same pair: the matrix
path computes ``torch.cdist``'s direct distances (no ‖a‖² + ‖b‖² − 2a·b expansion) of a block
of rows against a block of columns, as :func:`robaudit.ops.neighbors.pair_distances` does for
one pair at a time, and gathers the sampled pairs from each block.

Cost model, in distance evaluations of D values each (D cancels): the pairs cost one
evaluation each (plus gathering their two rows); the matrix costs rows × columns for every
block of the upper triangle (pairs are taken as (min, max)) that holds at least one sampled
pair. :func:`sampled_pair_distances` takes the matrix when its count is at most the pairs'.
Memory: one block of ``rows`` × ``rows`` distances and its two blocks of inputs, read as
``points[a:b]`` slices; never the N × N matrix, nor the whole set at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robaudit.ops.neighbors import pair_distances


@dataclass(frozen=True)
class PairBlocks:
    """Pairs of an ``n``-row set by block of the distance matrix: each pair as (low, high),
    the pairs' order by block key (row block × side + column block), the keys of the blocks
    that hold a pair (ascending: row block first) and their pairs' count."""

    n: int
    rows: int
    side: int
    low: torch.Tensor
    high: torch.Tensor
    order: torch.Tensor
    keys: list[int]
    counts: list[int]

    @classmethod
    def of(cls, first: torch.Tensor, second: torch.Tensor, n: int, rows: int) -> PairBlocks:
        low = torch.minimum(first, second).reshape(-1).cpu()
        high = torch.maximum(first, second).reshape(-1).cpu()
        side = -(-n // rows)
        key = (low // rows) * side + high // rows
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        return cls(n, rows, side, low, high, order, keys.tolist(), counts.tolist())

    def size(self, block: int) -> int:
        """Rows (or columns) of row (column) block ``block``."""
        return min(self.rows, self.n - block * self.rows)

    def evaluations(self) -> int:
        """Distance evaluations of the matrix path: the sizes of the blocks that hold a pair."""
        return sum(self.size(k // self.side) * self.size(k % self.side) for k in self.keys)


def matrix_pair_distances(points: torch.Tensor, blocks: PairBlocks,
                          device: torch.device) -> torch.Tensor:
    """The distances of ``blocks``' pairs of ``points``, in their order (flat), gathered from
    the blocks of the distance matrix that hold a pair, computed one at a time on ``device``."""
    rows = blocks.rows
    out: torch.Tensor | None = None
    left_block, left, start = -1, points[:0], 0
    for key, count in zip(blocks.keys, blocks.counts, strict=True):
        i, j = divmod(key, blocks.side)
        if i != left_block:  # keys come in order: each row block is read once
            left_block, left = i, points[i * rows : (i + 1) * rows].flatten(1).to(device)
        right = points[j * rows : (j + 1) * rows].flatten(1).to(device)
        dist = torch.cdist(left, right, compute_mode="donot_use_mm_for_euclid_dist")
        if out is None:
            out = torch.empty(blocks.low.shape[0], device=device, dtype=dist.dtype)
        pick, start = blocks.order[start : start + count], start + count
        out[pick.to(device)] = dist[(blocks.low[pick] - i * rows).to(device),
                                    (blocks.high[pick] - j * rows).to(device)]
    if out is None:
        raise ValueError("no pairs asked for")
    return out


def sampled_pair_distances(
    points: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    rows: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """‖points[first] − points[second]‖₂ for index tensors of the same shape, by the cheaper
    path (module docstring): the pairs ``rows`` at a time
    (:func:`robaudit.ops.neighbors.pair_distances`), or the ``rows`` × ``rows`` blocks of the
    distance matrix that hold a pair. The same bits either way; on ``device`` (default
    ``points``'), of ``first``'s shape."""
    device = torch.device(device) if device is not None else points[:1].device
    blocks = PairBlocks.of(first, second, len(points), rows)
    if blocks.evaluations() <= first.numel():
        return matrix_pair_distances(points, blocks, device).view(first.shape)
    return pair_distances(points, points, first, second, chunk=rows, device=device)
