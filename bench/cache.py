"""The cache between runs, measured (issue #13): the default audit twice with ``--cache-dir``;
per check the first and second run's time, their ratio, and whether values and details are
identical. Goal: identical values, at least 3× faster in the cached checks.

    python bench/cache.py [--out docs/bench/cache.md] [--threads 1] [-k EXPR] [--set K=V]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "resnet.yaml"


def run(cache: Path, report: Path, options: argparse.Namespace) -> list[dict]:
    selection = ["-k", options.keyword] if options.keyword else []
    overrides = [f"--set={item}" for item in options.overrides]
    done = subprocess.run([sys.executable, "-m", "robaudit", "run", str(SPEC), "-q",
                           "--threads", options.threads, "--cache-dir", str(cache), "--json",
                           str(report), *selection, *overrides],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in (0, 1):  # 1: a check failed, the figures still stand
        sys.exit(f"robaudit run failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(report.read_text())["checks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "cache.md")
    parser.add_argument("--threads", default="1")
    parser.add_argument("-k", dest="keyword", help="select checks (`robaudit run -k`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a spec override passed to `robaudit run --set`")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        first = run(cache, Path(folder) / "first.json", options)
        second = run(cache, Path(folder) / "second.json", options)
    lines = [f"# Cache between runs (`bench/cache.py`, default audit, {options.threads} "
             "thread(s))", "",
             "| check | first run (s) | second run (s) | speed-up | identical values and details |",
             "|---|---|---|---|---|"]
    for a, b in zip(first, second, strict=True):
        same = a["value"] == b["value"] and a["details"] == b["details"]
        ratio = a["duration_s"] / max(b["duration_s"], 1e-3)
        lines.append(f"| {a['id']} | {a['duration_s']:.2f} | {b['duration_s']:.2f} | "
                     f"{ratio:.1f}× | {'yes' if same else 'NO'} |")
    total = (sum(c["duration_s"] for c in first), sum(c["duration_s"] for c in second))
    lines.append(f"| **all checks** | {total[0]:.2f} | {total[1]:.2f} | "
                 f"{total[0] / max(total[1], 1e-3):.1f}× | |")
    text = "\n".join(lines) + "\n"
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
