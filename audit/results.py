"""Results of checks and audits. Presentation lives in the reporters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from robaudit.figures import Figure

#: ``measured``: a check without thresholds (nor a regression judged against a baseline): its
#: value is recorded, not judged (design §10); it leaves the exit code alone.
Outcome = Literal["passed", "failed", "error", "skipped", "warned", "measured"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "error", "skipped", "warned", "measured")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. The first ten fields are the JSON report's (design §5)."""

    id: str
    metric: str
    outcome: Outcome
    value: float | None
    ci: tuple[float, float] | None
    expect: dict[str, Any]
    params: dict[str, Any]
    details: dict[str, Any]
    message: str
    duration_s: float
    tags: tuple[str, ...] = ()
    samples: tuple[float, ...] | None = None
    figures: tuple[Figure, ...] = ()
    traceback: str | None = None
    higher_is_better: bool | None = None
    baseline: dict[str, Any] | None = None

    @property
    def severity(self) -> str:
        return str(self.expect.get("severity", "fail"))


@dataclass
class AuditResult:
    """The result of one spec: its checks and where they ran."""

    audit: str
    spec: str
    seed: int
    device: str
    environment: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    #: why the run stopped early when it was not Ctrl-C (e.g. another process failed)
    stopped: str | None = None
    #: a ``--shard`` run's share of the work, for ``robaudit merge`` (design §8)
    shard: dict[str, Any] | None = None
    #: how many of the spec's checks ``-k`` / ``-m`` selected and deselected (the checks that
    #: ran are ``checks``: fewer than ``selected`` when ``-x`` / ``--maxfail`` stopped the run)
    selected: int = 0
    deselected: int = 0

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        for check in self.checks:
            counts[check.outcome] += 1
        return counts

    @property
    def outcome(self) -> Outcome:
        counts = self.summary()
        for outcome in ("error", "failed", "warned", "passed", "measured"):
            if counts[outcome]:
                return outcome  # type: ignore[return-value]
        return "skipped"


def detail_warnings(details: Mapping[str, Any]) -> list[str]:
    """The warnings a metric put in ``details.warnings`` (a list of strings, e.g. the attack
    preflight's findings), which the console, HTML and Markdown reports show with the check."""
    found = details.get("warnings")
    return [str(w) for w in found] if isinstance(found, (list, tuple)) else []


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: non-finite floats -> None, array-likes -> lists."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if callable(getattr(value, "tolist", None)):  # numpy / torch scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return str(value)
