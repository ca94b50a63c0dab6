"""Exceptions that the command line turns into exit codes without a traceback."""

from __future__ import annotations

#: Exit codes (design §4, pytest's meanings).
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_CHECKS = range(6)


class RobauditError(Exception):
    """Base class of robaudit's own errors."""


class UsageError(RobauditError):
    """Bad command line or invalid spec: exit code 4, message only."""


class SpecError(UsageError):
    """An invalid audit spec. ``problems`` holds one located message per error.

    Each message reads ``FILE:LINE: key.path: what was expected`` (the line where known).
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ParamError(UsageError):
    """A check's param that does not fit the loaded data (e.g. more neighbours than samples),
    raised by :meth:`robaudit.Metric.check_data`. The runner reports it as a located spec error
    (``FILE:LINE: checks.N.params.KEY: message``, exit code 4) before any check runs."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class MetricError(RobauditError):
    """Raised by a metric for a condition the user can fix (e.g. a module with no rule).

    The runner records it as the check's ``error`` message; no traceback is shown.
    """
