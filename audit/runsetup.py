"""What an audit run sets up, whichever entry point starts it (design §4, §8).

``robaudit run`` (:mod:`robaudit.cli`) and the pytest plugin (:mod:`robaudit.pytest_plugin`)
both call :func:`start_run` before their first check and run each spec's checks under
:func:`plan_threads`, so that an audit under pytest runs as fast as, and stops as,
``robaudit run``:

- OpenMP waits passively (:func:`robaudit.threads.prefer_passive_waiting`). OpenMP reads the
  policy once, when torch loads it, so :func:`wait_passively` sets it only while torch is not
  imported yet: set later, it would change nothing and the run would say it waits passively.
- ``--timeout``, ``--threads``, ``--cache-dir`` and ``--cache-memory`` are checked (a usage
  error, exit code 4).
- SIGTERM acts as Ctrl-C (:func:`robaudit.guard.terminate_as_interrupt`).
- torch runs each spec's checks on the threads chosen for its model (``plan.threads``: ``--threads``
  or :func:`robaudit.threads.default_threads`), and gets its own count back afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from robaudit.errors import UsageError
from robaudit.threads import prefer_passive_waiting


def wait_passively(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Ask OpenMP to wait passively if torch is not imported yet (an ``OMP_WAIT_POLICY``
    the user set is kept); True when the policy could still be chosen."""
    if "torch" in sys.modules:
        return False
    prefer_passive_waiting(environ)
    return True


#: ``--cache-memory``'s units (binary: 1K = 1024 bytes)
UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20,
         "MIB": 2**20, "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40,
         "TIB": 2**40}


def memory_bytes(text: str) -> int:
    """``--cache-memory``'s size in bytes: a number of bytes or a number with a binary unit
    (``512M``, ``4G``, ``1.5GiB``; ``0`` keeps nothing); a usage error otherwise."""
    number = text.strip()
    digits = number.rstrip("KMGTBkmgtbIi")
    unit = number[len(digits):].upper()
    try:
        size = float(digits)
    except ValueError:
        size = -1.0
    if unit not in UNITS or not (0 <= size < float("inf")):
        raise UsageError(f"--cache-memory {text}: expected a size such as 512M, 4G or 0 "
                         "(bytes, or K, M, G, T: binary units)")
    return int(size * UNITS[unit])


def check_options(options: argparse.Namespace) -> None:
    """The options every run reads: ``--timeout``, ``--threads``, ``--cache-dir`` and
    ``--cache-memory``."""
    timeout = getattr(options, "timeout", None)
    if timeout is not None and not (0 < timeout < float("inf")):
        raise UsageError(f"--timeout {timeout}: expected a positive number of seconds")
    threads = getattr(options, "threads", None)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: expected a positive number")
    if getattr(options, "cache_dir", None):
        check_cache_dir(Path(options.cache_dir))
    if getattr(options, "cache_memory", None) is not None:
        memory_bytes(options.cache_memory)


def check_cache_dir(folder: Path) -> None:
    """``--cache-dir`` must name a folder or a path where one can be made: the nearest part of
    it that exists must be a folder."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                what = "names a file" if part == folder else f"is inside {part}, a file"
                raise UsageError(f"--cache-dir {folder}: {what}; expected a folder (created "
                                 "if missing) to keep the cache in")
            return


def start_run(options: argparse.Namespace, stack: ExitStack) -> None:
    """Set up a run: the wait policy (while it can still act), the options checked, and
    SIGTERM as Ctrl-C until ``stack`` closes."""
    from robaudit.guard import terminate_as_interrupt

    wait_passively()
    check_options(options)
    stack.enter_context(terminate_as_interrupt())


@contextmanager
def plan_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to a plan's ``threads`` inside the block, restored after it
    (a pytest session goes on with other tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
