"""Floors: the least time a check can take on this machine, from its :class:`robaudit.Floor`
(the model passes it needs) and the model's batched throughput measured in the same run.

A check's ratio = its time / its floor. The floor counts model work only, so a ratio near 1
means the metric spends its time in the model, not in its own bookkeeping.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robaudit.context import AuditContext
from robaudit.metric import Floor
from robaudit.model import ModelUnderAudit
from robaudit.pluginmanager import load_plugins
from robaudit.results import CheckResult
from robaudit.session import Session
from robaudit.spec import Check


@dataclass(frozen=True)
class Throughput:
    """Samples per second at the audit batch size: forward only, and forward + input grad."""

    forward: float
    gradient: float

    def seconds(self, floor: Floor) -> float:
        return floor.forward / self.forward + floor.gradient / self.gradient


def _rate(step: Callable[[], None], samples: int, budget: float) -> float:
    step()  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        step()
        done += samples
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return done / elapsed


def measure_throughput(model: ModelUnderAudit, x: torch.Tensor, budget: float = 1.0
                       ) -> Throughput:
    """Forward and forward+input-gradient rates of ``model`` on the batch ``x``."""

    def forward() -> None:
        with torch.no_grad():
            model.logits(x)

    def gradient() -> None:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model.logits(inputs).sum(), inputs)

    return Throughput(_rate(forward, len(x), budget), _rate(gradient, len(x), budget))


class FloorSession(Session):
    """A session that also records each check's floor and the run's base context."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.floors: dict[str, Floor | None] = {}
        self.context: AuditContext | None = None

    def run_check(self, check: Check, ctx: AuditContext, *args: Any, **kwargs: Any
                  ) -> CheckResult:
        """Record the floor, then run the check as :class:`Session` does (whatever else it
        passes along, so that a change of the runner's arguments cannot break the benches)."""
        self.context = ctx
        self.floors[check.id] = check.metric.floor(ctx, check.params)
        return super().run_check(check, ctx, *args, **kwargs)


def session_options(overrides: list[str] | None = None, threads: int | None = None,
                    keyword: str | None = None) -> argparse.Namespace:
    """The options of a quiet ``robaudit run`` with ``--set``, ``--threads`` and ``-k``."""
    return argparse.Namespace(quiet=1, verbose=0, overrides=overrides or [], threads=threads,
                              keyword=keyword)


def run_with_floors(spec: str, overrides: list[str] | None = None, threads: int | None = None,
                    keyword: str | None = None
                    ) -> tuple[list[CheckResult], dict[str, Floor | None], Throughput, float]:
    """Run a spec quietly; return its results, floors, the model throughput and wall time."""
    options = session_options(overrides, threads, keyword)
    session = FloorSession(load_plugins(), options)
    start = time.perf_counter()
    [result], _ = session.run([spec])
    wall = time.perf_counter() - start
    assert session.context is not None
    ctx = session.context
    batch = next(ctx.batches())[0]
    with ctx.model:
        rates = measure_throughput(ctx.model, batch)
    return result.checks, session.floors, rates, wall
