"""Size benchmark: the default audit on a torchvision ResNet-18 at 3×32×32, at growing N.

    python bench/size.py [--sizes 256 1024 4096] [--device cpu|cuda] [--threads 1]
                         [--out docs/bench]

The model is ``torchvision.models.resnet18(num_classes=10)`` (no pretrained weights, nothing
downloaded), trained here once on scikit-learn's 8×8 digits upsampled to 32×32 (bilinear,
``F.interpolate``) and repeated on 3 channels, with random shifts of up to 2 pixels; its
state_dict is cached under ``bench/.cache/`` (git-ignored). A second model of the same recipe
(seed 1) is the transfer check's source. The audit and reference splits both hold N samples:
the 450 test (1347 train) digits, then copies of them shifted by a random offset in [-3, 3]²
pixels (distinct inputs of the same distribution) up to N.

Each N runs in a fresh process (its own heap, so memory figures do not carry over) with the
checks of ``specs/resnet.yaml``. Per check it records the time, the floor (``bench/floors.py``:
the model passes the check needs at the model's measured batched throughput), the peak host
RSS while the check ran (Linux VmHWM, reset before each check) and its rise above the RSS the
check started with, and, on CUDA, the device's peak allocated memory. On the CPU, times and
throughput are CPU seconds of the process (``time.process_time``), so that the figures and their
ratios hold on a shared machine; on CUDA they are wall seconds. Across N it fits the
growth exponent b of time ∝ N^b and of the memory rise ∝ N^b (least squares in log-log), and
writes ``size.md`` and ``size.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from floors import FloorSession, Throughput, measure_throughput, session_options

from robaudit.context import AuditContext
from robaudit.pluginmanager import load_plugins
from robaudit.results import CheckResult
from robaudit.spec import Check

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
DEFAULT_SPEC = ROOT / "specs" / "resnet.yaml"
#: Training recipe of the benchmark models (robaudit.zoo.training.fit, one CPU thread).
TRAIN = {"epochs": 6, "lr": 0.05, "batch_size": 64, "max_shift": 2}


def digits32(x: torch.Tensor) -> torch.Tensor:
    """N×1×8×8 digits in [0, 1] as N×3×32×32 images (bilinear upsampling, 3 equal channels)."""
    up = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False)
    return up.clamp(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def grown(x: torch.Tensor, y: torch.Tensor, n: int, seed: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of: the samples themselves, then copies shifted by a random offset in
    [-3, 3]² pixels (zero filled), as many rounds as needed."""
    from robaudit.zoo.training import random_shift

    generator = torch.Generator().manual_seed(seed)
    xs, ys, have = [x], [y], len(x)
    while have < n:
        xs.append(random_shift(x, 3, generator))
        ys.append(y)
        have += len(x)
    return torch.cat(xs)[:n].contiguous(), torch.cat(ys)[:n].contiguous()


def trained_weights(seed: int, epochs: int = TRAIN["epochs"]) -> Path:
    """The cached state_dict of the benchmark ResNet-18 trained from ``seed`` for ``epochs``
    (trains it once; prints the training time and the test accuracy). ``epochs = 0`` keeps
    the random initialisation: the smoke test's model, for time and memory only."""
    import torchvision

    from robaudit.plugins.loaders.data import digits_splits
    from robaudit.zoo.training import accuracy, fit

    tag = "" if epochs == TRAIN["epochs"] else f"_e{epochs}"
    path = CACHE / f"resnet18_digits32_seed{seed}{tag}.pt"
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    splits = digits_splits()
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    start = time.perf_counter()
    if epochs:
        fit(model, digits32(splits["train"].x), splits["train"].y, seed=seed,
            **{**TRAIN, "epochs": epochs})
    took = time.perf_counter() - start
    test = accuracy(model, digits32(splits["test"].x), splits["test"].y)
    print(f"trained ResNet-18 (seed {seed}) in {took:.0f} s: test accuracy {test:.3f}",
          file=sys.stderr)
    torch.save(model.state_dict(), path)
    return path


