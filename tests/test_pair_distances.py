"""Sampled pairs' distances by the cheaper of the pairs and a blockwise distance matrix
(issue #23, ``robaudit.ops.pairdistances``): the same bits either way, the stated cost model,
and reads bounded by the block."""

from __future__ import annotations

import itertools

import pytest
import torch

from robaudit.ops import pairdistances
from robaudit.ops.neighbors import pair_distances
from robaudit.ops.pairdistances import PairBlocks, matrix_pair_distances, sampled_pair_distances


def _pairs(n: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs of distinct rows, in either order (as the metric draws them, unordered)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, n, (count,), generator=g)
    return first, (first + torch.randint(1, n, (count,), generator=g)) % n


@pytest.mark.parametrize("dtype, shape, rows", [
    (torch.float32, (3, 32, 32), 64), (torch.float32, (37,), 5), (torch.float64, (7,), 1),
    (torch.float32, (5,), 1000)])
def test_matrix_path_gives_the_pairs_bits(dtype, shape, rows):
    points = torch.rand(150, *shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    first, second = _pairs(150, 3000)
    first, second = first.view(30, 100), second.view(30, 100)
    blocks = PairBlocks.of(first, second, 150, rows)
    matrix = matrix_pair_distances(points, blocks, torch.device("cpu")).view(first.shape)
    direct = pair_distances(points, points, first, second, chunk=rows)
    assert torch.equal(matrix, direct)
    # and symmetric: (a, b) and (b, a) are one pair
    assert torch.equal(pair_distances(points, points, second, first, chunk=rows), direct)


def test_evaluations_are_the_blocks_that_hold_a_pair():
    """Brute force: enumerate every block of the upper triangle and the pairs in it."""
    n, rows = 50, 8
    first, second = _pairs(n, 40, seed=3)
    blocks = PairBlocks.of(first, second, n, rows)
    starts = range(0, n, rows)
    held = 0
    for r0, c0 in itertools.product(starts, starts):
        inside = [(a, b) for a, b in zip(first.tolist(), second.tolist(), strict=True)
                  if r0 <= min(a, b) < r0 + rows and c0 <= max(a, b) < c0 + rows]
        if inside:
            held += min(rows, n - r0) * min(rows, n - c0)
    assert blocks.evaluations() == held
    assert 0 < held < (n // rows + 1) ** 2 * rows**2  # some blocks hold none


@pytest.mark.parametrize("n, matrix", [(256, True), (1024, False)])
def test_cost_model_at_the_default_audit(n, matrix, monkeypatch):
    """The default 1,000 trials × 100 pairs at d = 3072 and batch 256 (blocks of 256 rows):
    N = 256 is one 256 × 256 block (65,536 evaluations < 100,000 pairs): the matrix; N = 1024
    holds all 10 blocks of the upper triangle (655,360 > 100,000): the pairs."""
    first, second = _pairs(n, 100_000)
    assert PairBlocks.of(first, second, n, 256).evaluations() == (65_536 if matrix else 655_360)
    taken = []
    original = pairdistances.matrix_pair_distances
    monkeypatch.setattr(pairdistances, "matrix_pair_distances",
                        lambda *a: taken.append(1) or original(*a))
    points = torch.rand(n, 2)  # the cost model does not look at the values
    sampled_pair_distances(points, first, second, rows=256)
    assert bool(taken) is matrix


class Reads:
    """A split that records the rows each read asks for (a lazy split reads them from disk)."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points, self.largest = points, 0

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: slice) -> torch.Tensor:
        rows = self.points[index]
        self.largest = max(self.largest, rows.shape[0])
        return rows


def test_matrix_path_reads_one_block_of_rows_at_a_time():
    points = torch.rand(500, 3, 4, 4)
    first, second = _pairs(500, 200_000)
    split = Reads(points)
    out = sampled_pair_distances(split, first, second, rows=100)  # type: ignore[arg-type]
    assert split.largest == 100  # 15 blocks of 100 × 100 < 200,000 pairs: the matrix path
    assert torch.equal(out, pair_distances(points, points, first, second, chunk=100))
