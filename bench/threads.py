"""The thread policy, measured (issues #8, #23): whole audits of a small model (the default
audit's digits ResNet, 0.5 M multiply-adds a sample) and of a large one (a torchvision ResNet-18
at 3×32×32, 37 M, the model of ``bench/size.py`` with random weights) under each thread setting,
on the machine as it is ("idle") and next to a stated busy load: ``--busy`` processes that each
burn one core in a Python loop (another CI job on a shared runner), started and stopped by the
bench. Each audit runs in a fresh process (the wait policy is read when torch loads); the
figures are its wall time and the CPU time of all its threads (``time.process_time``) from the
start of ``Session.run`` to its end (spec, model, data and checks; the imports are left out).
The settings take turns within each repeat, so that a change of the machine's load while the
bench runs falls on every setting alike; each figure is the median of ``--repeats``, and each
ratio is against the best setting of the same workload, condition and figure, in this run. The
load average is recorded before each condition (the machine may be shared).
The goal: a default within 1.3× of the best in wall time and in CPU, idle and busy.

    python bench/threads.py [--repeats 3] [--busy 2] [-k "deepfool or pgd_linf or uap"]
                            [--large-k "accuracy or noise or fgsm_change or pgd_linf"]
                            [--n 64] [--settings I ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
SMALL_SPEC = ROOT / "specs" / "resnet.yaml"

#: (label, torch threads or 0 for robaudit's default, OMP_WAIT_POLICY or None for OpenMP's own)
SETTINGS = [
    ("1 thread, passive wait", 1, "PASSIVE"),
    ("2 threads, passive wait", 2, "PASSIVE"),
    ("2 threads, active wait", 2, "ACTIVE"),
    ("2 threads, torch's default wait", 2, None),
    ("robaudit's default threads, passive wait", 0, "PASSIVE"),
]

#: one audit, timed in its own process: prints {"wall": s, "cpu": s, "threads": "N (… wait)"}
AUDIT = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
import torch, torchvision
from floors import session_options
from robaudit.pluginmanager import load_plugins
from robaudit.session import Session
threads = int(sys.argv[2]) or None
session = Session(load_plugins(), session_options(threads=threads, keyword=sys.argv[3]))
wall, cpu = time.perf_counter(), time.process_time()
[result], _ = session.run([sys.argv[1]])
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
assert result.checks, "no check selected"
print(json.dumps({"wall": wall, "cpu": cpu, "threads": result.environment["threads"]}))
"""

#: the heading of the section the bench writes in its --out file
MEASURED = "## Measured"

#: one core's worth of load, until the bench that started it ends (even if it is killed)
BURNER = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


