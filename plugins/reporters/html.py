"""The HTML report (``--html PATH``): one self-contained file for every spec of the run.

Nothing in it is fetched: the CSS is inline and the plots are PNG ``data:`` URIs, so the file can
be mailed, attached to a CI run or opened offline. It holds no script either: the filter by outcome
is a row of checkboxes styled by CSS alone, so it works where a viewer blocks scripts (Jenkins'
HTML publisher does by default). A sticky bar at the top holds the run's outcome (``failed`` when a
check failed, the errors counted beside it, as pytest's closing line), its counts and the filter;
each spec has a section with its summary (audit, spec, outcome, counts, device, seed, duration,
environment), an overview table, and a card per check, failed and errored checks first: the
outcome, what the metric measures and which way is better (the first paragraph of the metric's
docstring), the value against its threshold (text and a gauge with the confidence interval), why
(:func:`robaudit.gate.decided_by`: the threshold, ``by: ci``, the regression tolerance and the
baseline's value; a column of the table too), the resolved params, the details (scalars and
flattened nested dicts as one table, lists of records as their own tables, long ones collapsed),
the message, the traceback of an error, and the plots — a histogram of the per-sample values where
it tells more than the value and its interval (not for 0/1 outcomes, nor when one value holds
nearly all samples, nor when the metric plots the same values itself), then every figure the metric
returned. A figure that cannot be drawn shows a note in its place. Everything user-supplied is
escaped (Jinja2 autoescape). An interrupted run is flagged and shows the checks that finished.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

import robaudit
from robaudit import hookimpl
from robaudit.errors import UsageError
from robaudit.figures import Histogram
from robaudit.gate import decided_by
from robaudit.reportpath import ensure_writable, write_atomic
from robaudit.results import (
    OUTCOMES,
    AuditResult,
    CheckResult,
    Outcome,
    detail_warnings,
    jsonable,
)

TEMPLATE = "report.html.j2"
MAX_ROWS = 200  # rows shown of a details table
MAX_LIST = 12  # items shown of a list of numbers
COLLAPSE_ROWS = 8  # a details table with more rows starts collapsed
#: the order of the cards: what needs attention first; an outcome not listed goes last
CARD_ORDER = ("failed", "error", "warned", "passed", "measured", "skipped")
#: a per-sample histogram is left out when one value holds at least this share of the samples
DOMINANT_SHARE = 0.9


@dataclass
class Table:
    """A details table: ``columns`` headers and rows of formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    hidden: int = 0  # rows left out (over MAX_ROWS)

    @property
    def collapsed(self) -> bool:
        """Whether the table starts folded (a long per-layer table, a long curve); the
        untitled table of scalar details never does."""
        return bool(self.title) and len(self.rows) + self.hidden > COLLAPSE_ROWS


@dataclass
class Plot:
    title: str
    src: str = ""  # a data: URI, or "" when the figure failed to render
    error: str = ""


@dataclass
class Gauge:
    """Positions (percent of the bar's width) of the pass zone, value, CI and thresholds."""

    zone: tuple[float, float]
    value: float
    ci: tuple[float, float] | None
    ticks: list[tuple[float, str]] = field(default_factory=list)