def write_spec(n: int, device: str, skip: list[str], epochs: int = TRAIN["epochs"]) -> Path:
    """The data of size ``n`` (.npz) and a spec auditing the benchmark model (trained for
    ``epochs``) on it with the checks of specs/resnet.yaml but those in ``skip``; returns the
    spec's path."""
    from robaudit.plugins.loaders.data import digits_splits

    splits = digits_splits()
    x_test, y_test = grown(digits32(splits["test"].x), splits["test"].y, n, seed=1)
    x_train, y_train = grown(digits32(splits["train"].x), splits["train"].y, n, seed=2)
    data = CACHE / f"digits32_n{n}.npz"
    np.savez(data, x_test=x_test.numpy(), y_test=y_test.numpy(),
             x_train=x_train.numpy(), y_train=y_train.numpy())
    default = yaml.safe_load(DEFAULT_SPEC.read_text())

    def model(seed: int) -> dict[str, Any]:
        return {"factory": "torchvision.models:resnet18", "kwargs": {"num_classes": 10},
                "weights": str(trained_weights(seed, epochs)), "input_range": [0.0, 1.0]}

    spec = {
        "audit": f"ResNet-18 3x32x32, N = {n}",
        "model": model(0),
        "models": {"seed1": model(1)},
        "data": {"source": "npz", "path": str(data), "split": "test", "reference": "train",
                 "batch_size": default["data"]["batch_size"]},
        "device": device,
        "seed": 0,
        "checks": [check for check in default["checks"] if check["id"] not in skip],
    }
    path = CACHE / f"size_n{n}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset the peak resident set size (VmHWM) to the current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


