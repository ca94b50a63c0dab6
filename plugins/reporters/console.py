"""The console reporter: pytest-style lines, failure summary and closing line (design.md §4).

A check's line gives its outcome (MEASURED for one without thresholds, design §10), its
message and its 95% interval once. The short summary lists the checks that ``-r`` picks (as
pytest's; default ``fEw``), says which warned checks failed the run under ``--strict``, and
``stopping after N failures`` with how many selected checks did not run when ``-x`` /
``--maxfail`` stopped it; the closing line counts the deselected checks too.

A progress bar shows long checks on a terminal. When the output is not a terminal (a CI log),
a long check prints a heartbeat line instead, at most one every ``--heartbeat`` seconds (30 by
default): which check, the step it is in, how far that step is and the time elapsed, so that a
five-minute check is not five minutes of silence and a short one prints nothing. ``-q`` and
``--heartbeat 0`` silence it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

import robaudit
from robaudit import hookimpl
from robaudit.plugins.reporters._summary import (
    closing_line,
    stopped_early,
    strict_failures,
    summary_outcomes,
)
from robaudit.results import AuditResult, CheckResult, detail_warnings, jsonable
from robaudit.text import interval as interval_text
from robaudit.text import printable
from robaudit.threads import thread_setting

if TYPE_CHECKING:
    from robaudit.context import ProgressFactory, ProgressTask
    from robaudit.preparation import AuditPlan

STYLES = {"passed": "green", "failed": "red", "error": "red", "skipped": "yellow",
          "warned": "yellow", "measured": "cyan"}
WORDS = {"passed": "PASSED", "failed": "FAILED", "error": "ERROR", "skipped": "SKIPPED",
         "warned": "WARNED", "measured": "MEASURED"}


def safe(text: object) -> str:
    """Text from a spec or a plugin for the console: control characters escaped (design §9),
    rich markup escaped."""
    return escape(printable(text))


class _BarTask:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def advance(self, amount: float = 1) -> None:
        self.progress.advance(self.task, amount)


#: seconds between two heartbeat lines by default
HEARTBEAT_S = 30.0


def heartbeat_seconds(text: str) -> float:
    """``--heartbeat``'s value: a finite number of seconds >= 0 (0 switches heartbeats off)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


