"""Issue #12: a 95% interval covers the true value about 95% of the time, for an accuracy
(Wilson), a mean metric (Student t) and a paired delta against a baseline (bootstrap), over many
simulated data sets with a known truth."""

from __future__ import annotations

import numpy as np

from robaudit.baseline import compare_values
from robaudit.ops.stats import mean_interval, wilson_interval

REPEATS = 1000


def coverage(intervals: list[tuple[float, float]], truth: float) -> float:
    return float(np.mean([low <= truth <= high for low, high in intervals]))


def test_wilson_interval_of_an_accuracy():
    rng = np.random.default_rng(0)
    p, n = 0.9, 200
    hits = rng.binomial(n, p, size=REPEATS)
    assert 0.93 <= coverage([wilson_interval(int(k), n) for k in hits], p) <= 0.97


def test_t_interval_of_a_skewed_mean_metric():
    rng = np.random.default_rng(1)
    scale, n = 0.12, 200  # exponential per-sample distortions, like DeepFool's rho
    intervals = [mean_interval(rng.exponential(scale, n)) for _ in range(REPEATS)]
    assert 0.93 <= coverage(intervals, scale) <= 0.97


def test_paired_bootstrap_interval_of_a_delta():
    rng = np.random.default_rng(2)
    n, accuracy, lost, gained = 200, 0.9, 0.06, 0.2  # the new model loses 6% of its hits
    truth = accuracy * -lost + (1 - accuracy) * gained  # and gains 20% of its misses
    intervals = []
    for i in range(400):
        old = rng.binomial(1, accuracy, n).astype(float)
        flip = rng.random(n) < np.where(old == 1, lost, gained)
        new = np.where(flip, 1 - old, old)
        delta = compare_values(float(old.mean()), old.tolist(), float(new.mean()),
                               new.tolist(), True, same_data=True, seed=i, check_id="c")
        assert delta.paired and delta.ci is not None
        intervals.append(delta.ci)
    assert 0.92 <= coverage(intervals, truth) <= 0.975


def test_unpaired_runs_give_no_interval():
    delta = compare_values(0.9, [1.0, 0.0], 0.8, [1.0, 0.0, 1.0], True, same_data=True,
                           seed=0, check_id="c")
    assert not delta.paired and delta.ci is None
    assert abs(delta.delta + 0.1) < 1e-12 and abs(delta.worse - 0.1) < 1e-12


def test_an_interval_stays_within_the_metrics_range():
    from robaudit.judge import within

    assert within((0.0, 1.0), 0.97, 1.005) == (0.97, 1.0)
    assert within((0.0, 1.0), -0.01, 0.02) == (0.0, 0.02)
    assert within((-1.0, 1.0), -1.2, 1.3) == (-1.0, 1.0)
    assert within(None, -5.0, 5.0) == (-5.0, 5.0)
