"""Exceptions that the command line turns into exit codes without a traceback."""

from __future__ import annotations


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


class MetricError(RobauditError):
    """Raised by a metric for a condition the user can fix (e.g. a module with no rule).

    The runner records it as the check's ``error`` message; no traceback is shown.
    """
