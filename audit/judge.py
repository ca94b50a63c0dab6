"""Judging a check (design §3 ``expect``, §10): what a metric computed (a
:class:`MetricResult`, or the :class:`robaudit.sharding.Failure` of computing it) becomes a
:class:`CheckResult`: its interval (the metric's own, else the mean's of its samples, within
the range the value can take), its delta against the ``--baseline`` check and the verdict on
them, which :func:`robaudit.gate.verdict` gives (thresholds, ``by: ci``, regression; that
module stays free of torch, for ``robaudit compare``)."""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING, Any

import numpy as np

import robaudit
from robaudit.baseline import Baseline, Delta, NotComparable, compare_values
from robaudit.gate import VerdictError, verdict
from robaudit.metric import MetricResult
from robaudit.ops.stats import mean_interval
from robaudit.results import CheckResult, Outcome
from robaudit.sharding import Failure

if TYPE_CHECKING:
    from robaudit.spec import Check


def within(bounds: tuple[float, float] | None, low: float, high: float) -> tuple[float, float]:
    """An interval intersected with the range the metric's value can take."""
    if bounds is None:
        return (low, high)
    return (min(max(low, bounds[0]), bounds[1]), max(min(high, bounds[1]), bounds[0]))


def result_or_failure(check: Check, computed: object) -> MetricResult | Failure:
    """What a metric returned, checked before it is judged or sent: a :class:`MetricResult`
    (or the :class:`Failure` of computing it); anything else, such as a bare float, is the
    check's error, so that the check is reported rather than lost."""
    if isinstance(computed, (MetricResult, Failure)):
        return computed
    return Failure(f"{check.metric.name} returned {type(computed).__name__} "
                   f"({reprlib.repr(computed)}), not a MetricResult")


def judge(check: Check, computed: MetricResult | Failure, duration: float, seed: int,
          fingerprint: str | None, baseline: Baseline | None) -> CheckResult:
    """A check's result from what its metric computed: its interval, its baseline delta
    and the verdict on them (or ``error`` for a :class:`Failure`)."""
    params = check.params.model_dump(mode="json")
    common = {"id": check.id, "metric": check.metric.name, "expect": check.expect,
              "params": params, "tags": check.tags,
              "higher_is_better": check.metric.higher_is_better}
    computed = result_or_failure(check, computed)
    if isinstance(computed, Failure):
        return CheckResult(outcome="error", value=None, ci=None, details={},
                           message=computed.message, duration_s=duration,
                           traceback=computed.traceback, **common)
    try:
        value = float(computed.value)
    except (TypeError, ValueError) as exc:
        return judge(check, Failure(f"the metric returned a value that is not a number: {exc}"),
                     duration, seed, fingerprint, baseline)
    samples = None if computed.samples is None else np.asarray(computed.samples,
                                                                dtype=float)
    ci = computed.ci if computed.ci is not None else (
        mean_interval(samples) if samples is not None else None)
    ci = None if ci is None else within(check.metric.value_range, float(ci[0]), float(ci[1]))
    sample_list = None if samples is None else samples.tolist()
    compared = baseline_delta(check, seed, value, sample_list, params, fingerprint, baseline)
    outcome: Outcome
    if not np.isfinite(value):
        outcome, message = "error", f"the metric returned a non-finite value ({value})"
    elif "regression" in check.expect and compared[0] and "missing" in compared[0]:
        outcome, message = "error", compared[0]["missing"]
    else:
        try:
            outcome, message = verdict(value, ci, check.expect, compared[1],
                                       baseline_given=baseline is not None)
        except VerdictError as exc:
            outcome, message = "error", str(exc)
    return CheckResult(
        outcome=outcome, value=value if np.isfinite(value) else None, ci=ci,
        details=computed.details, message=message, duration_s=duration,
        samples=None if sample_list is None else tuple(sample_list),
        figures=tuple(computed.figures), baseline=compared[0], **common,
    )


def baseline_delta(check: Check, seed: int, value: float, samples: list[float] | None,
                   params: dict[str, Any], fingerprint: str | None, baseline: Baseline | None
                   ) -> tuple[dict[str, Any] | None, Delta | None]:
    """With ``--baseline``: the report's ``baseline`` object of this check and its
    :class:`Delta`; (None, None) without a baseline. Without a usable baseline check (none,
    no value, or values that cannot be compared: :class:`NotComparable`) the object holds
    why under ``missing`` and there is no delta (a ``regression`` check is then
    ``error``)."""
    if baseline is None or not np.isfinite(value):
        return None, None
    old = baseline.checks.get(check.id)
    if old is None or old.get("value") is None:
        why = "has no check" if old is None else "has no value for the check"
        return {"missing": f"{baseline.path} {why} {check.id!r}"}, None
    try:
        delta = compare_values(
            float(old["value"]), old.get("samples"), value, samples,
            check.metric.higher_is_better, seed=seed, check_id=check.id,
            same_data=fingerprint is not None and fingerprint == baseline.fingerprint)
    except NotComparable as exc:
        return {"missing": f"{baseline.path} {check.id!r}: {exc}"}, None
    notes = baseline.notes_for(old, params, robaudit.__version__, fingerprint)
    return {"value": old["value"], "delta": delta.delta, "ci": delta.ci,
            "paired": delta.paired, "notes": list(notes)}, delta
