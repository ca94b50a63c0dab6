"""Real-models benchmark (issue #22): the default checks on the models users keep, at 224×224,
over an image folder of growing size N.

    python bench/real_models.py --model resnet50 [--sizes 256 1024 4096] [-k EXPR]
                                [--threads 1] [--device cpu|cuda] [--out docs/bench]

``--model`` is one of ``resnet50`` (``torchvision: resnet50``), ``convnext_tiny``
(``timm: convnext_tiny``), ``vit_b_16`` (``huggingface: DIR``, a ``ViTForImageClassification``
of the ViT-B/16 configuration saved here with ``save_pretrained``), ``resnet18`` (a small one
for smoke runs) or ``mobilenet_v3_small`` (56 MFLOPs a 224×224 image, 70× less than ResNet-50:
the memory figures at N = 4096 in CPU minutes, through the same data path). Every model has
10 classes and **random weights** (nothing is downloaded): the time and the memory of a check
do not depend on what the weights learnt, its value does, so the values here are not figures
of merit.

The data is an image folder written here once per N (``bench/.cache/``, git-ignored):
``val/class_k/*.jpg`` of ``--source-size`` pixels square (default 256), ten classes, each
image a smooth random pattern. The spec reads it with ``source: imagefolder``, ``image_size``
(224) and ``resize`` (the shorter side first, then the centre crop), decoded on the fly by the
DataLoader workers (``data.workers``), ``reference`` the same folder. The checks are those of
``specs/resnet.yaml`` (``-k`` selects, as ``robaudit run -k``).

Each N runs in a fresh process. Per check: its time, its floor (``bench/floors.py``: the model
passes it needs at the batched throughput measured in the same process), the ratio, the peak
RSS while it ran and its rise; across N, the growth exponents (``bench/size.py``'s table), and
the whole run's peak RSS with its growth from the smallest N to the largest (the goal: under
10%, since nothing kept per sample is an input). Writes ``real-MODEL.md`` and
``real-MODEL.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from floors import Throughput, measure_throughput, session_options
from provenance import command_line
from size import SizeSession, cpu_name, report, status_kib

from robaudit.pluginmanager import load_plugins

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
DEFAULT_SPEC = ROOT / "specs" / "resnet.yaml"
CLASSES = 10
#: the models: the spec's model entry (``{dir}`` is filled with a cache folder)
MODELS: dict[str, dict[str, Any]] = {
    "resnet50": {"torchvision": "resnet50", "kwargs": {"num_classes": CLASSES}},
    "resnet18": {"torchvision": "resnet18", "kwargs": {"num_classes": CLASSES}},
    "mobilenet_v3_small": {"torchvision": "mobilenet_v3_small", "kwargs": {"num_classes": CLASSES}},
    "convnext_tiny": {"timm": "convnext_tiny", "kwargs": {"num_classes": CLASSES}},
    "vit_b_16": {"huggingface": "{dir}"},
}


def image_folder(n: int, source_size: int, seed: int = 0) -> Path:
    """An image folder of ``n`` JPEGs (``val/class_k/i.jpg``, ``source_size`` square) written
    once: each a smooth random pattern (a random 8×8 RGB grid upsampled bilinearly) tinted by
    its class, so that images differ the way photographs do at low frequencies."""
    from PIL import Image

    folder = CACHE / f"images_n{n}_s{source_size}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    generator = torch.Generator().manual_seed(seed)
    for index in range(n):
        label = index % CLASSES
        grid = torch.rand((1, 3, 8, 8), generator=generator)
        grid[:, label % 3] += 0.3 * (label + 1) / CLASSES
        image = torch.nn.functional.interpolate(grid, size=(source_size, source_size),
                                                mode="bilinear", align_corners=False)
        pixels = (image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        target = folder / "val" / f"class_{label}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / f"{index:05d}.jpg", quality=90)
    done.write_text(f"{n} images\n")
    return folder


def huggingface_dir(image_size: int) -> Path:
    """A ViT-B/16 (``ViTConfig()``'s defaults: 12 layers, width 768, patch 16) with random
    weights and its image processor, saved with ``save_pretrained``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = CACHE / f"vit_b_16_{image_size}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        config = ViTConfig(image_size=image_size, num_labels=CLASSES)
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def write_spec(model: str, n: int, args: argparse.Namespace) -> Path:
    """The spec auditing ``model`` on the image folder of ``n`` images."""
    default = yaml.safe_load(DEFAULT_SPEC.read_text())
    entry = dict(MODELS[model])
    if "huggingface" in entry:
        entry["huggingface"] = str(huggingface_dir(args.image_size))
    folder = image_folder(n, args.source_size)
    resize = round(args.image_size * 8 / 7)  # 256 for 224: the usual evaluation transform
    spec = {
        "audit": f"{model} {args.image_size}x{args.image_size}, N = {n}",
        "model": {**entry, "input_range": [0.0, 1.0]},
        "models": {"seed1": {**entry, "input_range": [0.0, 1.0]}},
        "data": {"source": "imagefolder", "path": str(folder), "split": "val",
                 "reference": "val", "image_size": args.image_size,
                 "resize": min(resize, args.source_size), "batch_size": args.batch_size,
                 **({"workers": args.workers} if args.workers is not None else {})},
        "device": args.device,
        "seed": 0,
        "checks": default["checks"],
    }
    path = CACHE / f"real_{model}_n{n}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_one(model: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the audit of ``model`` at size ``n`` in this process; the figures as a dict."""
    spec = write_spec(model, n, args)
    session = SizeSession(load_plugins(), session_options(threads=args.threads,
                                                          keyword=args.keyword))
    start = time.perf_counter()
    [result], _ = session.run([str(spec)])
    wall = time.perf_counter() - start
    run_peak = status_kib("VmHWM") / 1024
    assert session.context is not None, "no check ran (does -k select any?)"
    ctx = session.context
    batch = next(ctx.batches())[0]
    with ctx.model:
        rates: Throughput = measure_throughput(ctx.model, batch, budget=args.budget)
    checks = {}
    for check in result.checks:
        floor = session.floors.get(check.id)
        checks[check.id] = {
            "metric": check.metric, "outcome": check.outcome, "value": check.value,
            "message": check.message if check.outcome == "error" else None,
            "time_s": check.duration_s,
            "floor_s": rates.seconds(floor) if floor is not None else None,
            "floor_work": floor.describe() if floor is not None else None,
            **session.memory.get(check.id, {}),
        }
    return {"n": n, "device": str(ctx.device), "threads": torch.get_num_threads(),
            "wall_s": wall, "throughput": {"forward": rates.forward, "gradient": rates.gradient},
            "run_peak_rss_mib": run_peak, "batch_size": len(batch), "checks": checks}


def memory_note(runs: list[dict[str, Any]]) -> str:
    """The whole run's peak RSS at the smallest and largest N and its growth."""
    if len(runs) < 2:
        return ""
    first, last = runs[0]["run_peak_rss_mib"], runs[-1]["run_peak_rss_mib"]
    growth = (last - first) / first
    verdict = "within" if growth < 0.10 else "NOT within"
    return (f"Peak RSS of the whole run: {first:.0f} MiB at N = {runs[0]['n']}, {last:.0f} MiB at "
            f"N = {runs[-1]['n']}: {growth:+.1%} ({verdict} the 10% goal).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=256,
                        help="the side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="data.workers (default: robaudit's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("-k", dest="keyword", help="select checks (`robaudit run -k`)")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds spent measuring each throughput")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one size
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(run_one(args.model, args.one, args)))
        return
    runs = []
    for n in args.sizes:
        print(f"{args.model}, N = {n} ...", file=sys.stderr, flush=True)
        child = [a for a in sys.argv[1:]]
        done = subprocess.run([sys.executable, __file__, *child, "--one", str(n)],
                              stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"N = {n} failed (exit {done.returncode})")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"N = {n}: {runs[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    meta = {"machine": cpu_name(), "torch": torch.__version__, "model": args.model,
            "command": command_line()}
    table = (f"# {args.model} at {args.image_size}×{args.image_size}, random weights, "
             f"image folder decoded on the fly\n\n`{meta['command']}`\n\n"
             + report(runs, meta) + memory_note(runs))
    errors = [f"- `{cid}` at N = {run['n']}: {row['message']}" for run in runs
              for cid, row in run["checks"].items() if row.get("message")]
    if errors:
        table += "\nChecks that could not compute:\n" + "\n".join(errors) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"real-{args.model}.json").write_text(
        json.dumps({"meta": meta, "runs": runs}, indent=1))
    (args.out / f"real-{args.model}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
