"""The thread policy, measured (issue #8): checks of the default audit (the digits ResNet, a
small model) and one forward and input-gradient pass of a batch of 64 through a torchvision
ResNet-18 at 3×32×32 (a large one) under each thread setting, on an idle machine and next to a
busy neighbour (a process multiplying matrices on every core, as another CI job on a shared
runner would). Each time is the median of ``--repeats`` runs; the ratio is against the best
setting of the same condition. The goal: the default within about 1.3× of the best in both.

    python bench/threads.py [--repeats 3] [-k "deepfool or pgd_linf or uap"] [--batch 64]
                            [--settings I ...] [--out FILE]
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

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "resnet.yaml"

#: (label, --threads value or None for the default, OMP_WAIT_POLICY or None for unset)
SETTINGS = [
    ("1 thread, passive wait", "1", "PASSIVE"),
    ("2 threads, passive wait", "2", "PASSIVE"),
    ("2 threads, active wait", "2", "ACTIVE"),
    ("2 threads, torch's default wait", "2", None),
]

#: one forward and input-gradient pass of a batch through a ResNet-18 at 3×32×32, timed
RESNET18 = """
import sys, time, torch, torchvision
torch.set_num_threads(int(sys.argv[1]))
net = torchvision.models.resnet18(num_classes=10).eval()
for p in net.parameters():
    p.requires_grad_(False)
x = torch.rand(int(sys.argv[2]), 3, 32, 32, requires_grad=True)
def step():
    torch.autograd.grad(net(x).sum(), x)
step()
start = time.perf_counter()
for _ in range(5):
    step()
print((time.perf_counter() - start) / 5)
"""

NEIGHBOUR = ("import torch\ntorch.set_num_threads(os.cpu_count())\n"
             "a = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n")


def _env(policy: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    # robaudit's entry point sets PASSIVE when unset; torch's default is asked for explicitly
    env["OMP_WAIT_POLICY"] = policy or ""
    return env


def audit_once(threads: str, policy: str | None, keyword: str) -> float:
    """The checks' own time (the JSON durations), without start-up."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "r.json"
        subprocess.run([sys.executable, "-m", "robaudit", "run", str(SPEC), "-q", "-k", keyword,
                        "--threads", threads, "--json", str(report)],
                       check=True, capture_output=True, env=_env(policy), cwd=ROOT)
        return sum(c["duration_s"] for c in json.loads(report.read_text())["checks"])


def resnet18_once(threads: str, policy: str | None, batch: int) -> float:
    done = subprocess.run([sys.executable, "-c", RESNET18, threads, str(batch)], check=True,
                          capture_output=True, text=True, env=_env(policy))
    return float(done.stdout.strip())


def measure(options: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Per setting: (default-audit checks, ResNet-18 pass), medians of ``repeats``."""
    repeats = range(options.repeats)
    return {label: (statistics.median(audit_once(t, p, options.keyword) for _ in repeats),
                    statistics.median(resnet18_once(t, p, options.batch) for _ in repeats))
            for label, t, p in options.settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-k", dest="keyword", default="deepfool or pgd_linf or uap")
    parser.add_argument("--batch", type=int, default=64, help="the ResNet-18 pass's batch")
    parser.add_argument("--settings", type=int, nargs="+", metavar="I",
                        help="measure only these of the settings (0-based)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "threads.md")
    options = parser.parse_args()
    options.settings = [SETTINGS[i] for i in options.settings or range(len(SETTINGS))]

    idle = measure(options)
    neighbour = subprocess.Popen([sys.executable, "-c", "import os\n" + NEIGHBOUR])
    try:
        time.sleep(2)
        busy = measure(options)
    finally:
        neighbour.kill()

    lines = [f"# Thread settings (`bench/threads.py`, {os.cpu_count()} cores, median of "
             f"{options.repeats})", ""]
    for column, title in ((0, f"Default audit, checks `{options.keyword}` (digits ResNet, "
                              "0.5 M multiply-adds a sample): the checks' time"),
                          (1, "ResNet-18 at 3×32×32 (37 M multiply-adds a sample): one forward "
                              f"and input-gradient pass of {options.batch} samples")):
        best_idle = min(v[column] for v in idle.values())
        best_busy = min(v[column] for v in busy.values())
        lines += [f"## {title}", "",
                  "| setting | idle (s) | idle / best | busy neighbour (s) | busy / best |",
                  "|---|---|---|---|---|"]
        for label, *_ in options.settings:
            i, b = idle[label][column], busy[label][column]
            lines.append(f"| {label} | {i:.3f} | {i / best_idle:.2f}× | {b:.3f} | "
                         f"{b / best_busy:.2f}× |")
        lines.append("")
    lines.append("robaudit's default: 1 thread below 5 M multiply-adds a sample, else one per "
                 "available core, passive wait (`robaudit.threads`).")
    text = "\n".join(lines) + "\n"
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
