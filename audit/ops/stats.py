"""Statistics shared by metrics and the runner: tie-aware batched Spearman, intervals.

scipy is imported inside the functions that need it: ``scipy.stats`` takes about 0.6 s to
import, which every run would otherwise pay at start-up."""

from __future__ import annotations

import math

import numpy as np
import torch


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
    from scipy import stats  # lazily: importing scipy.stats costs 0.6 s at start-up

    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1)) * sem
    return (mean - half, mean + half)


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (for accuracies and rates)."""
    if total <= 0:
        return (0.0, 1.0)
    from scipy import stats  # lazily: importing scipy.stats costs 0.6 s at start-up

    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
