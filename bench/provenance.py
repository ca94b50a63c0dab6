"""What a reproduction document records at its top: the exact command that regenerates it."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command_line() -> str:
    """``python bench/SCRIPT.py ARGS`` as this process was started, paths relative to the
    repository, so that a reader can rerun it verbatim from a clone."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])
