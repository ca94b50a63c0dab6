"""The session (design §4): it validates every spec, selects the checks, has every plan
prepared (:mod:`robaudit.preparation`), runs each check (:mod:`robaudit.runner`, judged by
:mod:`robaudit.judge`) or each process's share of it (:mod:`robaudit.shares`), tells the
reporters, and gives the run's exit code."""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from typing import Any

import torch

from robaudit import lastrun
from robaudit.baseline import Baseline, load_baseline
from robaudit.context import AuditContext, KeepAlive
from robaudit.diskcache import warn_on_console
from robaudit.distributed import PeerFailure, World
from robaudit.errors import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKS,
    EXIT_OK,
    UsageError,
)
from robaudit.guard import Terminated, shielded, terminate_as_interrupt
from robaudit.metric import Floor
from robaudit.pluginmanager import Plugins
from robaudit.preparation import AuditPlan, Preparation, resolve_device
from robaudit.results import AuditResult, CheckResult, Outcome
from robaudit.runner import CheckRunner
from robaudit.selection import keyword_matches, marker_matches
from robaudit.sharding import Inbox
from robaudit.shares import SharedRun
from robaudit.spec import AuditSpec, load_specs, option_overrides
from robaudit.threads import thread_setting


def environment(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__, "device_name": name,
            "threads": thread_setting(torch.get_num_threads())}


