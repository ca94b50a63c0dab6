"""Signals and time limits of a run (design §3 ``timeout``, §4 SIGTERM, §5 reports survive).

- :func:`deadline` ends a check that runs past its ``timeout`` with :class:`CheckTimeout`.
- :func:`terminate_as_interrupt` makes SIGTERM (what CI systems send on cancel) act as Ctrl-C.
- :func:`shielded` holds SIGINT and SIGTERM back while reports are written, so that a second
  Ctrl-C does not lose them; the interrupt is raised once the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class CheckTimeout(BaseException):
    """Raised inside a check that ran past its time limit. A ``BaseException`` so that a
    metric's own ``except Exception`` cannot swallow it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


def timeouts_supported() -> bool:
    """Time limits need SIGALRM (not on Windows) and the main thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CheckTimeout` in the block once ``seconds`` have passed (wall clock).

    Python code is interrupted between bytecodes, so a check stuck in a Python loop or a sleep
    ends on time; a single long native call (one huge matrix product) ends when it returns.
    Without SIGALRM support the block runs without a limit."""
    if not seconds or not timeouts_supported():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise CheckTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt, so that a cancelled CI job ends like
    Ctrl-C: exit code 2, the reports of what finished written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def shielded() -> Iterator[None]:
    """Defer SIGINT and SIGTERM until the block ends, then raise KeyboardInterrupt if one came.

    Used around report writing: a report half written because of a second Ctrl-C would be
    lost (reports are also written atomically, so a kill never leaves a truncated file)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(f"signal {signal.Signals(received[0]).name}")
