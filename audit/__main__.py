"""``python -m robaudit`` and the ``robaudit`` console script.

Kept free of heavy imports, so that Ctrl-C while torch loads exits 2 without a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    """Import the command line, then run it; an interrupt during the import is exit 2. OpenMP's
    wait policy is chosen first: it is read when torch starts (see ``robaudit.threads``)."""
    from robaudit.threads import prefer_passive_waiting

    prefer_passive_waiting()
    try:
        from robaudit.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        return 2
    return run()


def exit_with(code: int) -> None:
    """Exit with ``code``. An interrupted run (2) leaves by ``os._exit`` once its output is
    flushed: CPython kills a process with SIGINT at exit (status -2, not 2) when a
    KeyboardInterrupt ever escaped a nested code run during start-up, even one that robaudit
    then caught; the reports are already written by then."""
    if code != 2:
        sys.exit(code)
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_with(main())
