"""Statistics shared by metrics and the runner: tie-aware batched Spearman, intervals."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats


def average_ranks(values: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """1-based ranks along the last dimension, ties given their average rank (as scipy's
    ``rankdata(method="average")``). ``values`` is (..., n); memory O(chunk · n²)."""
    flat = values.reshape(-1, values.shape[-1])
    out = torch.empty_like(flat, dtype=torch.float64)
    for start in range(0, flat.shape[0], chunk):
        block = flat[start : start + chunk]
        below = (block.unsqueeze(-1) > block.unsqueeze(-2)).sum(-1)
        equal = (block.unsqueeze(-1) == block.unsqueeze(-2)).sum(-1)
        out[start : start + chunk] = below.double() + (equal.double() + 1.0) / 2.0
    return out.reshape(values.shape)


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