def _env(policy: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    # an empty policy is OpenMP's default; robaudit's entry point would set PASSIVE if unset
    env["OMP_WAIT_POLICY"] = policy or ""
    return env


def audit_once(spec: Path, threads: int, policy: str | None, keyword: str
               ) -> tuple[float, float, str]:
    """(wall, CPU) seconds of one audit of ``spec``'s checks ``keyword`` in a fresh process,
    and the thread setting it ran with (as its report records it)."""
    done = subprocess.run([sys.executable, "-c", AUDIT, str(spec), str(threads), keyword,
                           str(BENCH)], check=True, capture_output=True, text=True,
                          env=_env(policy), cwd=ROOT)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["wall"], figures["cpu"], figures["threads"]


Workload = tuple[str, Path, str]
#: per workload title, per setting label: (wall, CPU) medians and the threads of each run
Figures = dict[str, dict[str, tuple[float, float, str]]]


def measure(workloads: list[Workload], settings: list[tuple[str, int, str | None]],
            repeats: int) -> Figures:
    """Per workload and setting: medians of ``repeats`` (wall, CPU) and the thread setting
    of each run ("1", "2, 1": robaudit's default may change with the load), settings in
    turn."""
    runs: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for _ in range(repeats):
        for title, spec, keyword in workloads:
            for label, threads, policy in settings:
                runs.setdefault((title, label), []).append(
                    audit_once(spec, threads, policy, keyword))
    return {title: {label: (statistics.median(w for w, _, _ in runs[title, label]),
                            statistics.median(c for _, c, _ in runs[title, label]),
                            ", ".join(t.split()[0] for *_, t in runs[title, label]))
                    for label, *_ in settings}
            for title, *_ in workloads}


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def table(title: str, idle: dict[str, tuple[float, float, str]],
          busy: dict[str, tuple[float, float, str]] | None) -> list[str]:
    """A Markdown table: per setting, wall and CPU idle and busy (idle only when ``busy`` is
    None), each with its ratio to the best of its column, and the worst of the ratios;
    robaudit's default says the threads it picked in each run."""
    conditions = [("idle", idle)] + ([("busy", busy)] if busy is not None else [])
    columns = [(figures, i) for _, figures in conditions for i in (0, 1)]
    best = [min(v[i] for v in figures.values()) for figures, i in columns]
    head = [f"{name} {kind} (s) | × best" for name, _ in conditions for kind in ("wall", "CPU")]
    lines = [f"### {title}", "", "| setting | " + " | ".join(head) + " | worst × best |",
             "|---|" + "---|---|" * len(columns) + "---|"]
    for label in idle:
        picked = " (picked " + ", ".join(f"{figures[label][2]} {name}"
                                         for name, figures in conditions) + ")"
        cells, ratios = [label + (picked if label.startswith("robaudit") else "")], []
        for (figures, i), low in zip(columns, best, strict=True):
            value = float(figures[label][i])
            ratios.append(value / low)
            cells += [f"{value:.2f}", f"{value / low:.2f}×"]
        cells.append(f"**{max(ratios):.2f}×**")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def defaults() -> str:
    """The threads :func:`robaudit.threads.default_threads` gives each model here."""
    import torch
    import torchvision

    from robaudit.threads import default_threads, model_macs
    from robaudit.zoo import digits_resnet

    models = (("the digits ResNet", digits_resnet(), (1, 8, 8)),
              ("the ResNet-18", torchvision.models.resnet18(), (3, 32, 32)))
    picks = [(name, default_threads(model_macs(net.eval(), torch.rand(1, *shape))))
             for name, net, shape in models]
    return ", ".join(f"{n} thread{'s' if n > 1 else ''} for {name}" for name, n in picks)


def main() -> None:
    sys.path.insert(0, str(BENCH))
    from size import write_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="CPU-burning processes of the busy condition (0: none)")
    parser.add_argument("-k", dest="keyword", default="deepfool or pgd_linf or uap",
                        help="checks of the small model's audit (specs/resnet.yaml)")
    parser.add_argument("--large-k", default="accuracy or noise or fgsm_change or pgd_linf",
                        help="checks of the ResNet-18's audit")
    parser.add_argument("--n", type=int, default=64, help="the ResNet-18 audit's samples")
    parser.add_argument("--settings", type=int, nargs="+", metavar="I",
                        help="measure only these of the settings (0-based)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "threads.md")
    options = parser.parse_args()
    settings = [SETTINGS[i] for i in options.settings or range(len(SETTINGS))]
    workloads: list[Workload] = [
        ("Digits ResNet (0.5 M multiply-adds a sample), the default audit's checks "
         f"`{options.keyword}`", SMALL_SPEC, options.keyword),
        (f"ResNet-18 at 3×32×32 (37 M multiply-adds a sample), N = {options.n}, checks "
         f"`{options.large_k}`", write_spec(options.n, "cpu", [], epochs=0), options.large_k),
    ]

    load_idle = _load()
    idle = measure(workloads, settings, options.repeats)
    load_busy = _load()
    busy = None  # --busy 0: no busy condition
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(options.busy)]
    try:
        if burners:
            time.sleep(1)
            busy = measure(workloads, settings, options.repeats)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()

    command = shlex.join(["python", "bench/threads.py", *sys.argv[1:]])
    lines = [f"{MEASURED}: `{command}`", "",
             f"{os.cpu_count()} cores; median of {options.repeats}. Idle: the machine as it "
             f"was (load average {load_idle} over 1 / 5 / 15 min before it); "
             + (f"busy: {options.busy} Python loops, each burning a core, started by the bench "
                f"(load average {load_busy} before them)." if busy is not None
                else "no busy condition (`--busy 0`).")
             + " Wall and CPU of `Session.run` (spec, model, data and checks) in a fresh "
             "process; × best: against the best setting of the same column in this run.", ""]
    for title, *_ in workloads:
        lines += table(title, idle[title], busy[title] if busy is not None else None)
    lines.append(f"robaudit's default on this machine (`robaudit.threads`): {defaults()}.")
    text = "\n".join(lines) + "\n"
    print(text)
    # what the file says above the measured section (the rule and its reasons) is kept
    kept = options.out.read_text().partition(MEASURED)[0] if options.out.is_file() else ""
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(kept + text)


if __name__ == "__main__":
    main()
