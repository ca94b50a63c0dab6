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


if __name__ == "__main__":
    sys.exit(main())
