"""What the console and the Markdown summary share, in pytest's words: the closing line
(``2 failed, 10 passed, 1 measured, 3 deselected in 82.97s``), the ``-r`` characters that pick
the checks of the short summary, and why ``-x`` / ``--maxfail`` or ``--strict`` decided."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line imports this module; the results pull in numpy
    from robaudit.results import AuditResult, CheckResult

#: the closing line's order: pytest's (failed, passed, skipped, …, errors), robaudit's own
#: outcomes beside their nearest
CLOSING_ORDER = ("failed", "passed", "measured", "warned", "error", "skipped")

#: ``-r`` characters (pytest's, ``w`` for warned and ``m`` for measured): the outcomes each
#: puts in the short summary; ``a`` is all but passed, ``A`` all, ``N`` none
REPORT_CHARS = {"f": ("failed",), "E": ("error",), "s": ("skipped",), "w": ("warned",),
                "m": ("measured",), "p": ("passed",),
                "a": ("failed", "error", "skipped", "warned", "measured"),
                "A": ("failed", "error", "skipped", "warned", "measured", "passed"), "N": ()}
#: ``-r``'s default: what needs attention (pytest's ``fE``, and the warnings)
DEFAULT_REPORT_CHARS = "fEw"


def report_chars(text: str) -> str:
    """``-r``'s value, checked: every character one of :data:`REPORT_CHARS`."""
    unknown = sorted(set(text) - set(REPORT_CHARS))
    if unknown or not text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected characters of {''.join(REPORT_CHARS)} (f failed, E error, "
            "s skipped, w warned, m measured, p passed, a all but passed, A all, N none)")
    return text


def summary_outcomes(options: argparse.Namespace) -> list[str]:
    """The outcomes that the short summary lists under the run's ``-r`` (its default where the
    command has none), in the order of its characters, as pytest lists them."""
    chars = getattr(options, "reportchars", None) or DEFAULT_REPORT_CHARS
    if "N" in chars:
        return []
    return list(dict.fromkeys(outcome for char in chars for outcome in REPORT_CHARS[char]))


def counts(checks: Iterable[CheckResult]) -> dict[str, int]:
    found: dict[str, int] = {}
    for check in checks:
        found[check.outcome] = found.get(check.outcome, 0) + 1
    return found


def closing_line(results: list[AuditResult]) -> str:
    """``2 failed, 10 passed, 1 measured, 3 deselected in 82.97s``; ``no checks ran`` when
    none did."""
    found = counts(c for r in results for c in r.checks)
    order = [*CLOSING_ORDER, *sorted(set(found) - set(CLOSING_ORDER))]
    parts = [f"{found[o]} {'errors' if o == 'error' and found[o] > 1 else o}"
             for o in order if found.get(o)]
    if not parts:
        parts = ["no checks ran"]
    deselected = sum(r.deselected for r in results)
    if deselected:
        parts.append(f"{deselected} deselected")
    elapsed = sum(r.duration_s for r in results)
    return f"{', '.join(parts)} in {elapsed:.2f}s"


def counts_as_failure(check: CheckResult, strict: bool) -> bool:
    """Whether a check fails the run: ``failed``, ``error``, and ``warned`` under
    ``--strict`` (as the session counts them)."""
    return check.outcome in ("failed", "error") or (strict and check.outcome == "warned")


def stopped_early(results: list[AuditResult], options: argparse.Namespace) -> str | None:
    """pytest's ``stopping after N failures`` when ``-x`` / ``--maxfail N`` stopped the run,
    with how many selected checks did not run; None when it did not."""
    maxfail = getattr(options, "maxfail", 0) or 0
    if not maxfail or any(r.interrupted for r in results):
        return None
    strict = bool(getattr(options, "strict", False))
    failures = sum(counts_as_failure(c, strict) for r in results for c in r.checks)
    if failures < maxfail:
        return None
    selected = sum(r.selected for r in results)
    left = selected - sum(len(r.checks) for r in results)
    text = f"stopping after {failures} failures"
    if left > 0:
        text += f"; {left} of {selected} selected check{'s' if selected != 1 else ''} did " \
                "not run"
    return text


def strict_failures(results: list[AuditResult], options: argparse.Namespace) -> list[str]:
    """The ids of the warned checks that made the run fail under ``--strict``."""
    if not getattr(options, "strict", False):
        return []
    return [c.id for r in results for c in r.checks if c.outcome == "warned"]

