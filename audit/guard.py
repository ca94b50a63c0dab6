"""Signals and time limits of a run (design §3 ``timeout``, §4 SIGTERM, §5 reports survive).

- :func:`deadline` ends a check that runs past its ``timeout`` with :class:`CheckTimeout`.
- :func:`terminate_as_interrupt` makes SIGTERM (what CI systems send on cancel) and SIGHUP (a
  closed terminal, a dropped ssh session) act as Ctrl-C, as :class:`Terminated`, which names
  the signal for the console and the JSON ``stopped``.
- :func:`shielded` holds SIGINT, SIGTERM and SIGHUP back while reports are written, so that a
  second Ctrl-C does not lose them; the interrupt is raised once the block ends.
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


#: the signals that end a run as Ctrl-C does, with what the console and the report call them
TERMINATING: dict[signal.Signals, str] = {signal.SIGTERM: "terminated"}
if hasattr(signal, "SIGHUP"):  # not on Windows
    TERMINATING[signal.SIGHUP] = "hangup"


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) received as an interrupt (design §4: handled
    like Ctrl-C, exit code 2). :attr:`reason` names it: ``terminated (SIGTERM)``."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum)
        super().__init__(f"signal {self.signal.name}")

    @property
    def reason(self) -> str:
        return f"{TERMINATING.get(self.signal, 'stopped')} ({self.signal.name})"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM and SIGHUP raise :class:`Terminated` (a KeyboardInterrupt), so
    that a cancelled CI job or a closed terminal ends like Ctrl-C: exit code 2, the reports of
    what finished written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in TERMINATING}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def shielded() -> Iterator[None]:
    """Defer SIGINT, SIGTERM and SIGHUP until the block ends, then raise the first that came
    (KeyboardInterrupt, or :class:`Terminated`).

    Used around report writing: a report half written because of a second Ctrl-C would be
    lost (reports are also written atomically, so a kill never leaves a truncated file)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, *TERMINATING)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and received[0] in TERMINATING:
        raise Terminated(received[0])
    if received:
        raise KeyboardInterrupt(f"signal {signal.Signals(received[0]).name}")
