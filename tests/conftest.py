"""Shared fixtures: a toy spec on disk and a ``robaudit`` subprocess runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent

# A suite started in the background (`nohup`, `cmd &` in a script) inherits SIGINT ignored, and so
# would every robaudit it spawns: the tests that press Ctrl-C on a run (or whose watchdog
# interrupts rank 0) would then see it ignored. Python's own handler here gives the children
# SIGINT's default back (an ignored signal stays ignored across exec, a handled one does not).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The README's command runs the suite on two pytest-xdist workers, whose environment has
# COLUMNS=80 and LINES=24 (pytest-xdist 3.8), which no CI log has: robaudit would take the 80
# columns as the log's width and cut long names in its tables. The workers run as a plain
# pytest would.
if "PYTEST_XDIST_WORKER" in os.environ:
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    """A folder holding the toy model factory file, for specs written into it."""
    shutil.copy(FIXTURES / "toy_model.py", tmp_path / "toy_model.py")
    return tmp_path


@pytest.fixture
def write_spec(toy_dir: Path) -> Callable[..., Path]:
    """Write a spec (YAML text, dedented) into the toy folder and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = toy_dir / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


TOY_HEADER = """\
audit: toy audit
model:
  factory: toy_model.py:linear
data:
  source: toy
"""


def cli(*args: str | Path, cwd: Path | None = None, timeout: float = 300,
        ) -> subprocess.CompletedProcess[str]:
    """Run ``robaudit ARGS -p toy_plugin`` in a subprocess (the console script's module)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FIXTURES),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "robaudit", *map(str, args), "-p", "toy_plugin"],
        capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=timeout,
    )


sys.path.insert(0, str(FIXTURES))
# The tests' tensors are tiny: one thread avoids oversubscribing small CI machines.
torch.set_num_threads(1)


@pytest.fixture
def cli_here(capsys: pytest.CaptureFixture[str]
             ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`cli` run in this process (``robaudit.cli.main`` in ``cwd``), for the tests of
    what a command does rather than of the process it runs in: the same arguments and result,
    without starting a Python that imports torch (seconds each)."""
    from robaudit.cli import main

    def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [*map(str, args), "-p", "toy_plugin"]
        before = Path.cwd()
        os.chdir(cwd or ROOT)
        try:
            code = main(argv)
        finally:
            os.chdir(before)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["robaudit", *argv], code, captured.out, captured.err)

    return run


@pytest.fixture
def robaudit_main(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``robaudit ARGS -p toy_plugin`` in this process: (exit code, stdout, stderr)."""
    from robaudit.cli import main

    def run(*args: str | Path) -> tuple[int, str, str]:
        code = main([*map(str, args), "-p", "toy_plugin"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
