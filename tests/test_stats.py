"""Statistics primitives against scipy (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from robaudit.ops.stats import (
    average_ranks,
    mean_interval,
    spearman,
    wilson_interval,
)


def test_average_ranks_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, size=(20, 15)).astype(float)
    ours = average_ranks(torch.tensor(values)).numpy()
    expected = np.stack([stats.rankdata(row) for row in values])
    np.testing.assert_allclose(ours, expected)


@pytest.mark.parametrize("ties", [False, True])
def test_batched_spearman_matches_scipy(ties):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 30))
    b = a + rng.normal(scale=1.5, size=a.shape)
    if ties:
        a, b = np.round(a), np.round(b)
    ours = spearman(torch.tensor(a), torch.tensor(b)).numpy()
    expected = [stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_spearman_is_invariant_to_monotone_maps_and_flips_sign():
    x = torch.rand(4, 40, dtype=torch.float64)
    assert torch.allclose(spearman(x, torch.exp(3 * x)), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(spearman(x, -x), -torch.ones(4, dtype=torch.float64))


def test_mean_interval_matches_scipy_t_interval():
    samples = np.random.default_rng(2).normal(1.0, 2.0, size=40)
    low, high = mean_interval(samples)
    expected = stats.t.interval(0.95, len(samples) - 1, loc=samples.mean(),
                                scale=stats.sem(samples))
    np.testing.assert_allclose((low, high), expected)
    assert mean_interval(np.array([1.0])) is None


@pytest.mark.parametrize(("k", "n"), [(0, 10), (7, 10), (450, 455), (100, 100)])
def test_wilson_interval_matches_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    np.testing.assert_allclose(wilson_interval(k, n), (expected.low, expected.high), atol=1e-9)