class Session(SharedRun, Preparation, CheckRunner):
    """Runs specs with the loaded plugins and the parsed command-line options."""

    def __init__(self, plugins: Plugins, options: argparse.Namespace,
                 world: World | None = None) -> None:
        self.plugins = plugins
        self.options = options
        #: this process among the run's processes (design §8)
        self.world = world or World()
        self.hook = plugins.hook
        self.maxfail: int = getattr(options, "maxfail", 0) or 0
        self.failures = 0
        #: ``--strict``: a ``warned`` check counts as failed
        self.strict: bool = bool(getattr(options, "strict", False))
        baseline = getattr(options, "baseline", None)
        self.baseline: Baseline | None = load_baseline(baseline) if baseline else None
        #: what plugins raised in reporting hooks; the run goes on, the exit code says so
        self.hook_failures: list[str] = []
        #: in a process group: the running plan's inbox, result, run seed and data fingerprint
        self.inbox: tuple[Inbox, AuditResult, int, str | None] | None = None
        #: how many plans have started in a process group (names each plan's posts)
        self.plans_started = 0
        #: the progress displays of the prepared plans (their threads end with the run)
        self.keepalives: list[KeepAlive] = []
        #: how a warning about the run's set-up is shown (the pytest plugin: a pytest warning)
        self.warn: Callable[[str], None] = warn_on_console

    def counts_as_failure(self, outcome: Outcome) -> bool:
        """``failed`` and ``error``, and ``warned`` under ``--strict``."""
        return outcome in ("failed", "error") or (self.strict and outcome == "warned")

    def notify(self, name: str, **kwargs: Any) -> None:
        """Call every implementation of hook ``name`` on its own, in pluggy's order, so that one
        plugin that raises (a reporter that cannot write, a console that chokes on odd details)
        never stops the others; each failure is recorded in :attr:`hook_failures`. Only the
        process that reports (rank 0, or a shard) calls them."""
        if not self.world.reports:
            return
        for impl in reversed(getattr(self.hook, name).get_hookimpls()):
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except UsageError as exc:
                self.hook_failures.append(str(exc))
            except (Exception, SystemExit) as exc:
                self.hook_failures.append(f"plugin {impl.plugin_name!r} failed in {name}: "
                                          f"{type(exc).__name__}: {exc}")

    def write_reports(self, results: list[AuditResult]) -> None:
        """Every reporter, with SIGINT and SIGTERM held back until they are done."""
        with shielded():
            self.notify("robaudit_report", results=results, options=self.options)

    # -- validation and selection ---------------------------------------------------------
    def overrides(self) -> list[str]:
        return option_overrides(self.options)

    def load(self, paths: list[str]) -> list[AuditSpec]:
        """Validate every spec before anything runs (:func:`robaudit.spec.load_specs`)."""
        return load_specs(paths, self.plugins, self.overrides())

    def plan(self, spec: AuditSpec) -> AuditPlan:
        keyword = getattr(self.options, "keyword", None)
        markexpr = getattr(self.options, "markexpr", None)
        selected = [
            check for check in spec.checks
            if (not keyword or keyword_matches(keyword, check.id, check.metric.name))
            and (not markexpr or marker_matches(markexpr, check.tags))
        ]
        try:
            device = resolve_device(spec.model.device)
        except UsageError as exc:
            raise UsageError(spec.locate(("device",), str(exc))) from None
        if self.world.grouped and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.world.local_rank % torch.cuda.device_count())
        return AuditPlan(spec, selected, len(spec.checks) - len(selected), device,
                         processes=self.world.describe())

    # -- running ---------------------------------------------------------------------------
    def run_plan(self, plan: AuditPlan, base: AuditContext, result: AuditResult) -> bool:
        """Run a plan's checks into ``result``; False when ``--maxfail`` stopped the session."""
        torch.set_num_threads(plan.threads)
        result.model, result.data = plan.model_identity, plan.data_identity
        result.environment["threads"] = thread_setting(plan.threads)
        self.notify("robaudit_audit_start", plan=plan)
        if self.world.size > 1:
            return self.run_shares(plan, base, result)
        fingerprint = plan.data_identity.get("fingerprint")
        for check in plan.checks:
            check_result = self.run_check(check, self.check_context(check, base),
                                          plan.blocked.get(check.id), fingerprint)
            if not self.record(result, check_result):
                return False
        return True

    def record(self, result: AuditResult, check_result: CheckResult) -> bool:
        """Add a finished check to ``result`` and tell the reporters; False when
        ``--maxfail`` stops the session."""
        result.checks.append(check_result)
        self.notify("robaudit_check_finished", result=check_result)
        if self.counts_as_failure(check_result.outcome):
            self.failures += 1
            if self.maxfail and self.failures >= self.maxfail:
                return False
        return True

    def collect(self, paths: list[str]) -> list[tuple[AuditPlan, list[Floor | None]]]:
        """``--collect-only``: validate and prepare every spec (models built, data loaded and
        checked against them) and return each plan with the floor of each selected check;
        no check runs."""
        plans = [self.plan(spec) for spec in self.load(paths)]
        lastrun.select(plans, self.options, self.warn)
        collected = []
        with ExitStack() as stack:
            for plan in plans:
                floors: list[Floor | None] = []
                if plan.checks:
                    base = self.prepare(plan, stack)
                    floors = [c.metric.floor(self.check_context(c, base), c.params)
                              for c in plan.checks]
                collected.append((plan, floors))
        return collected

    def run(self, paths: list[str]) -> tuple[list[AuditResult], int]:
        """Run the specs; returns the results and the exit code (design.md §4). Reports are
        written for what finished however the run ends once checks have started; SIGTERM ends
        the run as Ctrl-C does. A reporter that failed makes the exit code 3 (unless the run
        was interrupted): the gate's record is incomplete."""
        specs = self.load(paths)
        plans = [self.plan(spec) for spec in specs]
        lastrun.select(plans, self.options, self.warn)
        results = [
            AuditResult(audit=p.spec.name, spec=str(p.spec.path), seed=p.spec.model.seed,
                        device=str(p.device),
                        environment={**environment(p.device), **self.world.environment()},
                        selected=len(p.checks), deselected=p.deselected)
            for p in plans
        ]
        if not any(p.checks for p in plans):
            self.write_reports(results)
            return results, EXIT_INTERNAL if self.hook_failures else EXIT_NO_CHECKS
        code = EXIT_OK
        with ExitStack() as stack:
            stack.enter_context(terminate_as_interrupt())
            bases = [self.prepare(plan, stack) if plan.checks else None for plan in plans]
            try:
                for plan, base, result in zip(plans, bases, results, strict=True):
                    if base is None:
                        continue
                    started = time.perf_counter()
                    try:
                        if not self.run_plan(plan, base, result):
                            break
                    finally:
                        result.duration_s = time.perf_counter() - started
            except (KeyboardInterrupt, PeerFailure) as exc:
                if isinstance(exc, Terminated):  # a launcher stopping the group for a failure?
                    self.world.blame()
                with suppress(Exception):  # the checks that finished on other processes
                    self.take_in()
                stopped = self.world.failure or (exc.reason if isinstance(exc, Terminated)
                                                 else None)
                for result in results:
                    result.interrupted, result.stopped = True, stopped
                code = EXIT_INTERNAL if self.world.failure else EXIT_INTERRUPTED
            finally:
                for keepalive in self.keepalives:
                    keepalive.close()
                self.write_reports(results)
        return results, self.exit_code(results, code)

    def exit_code(self, results: list[AuditResult], code: int = EXIT_OK) -> int:
        """The exit code of finished ``results`` (design §4): ``code`` if the run was cut
        short, else 1 when a check counts as failed; 3 when a reporter failed."""
        if code == EXIT_OK and any(self.counts_as_failure(c.outcome)
                                   for r in results for c in r.checks):
            code = EXIT_FAILED
        if self.hook_failures and code != EXIT_INTERRUPTED:
            code = EXIT_INTERNAL
        return code
