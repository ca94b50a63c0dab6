"""Comparing a check with the same check of an earlier report (design §3 ``regression``, §4
``--baseline`` and ``compare``).

Where both runs have per-sample values on the same samples (the same data fingerprint and as
many values), the difference is paired: its estimate is the mean of the per-sample differences
and its 95% interval a percentile bootstrap over samples, drawn with the spec's seed and the
check id; pairs where either value is missing (NaN: a point the metric left out) are left out,
and ``pairs`` says how many were used. Otherwise the estimate is the difference of the two
values and there is no interval.

Design §10: a baseline value that is not finite, or a paired difference without two finite
pairs, cannot be compared: :class:`NotComparable` says why, and a ``regression`` check is then
``error``, never passed on a NaN difference (which no tolerance exceeds).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robaudit.reportfile import read_report

if TYPE_CHECKING:
    import numpy as np

#: Bootstrap resamples of a paired difference, and how many are drawn at once (memory bound).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_CHUNK = 100


@dataclass(frozen=True)
class Delta:
    """``new − old`` of one check: the estimate, its 95% interval (paired runs only), whether
    the runs were paired, and ``worse``: how much the new run is worse than the old one in the
    metric's bad direction (negative when it is better), with its interval."""

    delta: float
    ci: tuple[float, float] | None
    paired: bool
    worse: float
    worse_ci: tuple[float, float] | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    pairs: int | None = None


class NotComparable(ValueError):
    """The two runs of a check cannot be compared; the message says why."""


def bootstrap_mean_interval(diffs: np.ndarray, seed: int, level: float = 0.95
                            ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling samples), drawn in
    chunks so that memory stays O(chunk × samples)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = diffs.size
    means = []
    for start in range(0, BOOTSTRAP_RESAMPLES, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, BOOTSTRAP_RESAMPLES - start)
        means.append(diffs[rng.integers(0, n, size=(size, n))].mean(axis=1))
    low, high = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def pair_seed(seed: int, check_id: str) -> int:
    digest = hashlib.sha256(f"baseline:{seed}:{check_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def compare_values(old_value: float, old_samples: list[float] | None, new_value: float,
                   new_samples: list[float] | None, higher_is_better: bool, *,
                   same_data: bool, seed: int, check_id: str) -> Delta:
    """The :class:`Delta` of a check between two runs (see the module docstring). Raises
    :class:`NotComparable` when a value, or every pair but one, is not finite."""
    import numpy as np
    for side, value in (("old", old_value), ("new", new_value)):
        if not math.isfinite(value):
            raise NotComparable(f"the {side} value is not finite ({value})")
    sign = -1.0 if higher_is_better else 1.0  # worse = sign × (new − old)
    paired = (same_data and old_samples is not None and new_samples is not None
              and len(old_samples) == len(new_samples) and len(new_samples) >= 2)
    if not paired:
        delta = new_value - old_value
        return Delta(delta, None, False, sign * delta, None)
    # (None is a sample without a value: NaN)
    diffs = (np.asarray(new_samples, dtype=np.float64)
             - np.asarray(old_samples, dtype=np.float64))
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < 2:
        raise NotComparable(f"{diffs.size} of {len(new_samples)} per-sample differences are "
                            "finite: too few to pair the runs")
    delta = float(diffs.mean())
    low, high = bootstrap_mean_interval(diffs, pair_seed(seed, check_id))
    worse_ci = (sign * low, sign * high) if sign > 0 else (sign * high, sign * low)
    return Delta(delta, (low, high), True, sign * delta, worse_ci, pairs=int(diffs.size))


@dataclass(frozen=True)
class Baseline:
    """A report to compare against: its checks by id, and what it was made from."""

    path: Path
    checks: dict[str, dict[str, Any]]
    version: str | None
    fingerprint: str | None

    def notes_for(self, check: dict[str, Any], params: dict[str, Any], version: str,
                  fingerprint: str | None) -> tuple[str, ...]:
        """What differs between the baseline's check and this run's (params, data, version)."""
        notes = []
        if check.get("params") != params:
            notes.append("the baseline ran with other params")
        if self.fingerprint != fingerprint:
            notes.append("the baseline audited other data (fingerprint differs)")
        if self.version != version:
            notes.append(f"the baseline was made by robaudit {self.version}")
        return tuple(notes)


def load_baseline(path: str | Path) -> Baseline:
    """Read a JSON report as a baseline (``--baseline``)."""
    path = Path(path)
    report = read_report(path, "--baseline")
    checks = {check["id"]: check for check in report["checks"]}
    data = report.get("data") or {}
    return Baseline(path, checks, report.get("robaudit"), data.get("fingerprint"))
