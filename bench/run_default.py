"""Time the default audit, each check next to its floor (the model passes it needs).

    python bench/run_default.py [SPEC] [--set key=value ...] [--threads N] [-k EXPR]

Goals (issue 2): the default audit within 60 s on 2 CPU cores, each check within 2× its floor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from floors import run_with_floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="specs/resnet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, help="torch CPU threads (`robaudit run --threads`)")
    parser.add_argument("-k", dest="keyword", help="select checks (`robaudit run -k`)")
    args = parser.parse_args()
    checks, floors, rates, wall = run_with_floors(args.spec, args.overrides, args.threads,
                                                  args.keyword)
    table = Table(title=f"{args.spec}: time per check against its floor")
    for column in ("check", "outcome", "time (s)", "floor (s)", "time / floor", "floor work"):
        table.add_column(column, justify="right" if "(" in column or "/" in column else "left")
    for check in checks:
        floor = floors.get(check.id)
        if floor is None:
            table.add_row(check.id, check.outcome, f"{check.duration_s:.3f}", "—", "—",
                          "not stated")
            continue
        seconds = rates.seconds(floor)
        ratio = check.duration_s / seconds if seconds > 0 else float("inf")
        work = floor.describe()
        table.add_row(check.id, check.outcome, f"{check.duration_s:.3f}", f"{seconds:.3f}",
                      f"{ratio:.2f}×" if seconds > 0 else "weights only", work)
    console = Console()
    console.print(table)
    console.print(f"model throughput: {rates.forward:,.0f} samples/s forward, "
                  f"{rates.gradient:,.0f} samples/s forward+input-gradient")
    console.print(f"whole audit (set-up included): {wall:.2f} s")


if __name__ == "__main__":
    main()
