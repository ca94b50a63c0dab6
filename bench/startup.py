"""Start-up benchmark (issue #24): how long the quick commands take, against ``--help``.

    python bench/startup.py [--repeats 5] [--metric clean_accuracy] [--out FILE]

Each command runs ``--repeats`` times as a user runs it (a fresh ``python -m robaudit``
process, one thread); its time is the median wall time, its ratio that median over the median
of ``robaudit --help`` measured in the same run, so that the ratios hold on a loaded machine.
The goal: ``metrics``, ``metrics NAME`` and ``validate specs/resnet.yaml`` within 2× of
``--help``. It also records whether each command imported torch (``-X importtime``), the cost
that the goal is about. Writes a Markdown table to ``--out`` (stdout when absent).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "resnet.yaml"
#: the target ratio to ``--help`` of every command
GOAL = 2.0


def commands(metric: str) -> list[list[str]]:
    """The measured commands, ``--help`` (the reference) first."""
    return [["--help"], ["metrics"], ["metrics", metric], ["validate", str(SPEC)]]


def run(args: list[str], importtime: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m robaudit ARGS`` with one thread; a non-zero exit is an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["-X", "importtime"] if importtime else []
    done = subprocess.run([sys.executable, *flags, "-m", "robaudit", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"robaudit {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def median_time(args: list[str], repeats: int) -> float:
    """The median wall time of ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: what every command that validates must import: the spec and params models are pydantic v2
#: models (design §2), so a fresh ``python -c`` importing it alone is a floor of ``validate``
#: and ``metrics``; the bare interpreter is a floor of everything
FLOORS = {"python -c pass": "pass", "python -c 'import pydantic'": "import pydantic.main"}


def median_code_time(code: str, repeats: int) -> float:
    """The median wall time of ``repeats`` runs of ``python -c CODE``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def imports_torch(args: list[str]) -> bool:
    """Whether the command imports torch (from its ``-X importtime`` log)."""
    log = run(args, importtime=True).stderr
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in log.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--metric", default="clean_accuracy",
                        help="the metric of `robaudit metrics NAME`")
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()

    rows = []
    reference = None
    for args in commands(opts.metric):
        seconds = median_time(args, opts.repeats)
        reference = reference or seconds
        rows.append((args, seconds, seconds / reference, imports_torch(args)))

    lines = [f"Median of {opts.repeats} runs each, one thread, Python {sys.version.split()[0]}; "
             f"goal: within {GOAL:g}× of `--help`.", "",
             "| command | median (s) | × `--help` | imports torch | within goal |",
             "|---|---|---|---|---|"]
    for args, seconds, ratio, torch in rows:
        shown = " ".join(Path(a).relative_to(ROOT).as_posix() if a == str(SPEC) else a
                         for a in args)
        lines.append(f"| `robaudit {shown}` | {seconds:.3f} | {ratio:.2f} | "
                     f"{'yes' if torch else 'no'} | {'yes' if ratio <= GOAL else 'NO'} |")
    assert reference is not None
    lines += ["", "Floors: what a fresh interpreter costs before robaudit runs code of its own.",
              "", "| command | median (s) | × `--help` |", "|---|---|---|"]
    for shown, code in FLOORS.items():
        seconds = median_code_time(code, opts.repeats)
        lines.append(f"| `{shown}` | {seconds:.3f} | {seconds / reference:.2f} |")
    text = "\n".join(lines) + "\n"
    if opts.out:
        opts.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