class SizeSession(FloorSession):
    """A floor session that also records each check's peak memory."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.memory: dict[str, dict[str, float]] = {}

    def run_check(self, check: Check, ctx: AuditContext, *args: Any, **kwargs: Any
                  ) -> CheckResult:
        cuda = ctx.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(ctx.device)
            torch.cuda.reset_peak_memory_stats(ctx.device)
            device_base = torch.cuda.memory_allocated(ctx.device)
        _reset_peak()
        base = status_kib("VmRSS")
        result = super().run_check(check, ctx, *args, **kwargs)
        peak = status_kib("VmHWM")
        cpu = self.cpu_s[check.id]  # the check's own, not the floor counted after it
        record = {"rss_peak_mib": peak / 1024, "rss_rise_mib": (peak - base) / 1024,
                  "cpu_s": cpu}
        if cuda:
            torch.cuda.synchronize(ctx.device)
            record["device_peak_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
            record["device_rise_mib"] = (torch.cuda.max_memory_allocated(ctx.device)
                                         - device_base) / 2**20
        self.memory[check.id] = record
        print(f"  {check.id}: {result.duration_s:.1f} s ({cpu:.1f} s CPU), {result.outcome}",
              file=sys.stderr, flush=True)
        return result


def run_one(n: int, device: str, skip: list[str], threads: int, keyword: str | None,
            epochs: int) -> dict[str, Any]:
    """Run the audit at size ``n`` in this process with ``threads`` torch threads (as
    ``robaudit run --threads``); the per-check figures as a dict."""
    spec = write_spec(n, device, skip, epochs)
    session = SizeSession(load_plugins(), session_options(threads=threads, keyword=keyword))
    start = time.perf_counter()
    [result], _ = session.run([str(spec)])
    wall = time.perf_counter() - start
    assert session.context is not None
    ctx = session.context
    batch = next(ctx.batches())[0]
    cpu = ctx.device.type == "cpu"  # then times are CPU seconds, which load does not inflate
    with ctx.model:
        rates: Throughput = measure_throughput(
            ctx.model, batch, clock=time.process_time if cpu else time.perf_counter)
    checks = {}
    for check in result.checks:
        floor = session.floors.get(check.id)
        seconds = rates.seconds(floor) if floor is not None else None
        memory = session.memory.get(check.id, {})
        checks[check.id] = {
            "metric": check.metric, "outcome": check.outcome, "value": check.value,
            "time_s": memory.get("cpu_s", check.duration_s) if cpu else check.duration_s,
            "wall_s": check.duration_s, "floor_s": seconds,
            "floor_work": floor.describe() if floor is not None else None,
            **memory,
        }
    return {"n": n, "device": str(ctx.device), "threads": torch.get_num_threads(),
            "clock": "CPU" if cpu else "wall",
            "wall_s": wall, "throughput": {"forward": rates.forward,
                                           "gradient": rates.gradient},
            "run_peak_rss_mib": status_kib("VmHWM") / 1024, "checks": checks}


def slope(sizes: list[int], values: list[float | None]) -> float | None:
    """Least-squares slope of log(value) against log(N); None if a value is missing or tiny."""
    pairs = [(math.log(n), math.log(v)) for n, v in zip(sizes, values, strict=True)
             if v is not None and v > 0]
    if len(pairs) < 2 or len(pairs) < len(sizes):
        return None
    xs, ys = np.array(pairs).T
    return float(np.polyfit(xs, ys, 1)[0])


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def report(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown table of the runs (one row per check)."""
    sizes = [run["n"] for run in runs]
    ids = list(dict.fromkeys(check for run in runs for check in run["checks"]))
    cuda = runs[0]["device"].startswith("cuda")
    head = ["check"]
    for n in sizes:
        head += [f"{runs[0].get('clock', 'wall')} time N={n} (s)", f"× floor N={n}"]
    head += ["time exp.", "RSS rise " + " / ".join(f"N={n}" for n in sizes) + " (MiB)",
             "rise exp."]
    if cuda:
        head.append("device peak " + " / ".join(f"N={n}" for n in sizes) + " (MiB)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for check in ids:
        rows = [run["checks"].get(check) for run in runs]
        cells = [f"`{check}`"]
        for row in rows:
            if row is None:
                cells += ["not run", "—"]
                continue
            ratio = (row["time_s"] / row["floor_s"]) if row["floor_s"] else None
            cells += [_fmt(row["time_s"]), _fmt(ratio) if row["floor_s"] is not None
                      else "no floor"]
        times = [row["time_s"] if row else None for row in rows]
        rises = [row["rss_rise_mib"] if row else None for row in rows]
        cells.append(_fmt(slope(sizes, times)))
        cells.append(" / ".join("—" if r is None else f"{r:.0f}" for r in rises))
        cells.append(_fmt(slope(sizes, [r if r is not None and r >= 8 else None
                                        for r in rises])))
        if cuda:
            cells.append(" / ".join("—" if row is None else f"{row['device_peak_mib']:.0f}"
                                    for row in rows))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Machine: {meta['machine']}; torch {meta['torch']}, {runs[0]['threads']} torch "
        f"thread(s), device {runs[0]['device']}. Model throughput at batch "
        f"{runs[0].get('batch_size', 256)}: "
        + ", ".join(f"N={run['n']}: {run['throughput']['forward']:.0f} fwd/s, "
                    f"{run['throughput']['gradient']:.0f} fwd+grad/s" for run in runs)
        + (" (per CPU second)." if runs[0].get("clock") == "CPU" else "."),
        "Times: " + ("CPU seconds of the process (`time.process_time`), which the load of a "
                     "shared machine does not inflate; the floor is counted at the CPU-second "
                     "throughput." if runs[0].get("clock") == "CPU" else "wall seconds."),
        "Whole run (set-up, loading, every check): "
        + ", ".join(f"N={run['n']}: {run['wall_s']:.0f} s, peak RSS "
                    f"{run['run_peak_rss_mib']:.0f} MiB" for run in runs) + ".",
        "Exponents: least-squares slope of log(time) or log(RSS rise) against log(N); a rise "
        "under 8 MiB (allocator noise) has none.",
    ]
    return "\n".join(lines + notes) + "\n"


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--skip", nargs="*", default=[], metavar="ID",
                        help="check ids of specs/resnet.yaml not to run")
    parser.add_argument("-k", dest="keyword", help="select checks (`robaudit run -k`)")
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"],
                        help="training epochs of the models (0: random weights, a smoke run)")
    parser.add_argument("--reuse", action="store_true",
                        help="take a size's figures from its last run (bench/.cache/) if any")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.device, args.skip, args.threads, args.keyword,
                                 args.epochs)))
        return
    for seed in (0, 1):  # train (or find) the models before timing anything
        trained_weights(seed, args.epochs)
    runs = []
    for n in args.sizes:
        saved = CACHE / f"size_run_n{n}_{args.device}_{args.threads}_e{args.epochs}.json"
        if args.reuse and saved.is_file():
            runs.append(json.loads(saved.read_text()))
            print(f"N = {n}: reused {saved}", file=sys.stderr, flush=True)
            continue
        print(f"N = {n} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--device", args.device,
             "--threads", str(args.threads), "--epochs", str(args.epochs),
             *(["-k", args.keyword] if args.keyword else []), "--skip", *args.skip],
            stdout=subprocess.PIPE, text=True, check=False,
        )
        if done.returncode != 0:
            sys.exit(f"N = {n} failed (exit {done.returncode})")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        saved.write_text(json.dumps(runs[-1]))
        print(f"N = {n}: {runs[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    meta = {"machine": cpu_name(), "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "size.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    (args.out / "size.md").write_text(report(runs, meta))
    print(report(runs, meta))


if __name__ == "__main__":
    main()
