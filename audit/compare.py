"""``robaudit compare OLD.json NEW.json`` (design §4): a per-check table of old and new values,
the delta with its paired interval, and a verdict; exit 1 when a check regressed beyond
``--tolerance`` or its own ``expect.regression``, when a gated check cannot be compared (a
value on either side missing or not finite), when a new check has no value, and when a check
of the old report is missing from the new one (unless ``--allow-removed``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from robaudit.baseline import NotComparable, compare_values
from robaudit.gate import verdict


@dataclass(frozen=True)
class Row:
    """One check of the comparison, its ``verdict`` one of :data:`VERDICTS`."""

    id: str
    metric: str
    old: float | None
    new: float | None
    delta: float | None
    ci: tuple[float, float] | None
    verdict: str
    note: str = ""


#: What a row can say: regressed (beyond its tolerance), error (a check without a new value,
#: or a gated check that cannot be compared: no finite old value, unpairable samples, an
#: unknown direction) and removed (in the old report only) fail the comparison (removed not
#: with ``--allow-removed``); ok (within its tolerance), better, worse, same, changed (not
#: gated: no tolerance; changed: direction unknown) and new (in the new report only, or
#: without an old value and not gated) do not.
VERDICTS = ("regressed", "error", "removed", "ok", "worse", "better", "same", "changed", "new")


def _direction(check: dict[str, Any], directions: dict[str, bool]) -> bool | None:
    """Whether higher is better: from the metric plugin, else from the check's threshold."""
    if check.get("metric") in directions:
        return directions[check["metric"]]
    expect = check.get("expect") or {}
    if "min" in expect and "max" not in expect:
        return True
    if "max" in expect and "min" not in expect:
        return False
    return None


def _no_value(check: dict[str, Any], side: str) -> str | None:
    """Why ``check`` of the ``side`` report has no value to compare, if it has none."""
    value = check.get("value")
    if value is not None and math.isfinite(value):
        return None
    if value is not None:
        return f"the {side} value is not finite ({value})"
    if check.get("outcome") == "error":
        return f"the {side} run errored: {check.get('message') or 'no message'}"
    return f"the {side} run has no value ({check.get('outcome') or 'no outcome'})"


def compare_reports(old: dict[str, Any], new: dict[str, Any], tolerance: float | None,
                    directions: dict[str, bool]) -> list[Row]:
    """Rows for every check id of either report, in the new report's order, then the removed
    ones. Both reports come from :func:`robaudit.reportfile.read_report`."""
    old_checks = {c["id"]: c for c in old["checks"]}
    new_checks = {c["id"]: c for c in new["checks"]}
    fingerprints = [(r.get("data") or {}).get("fingerprint") for r in (old, new)]
    same_data = fingerprints[0] is not None and fingerprints[0] == fingerprints[1]
    rows = []
    for check_id, check in new_checks.items():
        before = old_checks.get(check_id)
        value = check.get("value")
        if before is None:
            why = _no_value(check, "new")
            rows.append(Row(check_id, check["metric"], None, value, None, None,
                            "new" if why is None else "error", why or ""))
            continue
        own = (check.get("expect") or {}).get("regression")
        limit = own if own is not None else tolerance
        higher = _direction(check, directions)
        new_why, old_why = _no_value(check, "new"), _no_value(before, "old")
        if new_why is None and old_why is not None and limit is None:
            rows.append(Row(check_id, check["metric"], before.get("value"), value, None, None,
                            "new", old_why))
            continue
        why = new_why or old_why
        if why is None and limit is not None and higher is None:
            why = ("direction unknown (the metric is not installed and the check's thresholds "
                   "do not say it): cannot judge the regression")
        if why is None:
            try:
                delta = compare_values(float(before["value"]), before.get("samples"),
                                       float(value), check.get("samples"), bool(higher),
                                       same_data=same_data, seed=int(new.get("seed") or 0),
                                       check_id=check_id)
            except NotComparable as exc:
                why = str(exc)
        if why is not None:
            rows.append(Row(check_id, check["metric"], before.get("value"), value, None, None,
                            "error", why))
            continue
        note = "" if delta.paired else "not paired"
        if higher is None:
            outcome, note = ("same" if delta.delta == 0 else "changed"), "direction unknown"
        elif limit is None:
            outcome = "same" if delta.delta == 0 else ("worse" if delta.worse > 0 else "better")
        else:
            expect = {"regression": limit, "by": (check.get("expect") or {}).get("by", "value")}
            passed, _ = verdict(float(value), None, expect, delta)
            outcome = "ok" if passed == "passed" else "regressed"
        rows.append(Row(check_id, check["metric"], float(before["value"]), float(value),
                        delta.delta, delta.ci, outcome, note))
    rows += [Row(i, c["metric"], c.get("value"), None, None, None, "removed",
                 "not in the new report") for i, c in old_checks.items() if i not in new_checks]
    return rows


def failure(rows: list[Row], allow_removed: bool = False) -> str | None:
    """Why the comparison fails (exit 1), or None: a row that regressed, errored, or was
    removed (unless ``allow_removed``); or a new report without checks (even then: nothing
    was compared)."""
    if all(row.verdict == "removed" for row in rows):
        return "the new report has no checks"
    bad = ("regressed", "error") if allow_removed else ("regressed", "error", "removed")
    failed = [row.id for row in rows if row.verdict in bad]
    if failed:
        return f"{len(failed)} of {len(rows)} checks {', '.join(bad[:-1])} or {bad[-1]}"
    return None


def summary(rows: list[Row], allow_removed: bool = False) -> str:
    """The closing line, the same in the console and in Markdown: how many rows say each
    verdict, and whether the comparison fails and why."""
    counts = ", ".join(f"{sum(r.verdict == v for r in rows)} {v}" for v in VERDICTS
                       if any(r.verdict == v for r in rows))
    allowed = " (removed allowed)" if allow_removed and "removed" in counts else ""
    why = failure(rows, allow_removed)
    return f"{counts or 'no checks'}{allowed}: " + ("passed" if why is None else
                                                   f"FAILED ({why})")


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    """The cells of each row: check, metric, old, new, delta, 95% CI, verdict."""
    return [[r.id, r.metric, _fmt(r.old), _fmt(r.new), _fmt(r.delta, True),
             "—" if r.ci is None else f"{r.ci[0]:+.4g} … {r.ci[1]:+.4g}",
             r.verdict + (f" ({r.note})" if r.note else "")] for r in rows]


HEADER = ["check", "metric", "old", "new", "Δ", "95% CI of Δ", "verdict"]


def markdown(rows: list[Row], old_path: str, new_path: str, allow_removed: bool = False) -> str:
    """The comparison as a Markdown table (for a pull-request comment)."""
    lines = [f"**robaudit compare** `{old_path}` → `{new_path}`", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for cells in table_rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", summary(rows, allow_removed)]
    return "\n".join(lines)
