"""Running one check (design §4, §10): :class:`CheckRunner`, the session's part that computes
a check's metric under its timeout, turns whatever the metric raises into the check's
:class:`robaudit.sharding.Failure`, and has the check judged (:func:`robaudit.judge.judge`)."""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from robaudit.baseline import Baseline
from robaudit.context import AuditContext
from robaudit.errors import MetricError, UsageError
from robaudit.guard import CheckTimeout, deadline
from robaudit.judge import judge
from robaudit.results import CheckResult
from robaudit.sharding import Failure
from robaudit.spec import Check

T = TypeVar("T")


class CheckRunner:
    """Runs and guards one check: a base class of :class:`robaudit.session.Session` (whose
    subclasses, such as bench/floors.py's, override :meth:`run_check`)."""

    options: argparse.Namespace
    #: ``--baseline``: the report that a ``regression`` is judged against
    baseline: Baseline | None

    def timeout_of(self, check: Check) -> float | None:
        """The check's own ``timeout``, else ``--timeout``, else none."""
        return check.timeout or getattr(self.options, "timeout", None)

    def run_check(self, check: Check, ctx: AuditContext, blocked: str | None = None,
                  fingerprint: str | None = None) -> CheckResult:
        """Compute one check and judge it (:func:`robaudit.gate.verdict`). A metric that raises
        (``SystemExit`` included) or runs past its timeout makes it ``error``; so does a
        ``blocked`` reason found before. ``fingerprint`` (of the audited data) pairs the check
        with its ``--baseline`` sample by sample."""
        start = time.perf_counter()
        if blocked is not None:
            return judge(check, Failure(blocked), 0.0, ctx.run_seed, fingerprint, self.baseline)
        outcome = self.guarded(check, lambda: check.metric.compute(ctx, check.params))
        return judge(check, outcome, time.perf_counter() - start, ctx.run_seed, fingerprint,
                     self.baseline)

    def guarded(self, check: Check, work: Callable[[], T]) -> T | Failure:
        """``work()`` under the check's timeout; what it raises as a :class:`Failure`."""
        try:
            with deadline(self.timeout_of(check)):
                return work()
        except (MetricError, UsageError, CheckTimeout) as exc:
            return Failure(str(exc))
        except SystemExit as exc:
            return Failure(f"the metric called sys.exit({exc.code!r})", traceback.format_exc())
        except Exception as exc:  # a broken metric must not stop the other checks
            return Failure(f"{type(exc).__name__}: {exc}", traceback.format_exc())
