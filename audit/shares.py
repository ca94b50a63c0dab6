"""A run shared among several processes (design §8): :class:`SharedRun`, the session's part
that runs this process's share of each check (whole checks, fits and units of sample metrics,
:mod:`robaudit.sharding`), passes the shares among the processes of a group, and has rank 0
(or ``robaudit merge``) judge each check from the shares of every process."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from robaudit.baseline import Baseline
from robaudit.context import AuditContext
from robaudit.distributed import POLL_S, World
from robaudit.judge import judge, result_or_failure
from robaudit.metric import MetricResult, SampleMetric, on_cpu
from robaudit.results import AuditResult, CheckResult
from robaudit.sharding import (
    Failure,
    Inbox,
    Share,
    reduce_shares,
    run_units,
    sendable,
    shard_placeholder,
    shard_record,
    task_groups,
)
from robaudit.spec import Check

if TYPE_CHECKING:
    from robaudit.preparation import AuditPlan

T = TypeVar("T")


class SharedRun:
    """The several-process run of :class:`robaudit.session.Session` (a base class of it); it
    uses the session's records, guard and check contexts, typed here."""

    options: argparse.Namespace
    #: this process among the run's processes (design §8)
    world: World
    #: ``--baseline``: the report that a ``regression`` is judged against
    baseline: Baseline | None
    #: in a process group: the running plan's inbox, result, run seed and data fingerprint
    inbox: tuple[Inbox, AuditResult, int, str | None] | None
    #: how many plans have started in a process group (names each plan's posts)
    plans_started: int
    record: Callable[[AuditResult, CheckResult], bool]
    overrides: Callable[[], list[str]]
    check_context: Callable[[Check, AuditContext], AuditContext]
    guarded: Callable[[Check, Callable[[], T]], T | Failure]

    def run_shares(self, plan: AuditPlan, base: AuditContext, result: AuditResult) -> bool:
        """This process's share of every check, in three phases: (1) the whole checks and
        the fits of the sample metrics (:func:`robaudit.sharding.task_groups`): in a process
        group each process takes the next task as it becomes free (a ticket counter in the
        rendezvous store), so that they run in parallel and balance; a ``--shard`` runs the
        whole checks of the tasks k ≡ I (mod N) and fits every sample metric itself;
        (2) every fit sent to every process; (3) this process's units of each sample metric.
        In a group each process posts its share of a check as soon as it is done
        (:class:`robaudit.sharding.Inbox`) and rank 0 judges each check once every share of it
        has arrived, so that a run cut short still reports every check that finished; the
        report lists the checks in plan order. A ``--shard`` keeps its shares for
        ``robaudit merge``."""
        world = self.world
        todo = [check for check in plan.checks if check.id not in plan.blocked]
        shares = {check.id: Share() for check in todo}
        tasks = task_groups(todo)
        fits: dict[str, Any] = {}
        inbox = Inbox(world, str(self.plans_started), plan.checks)
        if world.grouped:
            self.inbox = (inbox, result, base.run_seed, plan.data_identity.get("fingerprint"))
            self.plans_started += 1
            for check in plan.checks:
                if check.id in plan.blocked and world.reports:
                    self.record(result, self.combine(check, [], plan.blocked[check.id],
                                                     base.run_seed, None))
            for index in world.claim(len(tasks)):
                for check in tasks[index]:
                    fits.update(self.owned_work(check, self.check_context(check, base),
                                                shares[check.id]))
                    if not isinstance(check.metric, SampleMetric):
                        inbox.post(check, shares[check.id])
                self.take_in()
            fits = {cid: fit for part in world.all_gather(fits) for cid, fit in part.items()}
        else:
            for index, task in enumerate(tasks):
                for check in task:
                    world.check()
                    if index % world.size == world.rank or isinstance(check.metric,
                                                                      SampleMetric):
                        fits.update(self.owned_work(check, self.check_context(check, base),
                                                    shares[check.id]))
        for check in todo:
            if isinstance(check.metric, SampleMetric):
                world.check()
                self.unit_work(check, self.check_context(check, base), fits[check.id],
                               shares[check.id])
                if world.grouped:
                    inbox.post(check, shares[check.id])
                    self.take_in()
        if world.sharded:
            selection = {"keyword": getattr(self.options, "keyword", None),
                         "markexpr": getattr(self.options, "markexpr", None)}
            encoded = {cid: sendable(share) for cid, share in shares.items()}
            result.shard = shard_record(plan, self.overrides(), world, encoded, selection)
            for check in plan.checks:
                if not self.record(result, shard_placeholder(check, shares.get(check.id),
                                                             plan.blocked.get(check.id), world)):
                    return False
            return True
        # every check is recorded: the other processes have run this plan's work, and they
        # go on to the next spec whatever --maxfail says (it does not stop them)
        while world.reports and len(result.checks) < len(plan.checks):
            world.check()
            time.sleep(POLL_S)
            self.take_in()
        self.inbox = None
        return True

    def take_in(self) -> None:
        """Rank 0: judge and record the checks of the running plan whose shares have all
        arrived (in plan order, so the report's order is the plan's)."""
        if self.inbox is None or not self.world.reports:
            return
        inbox, result, seed, fingerprint = self.inbox
        taken = {check.id for check in result.checks}
        for check, parts in inbox.ready(taken):
            self.record(result, self.combine(check, parts, None, seed, fingerprint))
        order = {check.id: i for i, check in enumerate(inbox.checks)}
        result.checks.sort(key=lambda c: order.get(c.id, -1))

    def owned_work(self, check: Check, ctx: AuditContext, share: Share) -> dict[str, Any]:
        """Phase 1 of :meth:`run_shares` for a check this process owns: a whole check is
        computed into ``share``; a sample metric is fitted (its tensors on the CPU), and the
        fit, or the :class:`Failure` of the fit, is returned to be sent to every process."""
        metric, params = check.metric, check.params
        start = time.perf_counter()
        try:
            if isinstance(metric, SampleMetric):
                return {check.id: self.guarded(check, lambda: on_cpu(metric.fit(ctx, params)))}
            computed = result_or_failure(
                check, self.guarded(check, lambda: metric.compute(ctx, params)))
            if isinstance(computed, Failure):
                share.error = computed
            else:
                share.result = computed
            return {}
        finally:
            share.duration_s += time.perf_counter() - start

    def unit_work(self, check: Check, ctx: AuditContext, fitted: Any, share: Share) -> None:
        """Phase 3 of :meth:`run_shares`: this process's units of a sample metric."""
        start = time.perf_counter()
        if isinstance(fitted, Failure):
            share.error = fitted
        else:
            metric: SampleMetric = check.metric  # type: ignore[assignment]
            done = self.guarded(check, lambda: run_units(metric, ctx, check.params, fitted,
                                                         self.world.rank, self.world.size))
            if isinstance(done, Failure):
                share.error = done
            else:
                share.units, share.unit_count = done.units, done.unit_count
                share.fit_digest, share.fit_summary = done.fit_digest, done.fit_summary
        share.duration_s += time.perf_counter() - start

    def combine(self, check: Check, shares: list[Share], blocked: str | None, seed: int,
                fingerprint: str | None) -> CheckResult:
        """Judge a check from the shares of every process (rank 0, or ``merge``)."""
        duration = max((share.duration_s for share in shares), default=0.0)
        errors = [share.error for share in shares if share.error is not None]
        computed: MetricResult | Failure
        if blocked is not None:
            computed = Failure(blocked)
        elif errors:
            computed = errors[0]
        elif isinstance(check.metric, SampleMetric):
            metric = check.metric
            computed = self.guarded(check, lambda: reduce_shares(metric, check.params, shares))
        else:
            whole = [share.result for share in shares if share.result is not None]
            computed = whole[0] if whole else Failure("no process ran this check")
        return judge(check, computed, duration, seed, fingerprint, self.baseline)