def fmt(value: Any) -> str:
    """A value as short readable text (4 significant digits for floats)."""
    value = jsonable(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        shown = ", ".join(fmt(v) for v in value[:MAX_LIST])
        more = f", … ({len(value)} values)" if len(value) > MAX_LIST else ""
        return f"[{shown}{more}]"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(value)


def _float(value: float) -> str:
    """4 significant digits, in positional notation between 1e-3 and 1e6 (20000, not 2e+04)."""
    size = abs(value)
    if not 1e-3 <= size < 1e6:
        return f"{value:.4g}"
    text = f"{value:.{max(0, 3 - math.floor(math.log10(size)))}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _flatten(prefix: str, value: Mapping[str, Any], into: dict[str, Any]) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, Mapping):
            _flatten(name, item, into)
        else:
            into[name] = item


def _records_table(title: str, records: list[Mapping[str, Any]]) -> Table:
    flat = []
    for record in records:
        row: dict[str, Any] = {}
        _flatten("", record, row)
        flat.append(row)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    rows = [[fmt(row.get(c)) for c in columns] for row in flat[:MAX_ROWS]]
    return Table(title, columns, rows, hidden=max(0, len(flat) - MAX_ROWS))


def _matrix_table(title: str, matrix: list[list[Any]]) -> Table:
    width = max(len(row) for row in matrix)
    rows = [[str(i), *(fmt(v) for v in row)] for i, row in enumerate(matrix[:MAX_ROWS])]
    return Table(title, ["", *map(str, range(width))], rows,
                 hidden=max(0, len(matrix) - MAX_ROWS))


def details_tables(details: Mapping[str, Any]) -> list[Table]:
    """``details`` as tables: one of every scalar (nested dicts flattened to dotted keys, short
    lists inline), then one per list of records (e.g. a per-layer table) or small matrix."""
    flat: dict[str, Any] = {}
    _flatten("", jsonable(details), flat)
    scalars: list[list[str]] = []
    tables: list[Table] = []
    for key, value in flat.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.append(_records_table(key, value))
        elif (isinstance(value, list) and value and len(value) <= 64
              and all(isinstance(row, list) and row and all(_is_scalar(v) for v in row)
                      for row in value)):
            tables.append(_matrix_table(key, value))
        else:
            scalars.append([key, fmt(value)])
    if scalars:
        tables.insert(0, Table("", ["name", "value"], scalars))
    return tables


def threshold_text(expect: Mapping[str, float]) -> str:
    parts = []
    if "min" in expect:
        parts.append(f"≥ {fmt(expect['min'])}")
    if "max" in expect:
        parts.append(f"≤ {fmt(expect['max'])}")
    return " and ".join(parts)


def gauge(check: CheckResult) -> Gauge | None:
    """The gauge of a check with a finite value and at least one threshold."""
    value = check.value
    bounds = {k: float(v) for k, v in check.expect.items()
              if k in ("min", "max") and math.isfinite(float(v))}
    if value is None or not math.isfinite(value) or not bounds:
        return None
    ci = check.ci if check.ci is not None and all(map(math.isfinite, check.ci)) else None
    points = [value, *bounds.values(), *(ci or ())]
    low, high = min(points), max(points)
    span = high - low or max(abs(value), 1.0)
    low, high = low - 0.15 * span, high + 0.15 * span

    def pos(x: float) -> float:
        return round(100.0 * (x - low) / (high - low), 2)

    zone = (pos(bounds.get("min", low)), pos(bounds.get("max", high)))
    ticks = [(pos(x), f"{k} {fmt(x)}") for k, x in bounds.items()]
    return Gauge(zone, pos(value), None if ci is None else (pos(ci[0]), pos(ci[1])), ticks)


def histogram_informs(samples: Sequence[float], figures: Sequence[object]) -> bool:
    """Whether a histogram of the per-sample values tells more than the value and its CI: not
    for 0/1 outcomes (a correct / fooled flag per sample), not when one value holds nearly all
    samples (a single bar), and not when the metric returns a histogram of the same values."""
    import numpy as np
    values = np.asarray(samples, dtype=float)
    values = np.sort(values[np.isfinite(values)])
    if values.size == 0:
        return False
    _, counts = np.unique(values, return_counts=True)
    if counts.size <= 2 or counts.max() >= DOMINANT_SHARE * values.size:
        return False
    for figure in figures:
        if isinstance(figure, Histogram):
            own = np.asarray(figure.values, dtype=float)
            own = np.sort(own[np.isfinite(own)])
            if own.shape == values.shape and np.allclose(own, values):
                return False
    return True


def plots(check: CheckResult) -> list[Plot]:
    """The check's plots: the per-sample histogram where it informs, then its figures, each as
    a data: URI."""
    from robaudit import plotting  # matplotlib loads only when an HTML report is written

    figures = list(check.figures)
    if check.samples and histogram_informs(check.samples, figures):
        figures.insert(0, plotting.samples_histogram(
            check.samples, check.value, check.expect,
            f"{check.id}: the {len(check.samples)} values whose mean is the value",
            xlabel=f"{check.metric}, one value (a sample, or a trial of sampled pairs)"))
    rendered = []
    for figure in figures:
        title = str(getattr(figure, "title", type(figure).__name__))
        try:
            rendered.append(Plot(title, src="data:image/png;base64,"
                                 + plotting.render_png(figure)))
        except Exception as exc:  # one bad figure must not cost the whole report
            rendered.append(Plot(title, error=f"{type(exc).__name__}: {exc}"))
    return rendered


@dataclass(frozen=True)
class MetricInfo:
    """What a card says about its metric: ``summary`` (the docstring's first paragraph) and
    ``source`` (the paper and section)."""

    summary: str
    source: str = ""


def metric_info(metric: object) -> MetricInfo:
    """The docstring's first paragraph (whitespace collapsed) and the ``source`` of a metric."""
    doc = (type(metric).__doc__ or "").strip().split("\n\n")[0].replace("``", "")
    source = " ".join(str(getattr(metric, "source", "")).split()).rstrip(".")
    return MetricInfo(" ".join(doc.split()), source)


def collect_metric_info(pluginmanager: pluggy.PluginManager) -> dict[str, MetricInfo]:
    """Every registered metric's :class:`MetricInfo` by name, from the plugins' registration
    hook (the first registration of a name wins, as in the run; a plugin that raises is
    passed over: the report then says less about its metrics, nothing more)."""
    found: dict[str, MetricInfo] = {}

    def register(metric: object) -> None:
        name = getattr(metric, "name", None)
        if isinstance(name, str) and name not in found:
            found[name] = metric_info(metric)

    for impl in pluginmanager.hook.robaudit_register_metrics.get_hookimpls():
        try:
            impl.function(register=register)
        except (Exception, SystemExit):
            continue
    return found


def about(check: CheckResult, info: MetricInfo | None) -> str:
    """One or two sentences for the card: what the metric measures, which way is better."""
    better = {True: "Higher is better.", False: "Lower is better."}.get(check.higher_is_better,
                                                                       "")
    summary = info.summary if info is not None else ""
    if summary and not summary.endswith((".", "!", "?")):
        summary += "."
    return " ".join(part for part in (summary, better) if part)


def card_order(checks: Sequence[CheckResult]) -> list[int]:
    """Indices of ``checks`` in card order: failed, errored, warned, passed, skipped; the
    spec's order within each outcome."""
    rank = {outcome: i for i, outcome in enumerate(CARD_ORDER)}
    return sorted(range(len(checks)), key=lambda i: (rank.get(checks[i].outcome, len(rank)), i))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


#: the page badge's outcome: the first of these that a check has. As pytest's closing line
#: leads with the failures and counts the errors beside them, a run with failed checks is
#: ``failed`` whatever errored (the errors are counted beside the badge).
BADGE_ORDER = ("failed", "error", "warned", "passed", "measured")


def overall_outcome(results: list[AuditResult]) -> Outcome:
    """The page badge's outcome (:data:`BADGE_ORDER`); ``skipped`` when no check ran."""
    found = {c.outcome for r in results for c in r.checks}
    return next((o for o in BADGE_ORDER if o in found), "skipped")


def check_view(check: CheckResult, anchor: str, info: MetricInfo | None = None
               ) -> dict[str, Any]:
    tables = details_tables(check.details)
    scalars = tables.pop(0) if tables and not tables[0].title else None
    return {
        "check": check,
        "anchor": anchor,
        "about": about(check, info),
        "source": info.source if info is not None else "",
        "value": fmt(check.value),
        "threshold": threshold_text(check.expect),
        "why": decided_by(check.expect, check.baseline) or "no threshold",
        "ci": None if check.ci is None else f"[{fmt(check.ci[0])}, {fmt(check.ci[1])}]",
        "gauge": gauge(check),
        "params": [[k, fmt(v)] for k, v in jsonable(check.params).items()],
        "scalars": scalars,  # the table of scalar details, beside the params
        "tables": tables,  # lists of records and matrices, full width below
        "plots": plots(check),
        "warnings": detail_warnings(check.details),
    }


def audit_view(result: AuditResult, index: int,
               infos: Mapping[str, MetricInfo] | None = None) -> dict[str, Any]:
    """One spec's section; its checks in card order (failed and errored first)."""
    anchor = f"audit-{index}"
    infos = infos or {}
    return {
        "result": result,
        "anchor": anchor,
        "stem": Path(result.spec).stem,
        "summary": result.summary(),
        "checks": [check_view(result.checks[j], f"{anchor}-{j}-{_slug(result.checks[j].id)}",
                              infos.get(result.checks[j].metric))
                   for j in card_order(result.checks)],
    }


def render_html(results: list[AuditResult],
                infos: Mapping[str, MetricInfo] | None = None) -> str:
    """The report's HTML text; ``infos`` (metric name → :class:`MetricInfo`) lets each card
    say what its metric measures."""
    import jinja2  # only to write a report: loading the plugins stays quick (issue #24)

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("robaudit.templates", "."), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    totals = dict.fromkeys(OUTCOMES, 0)
    for result in results:
        for outcome, count in result.summary().items():
            totals[outcome] += count
    rank = {outcome: i for i, outcome in enumerate(CARD_ORDER)}
    return env.get_template(TEMPLATE).render(
        version=robaudit.__version__,
        audits=[audit_view(r, i, infos) for i, r in enumerate(results)],
        outcomes=sorted(totals, key=lambda o: rank.get(o, len(rank))),
        outcome=overall_outcome(results),
        totals=totals,
        duration=sum(r.duration_s for r in results),
        interrupted=any(r.interrupted for r in results),
    )


def write_html(path: Path, results: list[AuditResult],
               infos: Mapping[str, MetricInfo] | None = None) -> None:
    write_atomic(path, render_html(results, infos))


@hookimpl
def robaudit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", dest="html_path", type=Path, default=None, metavar="PATH",
                        help="write a self-contained HTML report to PATH")


@hookimpl
def robaudit_configure(options: argparse.Namespace,
                       pluginmanager: pluggy.PluginManager) -> None:
    if getattr(options, "html_path", None):
        ensure_writable("--html", options.html_path)
        options.html_metric_info = collect_metric_info(pluginmanager)


@hookimpl
def robaudit_report(results: list[AuditResult], options: argparse.Namespace) -> None:
    path = getattr(options, "html_path", None)
    if path is not None:
        try:
            write_html(Path(path), results, getattr(options, "html_metric_info", None))
        except OSError as exc:
            raise UsageError(f"--html {path}: cannot write the report: {exc}") from None
