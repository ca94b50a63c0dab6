"""The thread policy, measured (issue #8): checks of the default audit under each thread setting,
on an idle machine and next to a busy neighbour (a process multiplying matrices on every core,
as another CI job on a shared runner would). Each time is the median of ``--repeats`` runs; the
ratio is against the best setting of the same condition. The goal: the default within about
1.3× of the best in both conditions.

    python bench/threads.py [--repeats 3] [-k "deepfool or pgd_linf or uap"] [--out FILE]
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

#: (label, --threads value or None for the default, OMP_WAIT_POLICY or None for unset)
SETTINGS = [
    ("robaudit default (cores available, passive wait)", None, None),
    ("2 threads, active wait (torch's default)", "2", "ACTIVE"),
    ("1 thread", "1", "ACTIVE"),
    ("1 thread, passive wait", "1", "PASSIVE"),
]

NEIGHBOUR = ("import torch\ntorch.set_num_threads(os.cpu_count())\n"
             "a = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n")


def run_once(threads: str | None, policy: str | None, keyword: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    args = [sys.executable, "-m", "robaudit", "run", str(SPEC), "-q", "-k", keyword]
    if threads:
        args += ["--threads", threads]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def measure(repeats: int, keyword: str) -> dict[str, list[float]]:
    return {label: [statistics.median(run_once(t, p, keyword) for _ in range(repeats))]
            for label, t, p in SETTINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-k", dest="keyword", default="deepfool or pgd_linf or uap")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "threads.md")
    options = parser.parse_args()

    idle = measure(options.repeats, options.keyword)
    neighbour = subprocess.Popen([sys.executable, "-c", "import os\n" + NEIGHBOUR])
    try:
        time.sleep(2)
        busy = measure(options.repeats, options.keyword)
    finally:
        neighbour.kill()

    best_idle = min(v[0] for v in idle.values())
    best_busy = min(v[0] for v in busy.values())
    lines = [
        f"# Thread settings (`bench/threads.py`, checks `{options.keyword}` of the default "
        f"audit, {os.cpu_count()} cores, median of {options.repeats})", "",
        "| setting | idle (s) | idle / best | busy neighbour (s) | busy / best |",
        "|---|---|---|---|---|",
    ]
    for label, *_ in SETTINGS:
        i, b = idle[label][0], busy[label][0]
        lines.append(f"| {label} | {i:.2f} | {i / best_idle:.2f}× | {b:.2f} | "
                     f"{b / best_busy:.2f}× |")
    text = "\n".join(lines) + "\n"
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