class Heartbeat:
    """Progress for a log: one line at most every ``interval`` seconds of wall time, written
    when a metric advances a progress task. It names the running check (set by
    :meth:`start_check`), the task's description, how far it is and the time since the check
    started; the first line comes ``interval`` seconds into the check."""

    def __init__(self, console: Console, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.interval, self.clock = console, interval, clock
        self.check = ""
        self.started = self.last = clock()

    def start_check(self, check_id: str) -> None:
        self.check = check_id
        self.started = self.last = self.clock()

    def __call__(self, total: float, description: str) -> ProgressTask:
        return _HeartbeatTask(self, total, description)

    def beat(self, task: _HeartbeatTask) -> None:
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        where = f"{safe(self.check)}: " if self.check else ""
        share = f" ({100 * task.done / task.total:.0f}%)" if task.total > 0 else ""
        self.console.print(f"  [dim]...[/] {where}{safe(task.description)} "
                           f"{task.done:.0f}/{task.total:.0f}{share}, "
                           f"{now - self.started:.0f}s elapsed")


class _HeartbeatTask:
    def __init__(self, heartbeat: Heartbeat, total: float, description: str) -> None:
        self.heartbeat, self.total, self.description = heartbeat, total, description
        self.done = 0.0

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        self.heartbeat.beat(self)


class ConsoleReporter:
    """Prints the run the way pytest prints a test session."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.verbosity = getattr(options, "verbose", 0) - getattr(options, "quiet", 0)
        self.console = Console(highlight=False, soft_wrap=True)
        self.bar: Progress | None = None
        interval = getattr(options, "heartbeat", HEARTBEAT_S)
        self.heartbeat = Heartbeat(self.console, interval) \
            if self.verbosity >= 0 and interval > 0 and not self.console.is_terminal else None
        self.pending: list[str] = []  # ids of the checks of the running plan not yet finished

    def rule(self, text: str, style: str = "bold", characters: str = "=") -> None:
        self.console.rule(f"[{style}]{text}", characters=characters, style=style)

    @hookimpl
    def robaudit_progress(self, options: argparse.Namespace) -> ProgressFactory | None:
        if self.heartbeat is not None:
            return self.heartbeat
        if self.verbosity < 0 or not self.console.is_terminal:
            return None

        def start(total: float, description: str) -> ProgressTask:
            if self.bar is None:
                self.bar = Progress(TextColumn("  {task.description}"), BarColumn(),
                                    TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                                    TimeElapsedColumn(), console=self.console, transient=True)
                self.bar.start()
            return _BarTask(self.bar, self.bar.add_task(description, total=total))

        return start

    def stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    @hookimpl
    def robaudit_audit_start(self, plan: AuditPlan) -> None:
        import torch

        # several processes: checks finish together at the end of the spec, so the heartbeat
        # names the run ("2 processes (gloo)", "shard 0/2") and the task names the check
        self.pending = [] if plan.processes else [check.id for check in plan.checks]
        self.next_check()
        if plan.processes and self.heartbeat is not None:
            self.heartbeat.start_check(plan.processes)
        if self.verbosity < 0:
            return
        self.rule("robaudit session starts")
        self.console.print(
            f"robaudit {robaudit.__version__}, python {platform.python_version()}, "
            f"torch {torch.__version__}, device {plan.device}, seed {plan.spec.model.seed}, "
            f"threads {thread_setting(plan.threads)}"
            + (f", {safe(plan.processes)}" if plan.processes else "")
        )
        model = plan.spec.model.model
        where = ": ".join(model.source)
        weights = f" ({model.weights})" if model.weights else ""
        data = plan.spec.model.data
        sizes = ", ".join(f"{k} {v}" for k, v in plan.data_summary.items())
        self.console.print(f"spec: {safe(str(plan.spec.path))} — {safe(plan.spec.name)}")
        self.console.print(f"model: {safe(str(where))}{safe(weights)}")
        self.console.print(f"data: {safe(data.source)}, split {safe(repr(data.split))}, "
                           f"reference {safe(repr(data.reference))} ({safe(sizes)})")
        if plan.reference_is_split:
            self.console.print(
                f"[yellow]WARNING[/] the {safe(data.source)} source has no split "
                f"{safe(repr(data.reference))}: the reference is the audit split itself, so "
                "figures fitted on the reference (a universal perturbation) are not held out")
        deselected = f" / {plan.deselected} deselected" if plan.deselected else ""
        count = len(plan.checks)
        self.console.print(f"[bold]collected {count} check{'s' if count != 1 else ''}"
                           f"{deselected}[/]" + ("\n" if not plan.rerun else ""))
        if plan.rerun:
            self.console.print(f"{safe(plan.rerun)}\n")

    def next_check(self) -> None:
        """The heartbeat follows the checks in the plan's order, the order they run in."""
        if self.heartbeat is not None and self.pending:
            self.heartbeat.start_check(self.pending[0])

    @hookimpl
    def robaudit_check_finished(self, result: CheckResult) -> None:
        self.stop_bar()
        if self.pending and self.pending[0] == result.id:
            self.pending.pop(0)
            self.next_check()
        if self.verbosity < 0 and result.outcome in ("passed", "measured"):
            return  # -q: what needs attention only
        style = STYLES[result.outcome]
        ci = ""  # the interval once: a `by: ci` message holds it already
        if result.ci and "95% CI" not in result.message:
            ci = f" (95% CI {interval_text(result.ci)})"
        name = f"{result.id} "
        dots = "." * max(2, 34 - len(name))
        self.console.print(
            f"{safe(name)}[dim]{dots}[/] [{style}]{WORDS[result.outcome]:<8}[/] "
            f"{safe(result.message)}{ci} [dim]\\[{result.duration_s:.2f}s][/]"
        )
        for warning in detail_warnings(result.details):
            self.console.print(f"    [yellow]WARNING[/] {safe(warning)}")
        if self.verbosity > 0:
            self.print_details(result)

    def print_details(self, result: CheckResult) -> None:
        params = json.dumps(result.params)
        self.console.print(f"    [dim]params: {safe(params)}[/]")
        for key, value in jsonable(result.details).items():
            self.console.print(f"    [dim]{safe(key)}: {safe(_short(value))}[/]")
        if result.traceback:
            self.console.print(safe(result.traceback), style="red")

    @hookimpl(trylast=True)
    def robaudit_report(self, results: list[AuditResult], options: argparse.Namespace) -> None:
        self.stop_bar()
        checks = [c for r in results for c in r.checks]
        listed = summary_outcomes(options)
        shown = sorted((c for c in checks if c.outcome in listed),
                       key=lambda c: listed.index(c.outcome))
        strict = strict_failures(results, options)
        stopped = next((r.stopped for r in results if r.stopped), None)
        if stopped:
            self.console.print(f"\n[red]!!! {safe(stopped)}: the run stopped !!![/]")
        elif any(r.interrupted for r in results):
            self.console.print("\n[red]!!! KeyboardInterrupt: the run was interrupted !!![/]")
        if shown and self.verbosity >= 0:
            self.rule("short summary info", "bold")
            for check in shown:
                why = " (--strict: counts as failed)" if check.id in strict else ""
                self.console.print(f"[{STYLES[check.outcome]}]{WORDS[check.outcome]}[/] "
                                   f"{safe(check.id)} - {safe(check.message)}{why}")
        if strict:
            self.console.print(f"[red]--strict: {len(strict)} warned check"
                               f"{'s' if len(strict) != 1 else ''} made the run fail: "
                               f"{safe(', '.join(strict))}[/]")
        early = stopped_early(results, options)
        if early:
            self.rule(safe(early), "red", "!")
        failed = bool(strict) or any(c.outcome in ("failed", "error") for c in checks)
        attention = any(c.outcome in ("warned", "measured") for c in checks)
        style = "red" if failed else ("yellow" if attention or not checks else "green")
        self.rule(closing_line(results), style)


def _short(value: Any) -> str:
    text = json.dumps(jsonable(value), default=str)
    return text if len(text) <= 160 else text[:157] + "..."


@hookimpl
def robaudit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat", type=heartbeat_seconds, default=HEARTBEAT_S, metavar="S",
                        help="when the output is not a terminal (a CI log), print a progress "
                             "line at most every S seconds of a long check (default: "
                             f"{HEARTBEAT_S:g}; 0: never)")


@hookimpl
def robaudit_configure(options: argparse.Namespace, pluginmanager: pluggy.PluginManager) -> None:
    pluginmanager.register(ConsoleReporter(options), "console-reporter")
