"""``robaudit compare OLD.json NEW.json`` (design §4): a per-check table of old and new values,
the delta with its paired interval, and a verdict; exit 1 when a check regressed beyond
``--tolerance`` or its own ``expect.regression``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from robaudit.baseline import compare_values
from robaudit.gate import verdict


@dataclass(frozen=True)
class Row:
    """One check of the comparison. ``verdict``: regressed, ok (within its tolerance), better,
    worse, same (not gated: no tolerance), new, removed, or error (no value on a side)."""

    id: str
    metric: str
    old: float | None
    new: float | None
    delta: float | None
    ci: tuple[float, float] | None
    verdict: str
    note: str = ""


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


def compare_reports(old: dict[str, Any], new: dict[str, Any], tolerance: float | None,
                    directions: dict[str, bool]) -> list[Row]:
    """Rows for every check id of either report, in the new report's order."""
    old_checks = {c["id"]: c for c in old["checks"]}
    new_checks = {c["id"]: c for c in new["checks"]}
    fingerprints = [(r.get("data") or {}).get("fingerprint") for r in (old, new)]
    same_data = fingerprints[0] is not None and fingerprints[0] == fingerprints[1]
    rows = []
    for check_id, check in new_checks.items():
        before = old_checks.get(check_id)
        value = check.get("value")
        if before is None:
            rows.append(Row(check_id, check["metric"], None, value, None, None, "new"))
            continue
        if not isinstance(value, (int, float)) or not isinstance(before.get("value"),
                                                                 (int, float)):
            rows.append(Row(check_id, check["metric"], before.get("value"), value, None, None,
                            "error", "a run has no value"))
            continue
        higher = _direction(check, directions)
        delta = compare_values(float(before["value"]), before.get("samples"), float(value),
                               check.get("samples"), bool(higher), same_data=same_data,
                               seed=int(new.get("seed") or 0), check_id=check_id)
        own = (check.get("expect") or {}).get("regression")
        limit = own if own is not None else tolerance
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
    rows += [Row(i, c["metric"], c.get("value"), None, None, None, "removed")
             for i, c in old_checks.items() if i not in new_checks]
    return rows


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


def markdown(rows: list[Row], old_path: str, new_path: str) -> str:
    """The comparison as a Markdown table (for a pull-request comment)."""
    lines = [f"**robaudit compare** `{old_path}` → `{new_path}`", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for cells in table_rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    regressed = sum(r.verdict == "regressed" for r in rows)
    lines += ["", f"{regressed} regressed, {len(rows) - regressed} not regressed"]
    return "\n".join(lines)
