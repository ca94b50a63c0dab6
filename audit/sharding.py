"""Shares of a check's work (design §8): which units a process runs, and how the shares of a
:class:`~robaudit.metric.SampleMetric` become its result.

The plan does not depend on the number of processes: units are the fixed, batch-aligned slices
of :func:`~robaudit.metric.work_units`, and process ``rank`` of ``world`` takes the units
k ≡ rank (mod world). Shares reach the reporting process (posted as each is done,
:class:`Inbox`, or in shard reports) and are concatenated in unit (= sample) order, so that the
reduction sees exactly what one process would have seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import robaudit
from robaudit.errors import MetricError
from robaudit.metric import (
    Metric,
    MetricResult,
    SampleMetric,
    Unit,
    UnitResult,
    gather_units,
    work_units,
)
from robaudit.results import CheckResult
from robaudit.wire import WireError, decode, digest, encode

if TYPE_CHECKING:
    from robaudit.context import AuditContext
    from robaudit.distributed import World
    from robaudit.preparation import AuditPlan
    from robaudit.spec import Check


@dataclass(frozen=True)
class Failure:
    """Why a check (or a process's share of it) could not be computed: the ``error``
    message and a traceback if any."""

    message: str
    traceback: str | None = None


@dataclass
class Share:
    """One process's part of one check.

    units        unit index → that unit's per-sample arrays and extras (a SampleMetric).
    result       the whole result, computed by this process (a metric that does not shard).
    error        the error that stopped this share (its message, and a traceback if any).
    fit_digest   a digest of the fit this share used (shards must agree on it).
    fit_summary  :meth:`SampleMetric.fit_summary` of that fit.
    duration_s   the time this process spent on the check.
    unit_count   how many units the check has in all.
    """

    units: dict[int, Any] = field(default_factory=dict)
    result: MetricResult | None = None
    error: Failure | None = None
    fit_digest: str | None = None
    fit_summary: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    unit_count: int = 0


def shards_samples(metric: Metric) -> bool:
    """Whether a metric's work splits by sample (a :class:`SampleMetric`); the others run
    whole on one process (weights-only bounds, pair and trial sampling, per-class fits)."""
    return isinstance(metric, SampleMetric)


def owned_units(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """The units process ``rank`` of ``world`` runs: k ≡ rank (mod world)."""
    return [unit for unit in units if unit.index % world == rank]


def task_groups(checks: list[Check]) -> list[list[Check]]:
    """The whole checks and fits of a plan as tasks, in plan order: one task a check, except
    that checks with the same :meth:`Metric.affinity` form one task (their shared work is then
    done once, by one process)."""
    groups: dict[Any, list[Check]] = {}
    for check in checks:
        key = check.metric.affinity(check.params)
        groups.setdefault(("check", check.id) if key is None else ("affinity", key),
                          []).append(check)
    return list(groups.values())


def run_units(metric: SampleMetric, ctx: AuditContext, params: Any, fitted: Any, rank: int,
              world: int) -> Share:
    """Process ``rank``'s units of a sample-sharded check, with the fit every process shares."""
    every = work_units(metric.sample_count(ctx, params), ctx.batch_size)
    units = owned_units(every, rank, world)
    task = ctx.progress(len(units), f"{metric.name} units")
    share = Share(fit_digest=digest(fitted), fit_summary=metric.fit_summary(fitted),
                  unit_count=len(every))
    for unit in units:
        done = metric.per_sample(ctx, params, unit, fitted)
        if not isinstance(done, UnitResult):
            raise MetricError(f"{metric.name}.per_sample returned {type(done).__name__}, "
                              "not a UnitResult")
        share.units[unit.index] = done
        task.advance()
    return share


def reduce_shares(metric: SampleMetric, params: Any, shares: list[Share]) -> MetricResult:
    """The result of a sample-sharded check from every process's share, in sample order.
    Raises ValueError when shares overlap, miss a unit, or fitted different things."""
    digests = {share.fit_digest for share in shares}
    if len(digests) > 1:
        raise ValueError("the shards fitted different things (their fits' digests differ): "
                         "they did not run the same model, data and seed")
    units: dict[int, Any] = {}
    for share in shares:
        overlap = units.keys() & share.units.keys()
        if overlap:
            raise ValueError(f"units {sorted(overlap)[:5]} were computed by two shards")
        units.update(share.units)
    missing = sorted(set(range(max(s.unit_count for s in shares))) - units.keys())
    if missing:
        raise ValueError(f"units {missing[:5]} are missing from the shards")
    return metric.reduce(params, gather_units([units[k] for k in sorted(units)],
                                              shares[0].fit_summary))


def encode_share(share: Share) -> dict[str, Any]:
    """A share as exact JSON data (what processes send and a shard report holds)."""
    result = share.result
    return {
        "units": [[index, {"arrays": encode(unit.arrays), "extra": encode(unit.extra)}]
                  for index, unit in sorted(share.units.items())],
        "result": None if result is None else {
            "value": encode(result.value), "samples": encode(result.samples),
            "ci": encode(result.ci), "details": encode(result.details),
            "figures": encode(list(result.figures))},
        "error": None if share.error is None else [share.error.message,
                                                    share.error.traceback],
        "fit_digest": share.fit_digest,
        "fit_summary": encode(share.fit_summary),
        "duration_s": share.duration_s,
        "unit_count": share.unit_count,
    }


def sendable(share: Share) -> dict[str, Any]:
    """:func:`encode_share`, or when the share holds what the wire does not carry (a metric's
    details of another type), the encoded share of that error."""
    try:
        return encode_share(share)
    except WireError as exc:
        return encode_share(Share(
            error=Failure(f"the result could not be sent between processes: {exc}"),
            duration_s=share.duration_s, unit_count=share.unit_count))


def decode_share(data: dict[str, Any]) -> Share:
    """The share :func:`encode_share` encoded (raises WireError, KeyError or TypeError on
    data it did not write)."""
    result = data["result"]
    error = data["error"]
    return Share(
        units={int(index): UnitResult(decode(unit["arrays"]), decode(unit["extra"]))
               for index, unit in data["units"]},
        result=None if result is None else MetricResult(
            value=decode(result["value"]), samples=decode(result["samples"]),
            ci=decode(result["ci"]), details=decode(result["details"]),
            figures=decode(result["figures"])),
        error=None if error is None else Failure(str(error[0]), error[1]),
        fit_digest=data["fit_digest"],
        fit_summary=decode(data["fit_summary"]),
        duration_s=float(data["duration_s"]),
        unit_count=int(data["unit_count"]),
    )


class Inbox:
    """The shares of one plan's checks as the processes of a group post them (design §8):
    each process posts its share of a check as soon as its part is done (a whole check when it
    is computed, a sample check's units when they are), and rank 0 takes each check in once it
    is complete: a whole check from the process that ran it, a sample check from every process.
    So rank 0 holds every finished check however the run ends."""

    def __init__(self, world: World, topic: str, checks: list[Check]) -> None:
        self.world, self.topic = world, topic
        self.checks = checks
        self.parts: dict[str, dict[int, Share]] = {check.id: {} for check in checks}

    def post(self, check: Check, share: Share) -> None:
        """Send this process's share of ``check`` to rank 0; a share that cannot be encoded
        (a metric's details of a type the wire does not carry) is sent as its error."""
        self.world.post(f"{self.topic}/{check.id}", json.dumps(sendable(share)))

    def ready(self, taken: set[str]) -> list[tuple[Check, list[Share]]]:
        """The complete checks not in ``taken``, in plan order, each with its shares."""
        complete = []
        for check in self.checks:
            if check.id in taken:
                continue
            parts = self.parts[check.id]
            for rank in range(self.world.size):
                if rank not in parts:
                    text = self.world.posted(f"{self.topic}/{check.id}", rank)
                    if text is not None:
                        parts[rank] = decode_share(json.loads(text))
            if len(parts) == self.world.size or (parts and not shards_samples(check.metric)):
                complete.append((check, [parts[rank] for rank in sorted(parts)]))
        return complete


def spec_digest(plan: AuditPlan, overrides: list[str]) -> str:
    """A sha256 of the spec file's bytes and the command-line overrides applied to it."""
    text = plan.spec.path.read_bytes() + "\0".join(overrides).encode()
    return hashlib.sha256(text).hexdigest()


def shard_record(plan: AuditPlan, overrides: list[str], world: World,
                 shares: dict[str, Any], selection: dict[str, str | None]) -> dict[str, Any]:
    """The ``shard`` object of a ``--shard I/N`` report: what ``merge`` needs to check that
    the shards belong together (spec, overrides, seed, version, selection and the ``-k`` /
    ``-m`` expressions that made it, data, model) and each check's encoded share."""
    return {
        "index": world.rank, "count": world.size,
        "robaudit": robaudit.__version__,
        "spec_sha256": spec_digest(plan, overrides),
        "overrides": list(overrides),
        "seed": plan.spec.model.seed,
        "selected": [check.id for check in plan.checks],
        "selection": dict(selection),
        "data_fingerprint": plan.data_identity.get("fingerprint"),
        "model": plan.model_identity,
        "blocked": dict(plan.blocked),
        "shares": shares,
    }


def shard_placeholder(check: Check, share: Share | None, blocked: str | None,
                      world: World) -> CheckResult:
    """What a shard reports of a check: ``skipped`` (``merge`` judges it) with what this shard
    did, or ``error`` when its share failed."""
    name = f"shard {world.rank}/{world.size}"
    if blocked is not None:
        outcome, message = "error", blocked
    elif share is not None and share.error is not None:
        outcome, message = "error", f"{name}: {share.error.message}"
    elif share is not None and share.units:
        outcome = "skipped"
        message = (f"{name}: {len(share.units)} of {share.unit_count} units computed; "
                   "`robaudit merge` judges the check")
    elif share is not None and share.result is not None:
        outcome, message = "skipped", f"{name}: computed whole; `robaudit merge` judges it"
    else:
        outcome, message = "skipped", f"{name}: another shard computes this check"
    return CheckResult(
        id=check.id, metric=check.metric.name, outcome=outcome, value=None, ci=None,
        expect=check.expect, params=check.params.model_dump(mode="json"), details={},
        message=message, duration_s=share.duration_s if share else 0.0, tags=check.tags,
        higher_is_better=check.metric.higher_is_better)
