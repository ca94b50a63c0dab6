"""The Markdown summary (``--md PATH``): the outcome table for a CI job's summary page.

For each spec a heading with the audit's name and outcome, a line with the spec, device and
seed, and a table of its checks (check, outcome, value, threshold, 95% CI, time), failed and
errored checks first; then the messages of the checks that did not pass, and the console's
closing line (``2 failed, 10 passed in 82.97s``) for the whole run. An interrupted run says so.

``--md "$GITHUB_STEP_SUMMARY"`` writes GitHub Actions' job summary: when ``PATH`` is the file
that variable names, the summary is appended to it (as GitHub expects, so that several steps
and tools share the page); any other ``PATH`` is written atomically, replacing what was there.
Text from specs and plugins is escaped for Markdown and HTML and stripped of control
characters (design §9).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import robaudit
from robaudit import hookimpl
from robaudit.errors import UsageError
from robaudit.gate import decided_by
from robaudit.plugins.reporters._summary import closing_line
from robaudit.reportpath import ensure_writable, write_atomic
from robaudit.results import AuditResult, CheckResult, detail_warnings
from robaudit.text import interval, printable

#: the variable that GitHub Actions sets to the job summary's file
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
#: the table's order: what needs attention first; an outcome not listed goes last
ORDER = ("failed", "error", "warned", "passed", "measured", "skipped")
ICONS = {"passed": "✅", "failed": "❌", "error": "💥", "warned": "⚠️", "skipped": "⏭️",
         "measured": "📏"}
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: object) -> str:
    """``text`` for a Markdown table cell: control characters and line breaks made visible or
    spaces, Markdown punctuation backslash-escaped, ``& < >`` as entities (no HTML gets in)."""
    flat = re.sub("[&<>]", lambda m: _ENTITIES[m.group()], " ".join(printable(text).split()))
    return _SPECIAL.sub(r"\\\1", flat)


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def threshold(check: CheckResult) -> str:
    """What decides the check: its thresholds, ``whole 95% CI`` under ``by: ci``, the
    regression tolerance and the baseline (:func:`robaudit.gate.decided_by`)."""
    return escape(decided_by(check.expect, check.baseline)) or "—"


def outcome_text(outcome: str) -> str:
    icon = ICONS.get(outcome)
    return f"{icon} {outcome}" if icon else outcome


def ordered(checks: list[CheckResult]) -> list[CheckResult]:
    rank = {outcome: i for i, outcome in enumerate(ORDER)}
    return sorted(checks, key=lambda c: rank.get(c.outcome, len(rank)))  # stable: spec order


def audit_markdown(result: AuditResult) -> list[str]:
    """One spec's heading, context line and table."""
    lines = [f"### {outcome_text(result.outcome)} — {escape(result.audit)}", "",
             f"`{printable(result.spec).replace('`', '')}` · device {escape(result.device)} · "
             f"seed {result.seed} · robaudit {robaudit.__version__}", ""]
    if result.interrupted:
        lines += [f"{ICONS['warned']} **The run was interrupted**: the table holds the "
                  f"{len(result.checks)} checks that finished.", ""]
    if not result.checks:
        return [*lines, "No check ran.", ""]
    lines += ["| check | outcome | value | threshold | 95% CI | time |",
              "|---|---|---:|---|---|---:|"]
    for check in ordered(result.checks):
        ci = "—" if check.ci is None else interval(check.ci)
        lines.append(f"| {escape(check.id)} | {outcome_text(check.outcome)} | "
                     f"{number(check.value)} | {threshold(check)} | {ci} | "
                     f"{check.duration_s:.2f} s |")
    return [*lines, ""]


def render_markdown(results: list[AuditResult]) -> str:
    """The whole summary: every spec, the messages of what did not pass, the closing line."""
    lines = ["## robaudit", ""]
    for result in results:
        lines += audit_markdown(result)
    bad = [(r, c) for r in results for c in ordered(r.checks)
           if c.outcome not in ("passed", "skipped", "measured")]
    if bad:
        lines += ["<details><summary>Why the checks above did not pass</summary>", ""]
        lines += [f"- {outcome_text(c.outcome)} **{escape(c.id)}**"
                  f"{f' ({escape(r.audit)})' if len(results) > 1 else ''}: {escape(c.message)}"
                  for r, c in bad]
        lines += ["", "</details>", ""]
    warned = [(r, c, w) for r in results for c in ordered(r.checks)
              for w in detail_warnings(c.details)]
    if warned:
        lines += ["<details><summary>Warnings</summary>", ""]
        lines += [f"- {ICONS['warned']} **{escape(c.id)}**"
                  f"{f' ({escape(r.audit)})' if len(results) > 1 else ''}: {escape(w)}"
                  for r, c, w in warned]
        lines += ["", "</details>", ""]
    lines += [f"**{closing_line(results)}**", ""]
    return "\n".join(lines)


def is_step_summary(path: Path) -> bool:
    """Whether ``path`` is the GitHub job summary file (then the summary is appended)."""
    summary = os.environ.get(SUMMARY_ENV)
    return bool(summary) and Path(summary).resolve() == path.resolve()


def write_markdown(path: Path, results: list[AuditResult]) -> None:
    text = render_markdown(results)
    if is_step_summary(path):
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(text)
    else:
        write_atomic(path, text)


@hookimpl
def robaudit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--md", dest="md_path", type=Path, default=None, metavar="PATH",
                        help="write a Markdown summary (the outcome table) to PATH; "
                             f"--md \"${SUMMARY_ENV}\" appends it to the GitHub job summary")


@hookimpl
def robaudit_configure(options: argparse.Namespace, pluginmanager: object) -> None:
    if getattr(options, "md_path", None):
        ensure_writable("--md", options.md_path)


@hookimpl
def robaudit_report(results: list[AuditResult], options: argparse.Namespace) -> None:
    path = getattr(options, "md_path", None)
    if path is not None:
        try:
            write_markdown(Path(path), results)
        except OSError as exc:
            raise UsageError(f"--md {path}: cannot write the report: {exc}") from None
