"""The verdict of a check (design §3 ``expect``): thresholds on the value or on its interval,
a regression tolerance against a baseline, and the severity of a violation.

- ``min`` / ``max`` with ``by: value`` compare the value; with ``by: ci`` the whole 95%
  interval must be on the passing side ("passes with confidence").
- ``regression: TOL`` fails when the check is worse than the baseline's by more than TOL in the
  metric's bad direction: the paired mean difference (``by: value``) or the pessimistic end of
  its paired interval (``by: ci``); without per-sample pairing, the difference of the values.
- ``severity: warn`` turns a violation into ``warned``, which leaves the exit code alone unless
  ``--strict``.
"""

from __future__ import annotations

from typing import Any

from robaudit.baseline import Delta
from robaudit.results import Outcome


class VerdictError(Exception):
    """The check cannot be judged (``by: ci`` without an interval, a missing baseline)."""


def _thresholds(value: float, ci: tuple[float, float] | None, expect: dict[str, Any]
                ) -> tuple[bool, str]:
    low, high = expect.get("min"), expect.get("max")
    if low is None and high is None:
        return True, f"{value:.4g} (no threshold)" if "regression" not in expect else ""
    if expect.get("by") == "ci":
        if ci is None:
            raise VerdictError("`by: ci` needs an interval, and this check's value has none")
        where = f"95% CI {ci[0]:.4g}–{ci[1]:.4g}"
        if low is not None and ci[0] < low:
            return False, f"{where}: low end {ci[0]:.4g} < min {low:.4g} (value {value:.4g})"
        if high is not None and ci[1] > high:
            return False, f"{where}: high end {ci[1]:.4g} > max {high:.4g} (value {value:.4g})"
        parts = [f"CI low {ci[0]:.4g} >= {low:.4g}"] if low is not None else []
        parts += [f"CI high {ci[1]:.4g} <= {high:.4g}"] if high is not None else []
        return True, f"{value:.4g}: " + " and ".join(parts)
    if low is not None and value < low:
        return False, f"{value:.4g} < min {low:.4g}"
    if high is not None and value > high:
        return False, f"{value:.4g} > max {high:.4g}"
    parts = [f"{value:.4g} >= {low:.4g}"] if low is not None else []
    parts += [f"{value:.4g} <= {high:.4g}"] if high is not None else []
    return True, " and ".join(parts)


def _regression(expect: dict[str, Any], delta: Delta) -> tuple[bool, str]:
    tolerance = float(expect["regression"])
    by_ci = expect.get("by") == "ci" and delta.worse_ci is not None
    worse = delta.worse_ci[1] if by_ci else delta.worse
    how = "paired CI high end" if by_ci else ("paired mean" if delta.paired else "value")
    text = f"Δ {delta.delta:+.4g} vs baseline"
    if delta.ci is not None:
        text += f" (95% CI {delta.ci[0]:+.4g}–{delta.ci[1]:+.4g})"
    if worse > tolerance:
        return False, f"regressed: {text}; worse by {worse:.4g} ({how}) > tolerance {tolerance:g}"
    return True, f"{text} within tolerance {tolerance:g}"


def verdict(value: float, ci: tuple[float, float] | None, expect: dict[str, Any],
            delta: Delta | None) -> tuple[Outcome, str]:
    """The outcome and message of a check. Raises :class:`VerdictError` when the check cannot
    be judged; ``delta`` must be given when ``expect`` has ``regression``."""
    passed, message = _thresholds(value, ci, expect)
    if "regression" in expect:
        if delta is None:
            raise VerdictError("`regression` needs a baseline: run with --baseline REPORT.json")
        ok, text = _regression(expect, delta)
        message = f"{message}; {text}" if message else text
        passed = passed and ok
    if passed:
        return "passed", message
    return ("warned" if expect.get("severity") == "warn" else "failed"), message
