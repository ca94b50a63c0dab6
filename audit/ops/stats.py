"""Statistics shared by metrics and the runner: tie-aware batched Spearman, intervals."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension, ties given their average rank (as scipy's
    ``rankdata(method="average")``), batched over the leading dimensions in O(n log n):
    a value's rank is the mean of (number below) + 1 … (number below or equal)."""
    flat = values.reshape(-1, values.shape[-1]).contiguous()
    ordered = flat.sort(dim=-1).values
    below = torch.searchsorted(ordered, flat, right=False)
    below_or_equal = torch.searchsorted(ordered, flat, right=True)
    return ((below + below_or_equal + 1).double() / 2.0).reshape(values.shape)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank-order correlation of ``a`` and ``b`` along the last dimension, batched:
    the Pearson correlation of the average ranks. A row with a constant input gives NaN."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / torch.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def pair_distances(points: torch.Tensor, matrix_limit: int = 4096
                   ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (first, second) ↦ ‖points[first] − points[second]‖₂ for index tensors of any
    (equal) shape, to be called for many batches of pairs.

    Up to ``matrix_limit`` points, the N×N distance matrix is computed once here with
    ``torch.cdist`` (far faster than gathering every pair; at most 64 MB) and indexed; beyond
    it each call gathers its pairs, in memory O(pairs · dim). Differences are taken directly,
    not through the ‖a‖² + ‖b‖² − 2a·b expansion, whose cancellation would reorder nearly
    equal distances and so change ranks; each pair is taken in a canonical order, so (a, b)
    and (b, a) get bit-identical distances.
    """
    flat = points.flatten(1)
    matrix = (torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
              if flat.shape[0] <= matrix_limit else None)

    def distances(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        low, high = torch.minimum(first, second), torch.maximum(first, second)
        if matrix is not None:
            return matrix[low, high]
        return (flat[low] - flat[high]).norm(dim=-1)

    return distances


def mean_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``samples`` (NaNs dropped); None under 2 values."""
    values = np.asarray(samples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    mean = float(values.mean())
    sem = float(values.std(ddof=1) / math.sqrt(values.size))
    if sem == 0.0:
        return (mean, mean)
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1)) * sem
    return (mean - half, mean + half)


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (for accuracies and rates)."""
    if total <= 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
