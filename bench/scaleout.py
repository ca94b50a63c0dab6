"""Scale-out (issue #14, design §8), measured: one spec run in one process and under
``torchrun --nproc-per-node N``, each process with one thread, in one session (so the ratios
share the machine's load). Reports are checked to be equal, then for each check: its time
in one process, its time on N processes (the slowest process's share), the speed-up, and how
it shards (units of a sample metric, or whole on one process).

The serial fraction f is read off the check phase (the processes' own start-up, which runs in
parallel but does not shrink, is reported apart) with Amdahl's law, S = 1 / (f + (1 − f)/N):
f = (N/S − 1)/(N − 1).

    python bench/scaleout.py [--spec specs/resnet.yaml | --size N] [--procs 2] [--repeats 2]
                             [--set KEY=VALUE ...] [-k EXPR] [--out FILE]

``--size N`` audits the CIFAR-size model of ``bench/size.py`` (a ResNet-18 at 3×32×32, trained
and cached on first use) on N samples instead of a spec.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], out: Path) -> tuple[float, dict[str, Any]]:
    """Wall time of ``command`` (which writes its JSON report to ``out``) and the report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, json.loads(out.read_text())


def sharding(metric: str) -> str:
    from robaudit.pluginmanager import load_plugins
    from robaudit.sharding import shards_samples

    return "units" if shards_samples(load_plugins([], []).metrics[metric]) else "whole"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/resnet.yaml")
    parser.add_argument("--size", type=int, metavar="N",
                        help="audit bench/size.py's ResNet-18 on N samples instead of --spec")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a spec override passed to `robaudit run --set`")
    parser.add_argument("-k", dest="keyword", help="select checks (`robaudit run -k`)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.size:
        from size import CACHE, write_spec  # bench/size.py, beside this script

        CACHE.mkdir(parents=True, exist_ok=True)
        args.spec = str(write_spec(args.size, "cpu", []))
    folder = Path(tempfile.mkdtemp(prefix="robaudit-scaleout-"))
    base = [args.spec, "--threads", "1", "-q", *(f"--set={o}" for o in args.overrides),
            *(["-k", args.keyword] if args.keyword else [])]
    single = [sys.executable, "-m", "robaudit", "run", *base]
    group = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             str(args.procs), "-m", "robaudit", "run", *base]
    walls: dict[str, list[float]] = {"one": [], "group": []}
    reports: dict[str, dict[str, Any]] = {}
    for repeat in range(args.repeats):  # alternate, so that load drifts hit both alike
        for name, command in (("one", single), ("group", group)):
            out = folder / f"{name}-{repeat}.json"
            wall, reports[name] = run([*command, "--json", str(out)], out)
            walls[name].append(wall)
    one, many = reports["one"], reports["group"]
    for a, b in zip(one["checks"], many["checks"], strict=True):
        if (a["outcome"], a["value"], a.get("samples")) != (b["outcome"], b["value"],
                                                          b.get("samples")):
            raise SystemExit(f"{a['id']}: the reports differ ({a['value']} vs {b['value']})")
    rows = [{"check": a["id"], "metric": a["metric"], "shards": sharding(a["metric"]),
             "one_s": a["duration_s"], "group_s": b["duration_s"],
             "speedup": a["duration_s"] / max(b["duration_s"], 1e-9)}
            for a, b in zip(one["checks"], many["checks"], strict=True)]
    n = args.procs
    checks_one, checks_group = one["duration_s"], many["duration_s"]
    speedup = checks_one / checks_group
    summary = {
        "procs": n, "spec": args.spec, "size": args.size, "repeats": args.repeats,
        "set": args.overrides,
        "keyword": args.keyword,
        "wall_one_s": statistics.median(walls["one"]),
        "wall_group_s": statistics.median(walls["group"]),
        "checks_one_s": checks_one, "checks_group_s": checks_group,
        "checks_speedup": speedup,
        "serial_fraction": (n / speedup - 1) / (n - 1) if n > 1 else 0.0,
        "whole_checks_one_s": sum(r["one_s"] for r in rows if r["shards"] == "whole"),
    }
    summary["wall_speedup"] = summary["wall_one_s"] / summary["wall_group_s"]
    print(f"| check | shards | 1 process (s) | {n} processes (s) | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['check']} | {r['shards']} | {r['one_s']:.3f} | {r['group_s']:.3f} | "
              f"{r['speedup']:.2f}× |")
    print(f"| **checks** | | **{checks_one:.2f}** | **{checks_group:.2f}** | "
          f"**{speedup:.2f}×** |")
    print(f"| **whole run, start-up included** | | **{summary['wall_one_s']:.2f}** | "
          f"**{summary['wall_group_s']:.2f}** | **{summary['wall_speedup']:.2f}×** |")
    print(f"\nserial fraction of the check phase (Amdahl): {summary['serial_fraction']:.2f}; "
          f"whole (unsharded) checks: {summary['whole_checks_one_s']:.2f} s of "
          f"{checks_one:.2f} s in one process")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "checks": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
