"""The verdict of a check (design §3 ``expect``, §10): thresholds on the value or on its
interval, a regression tolerance against a baseline, and the severity of a violation.

- ``min`` / ``max`` with ``by: value`` compare the value; with ``by: ci`` the whole 95%
  interval must be on the passing side ("passes with confidence"), and the message says that
  the interval decided.
- ``regression: TOL`` fails when the check is worse than the baseline's by more than TOL in the
  metric's bad direction: the paired mean difference (``by: value``) or the pessimistic end of
  its paired interval (``by: ci``); without per-sample pairing, the difference of the values.
  Without ``--baseline`` the regression is not judged: the run records the values that a later
  run takes as its baseline, and says so.
- A check with nothing to judge (no ``min`` / ``max``, no regression judged) is ``measured``,
  never ``passed`` (design §10).
- ``severity: warn`` turns a violation into ``warned``, which leaves the exit code alone unless
  ``--strict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robaudit.baseline import Delta
from robaudit.results import Outcome
from robaudit.text import interval

#: what a check that gates on a regression says when the run was given no ``--baseline``
NO_BASELINE = "regression not judged: no --baseline given (this run's report can be the next one's)"


class VerdictError(Exception):
    """The check cannot be judged (``by: ci`` without an interval, a missing baseline)."""


def _has_threshold(expect: Mapping[str, Any]) -> bool:
    return expect.get("min") is not None or expect.get("max") is not None


def _by_ci(value: float, ci: tuple[float, float] | None, low: float | None,
           high: float | None) -> tuple[bool, str]:
    """``by: ci``: the interval decides, and the message says so (and what the value alone
    would have given)."""
    if ci is None:
        raise VerdictError("`by: ci` needs an interval, and this check's value has none")
    where = f"95% CI {interval(ci)}"
    if low is not None and ci[0] < low:
        alone = "passes" if value >= low else "fails too"
        return False, (f"the interval decided (by: ci): {where} low end {ci[0]:.4g} < min "
                       f"{low:.4g}; the value {value:.4g} alone {alone}")
    if high is not None and ci[1] > high:
        alone = "passes" if value <= high else "fails too"
        return False, (f"the interval decided (by: ci): {where} high end {ci[1]:.4g} > max "
                       f"{high:.4g}; the value {value:.4g} alone {alone}")
    parts = [f">= {low:.4g}"] if low is not None else []
    parts += [f"<= {high:.4g}"] if high is not None else []
    return True, f"{value:.4g}, whole {where} " + " and ".join(parts)


def _thresholds(value: float, ci: tuple[float, float] | None, expect: Mapping[str, Any]
                ) -> tuple[bool, str]:
    low, high = expect.get("min"), expect.get("max")
    if expect.get("by") == "ci":
        return _by_ci(value, ci, low, high)
    if low is not None and value < low:
        return False, f"{value:.4g} < min {low:.4g}"
    if high is not None and value > high:
        return False, f"{value:.4g} > max {high:.4g}"
    parts = [f"{value:.4g} >= {low:.4g}"] if low is not None else []
    parts += [f"{value:.4g} <= {high:.4g}"] if high is not None else []
    return True, " and ".join(parts)


def _regression(value: float, expect: Mapping[str, Any], delta: Delta) -> tuple[bool, str]:
    """The regression's verdict; its message names the baseline's value and the tolerance."""
    tolerance = float(expect["regression"])
    by_ci = expect.get("by") == "ci" and delta.worse_ci is not None
    worse = delta.worse_ci[1] if by_ci else delta.worse
    how = "paired CI high end" if by_ci else ("paired mean" if delta.paired else "value")
    text = f"baseline {value - delta.delta:.4g}, Δ {delta.delta:+.4g}"
    if delta.ci is not None:
        text += f" (95% CI {interval(delta.ci)})"
    if worse > tolerance:
        return False, (f"regressed: worse than the baseline by {worse:.4g} ({how}) > "
                       f"tolerance {tolerance:g}; {text}")
    return True, f"{text}, within tolerance {tolerance:g}"


def verdict(value: float, ci: tuple[float, float] | None, expect: Mapping[str, Any],
            delta: Delta | None, baseline_given: bool = True) -> tuple[Outcome, str]:
    """The outcome and message of a check. Raises :class:`VerdictError` when the check cannot
    be judged; ``delta`` must be given when ``expect`` has ``regression`` and the run was
    given a baseline (``baseline_given``)."""
    judged = _has_threshold(expect)
    passed, message = _thresholds(value, ci, expect) if judged else (True, "")
    if expect.get("regression") is not None:
        if delta is not None:
            judged = True
            ok, text = _regression(value, expect, delta)
            passed = passed and ok
        elif baseline_given:
            raise VerdictError("`regression` needs a baseline check to compare with")
        else:
            text = NO_BASELINE
        message = f"{message}; {text}" if message else f"{value:.4g}; {text}"
    if not judged:
        return "measured", message or f"{value:.4g} (no threshold)"
    if passed:
        return "passed", message
    return ("warned" if expect.get("severity") == "warn" else "failed"), message


def decided_by(expect: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """What decides a check's outcome, for a report's threshold or "why" column: the
    thresholds (``≥ 0.9``; ``whole 95% CI ≥ 0.9`` under ``by: ci``), the regression tolerance
    and the baseline's value, a warn-only severity; "" when nothing does (a measured check)."""
    bounds = [f"≥ {expect['min']:.4g}"] if expect.get("min") is not None else []
    bounds += [f"≤ {expect['max']:.4g}"] if expect.get("max") is not None else []
    parts = []
    if bounds:
        subject = "whole 95% CI " if expect.get("by") == "ci" else ""
        parts.append(subject + " and ".join(bounds))
    if expect.get("regression") is not None:
        old = (baseline or {}).get("value")
        against = f"baseline {old:.4g}" if isinstance(old, (int, float)) else "no baseline"
        parts.append(f"regression ≤ {float(expect['regression']):g} vs {against}")
    if parts and expect.get("severity") == "warn":
        parts.append("warn only")
    return "; ".join(parts)
