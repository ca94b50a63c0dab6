"""Reproduce the topology findings of Fawzi et al. (2018) and the unit analysis of Szegedy et al.
(2014, section 3) on the shipped digits ResNet, on CPU in minutes.

    python bench/reproduce_regions.py [--out docs/regions] [--pairs 100] [--paper-step-pairs 100]
                                      [--only PART ...]

Model: ``robaudit.zoo:digits_resnet`` with ``specs/models/digits_resnet.pt``; data: the digits
test split (450 images, 1×8×8), the default audit's. It measures, with the metrics' code:

- ``region_connectivity`` (FINDPATH, Algorithm 1): ``--pairs`` pairs per scenario (data–data,
  data–adversarial from another class, data–adversarial from noise) at the default sampling
  step 10⁻², with the fraction connected, anchors, path-length ratio D(p), forward passes and
  projection steps per pair, and the time of each scenario (part ``default``); the same with a
  larger search budget, ``max_anchors`` 512 and ``max_depth`` 16 (``budget``); then
  ``--paper-step-pairs`` pairs per scenario at the paper's step 10⁻⁴ with the default budget
  (``paper``) and with the larger one (``paper_budget``), to see whether the pairs left "not
  found" connect;
- ``region_convexity``: the fraction of random convex combinations of k same-class images still
  in the class, for k = 2 … 40 (the paper's experiment; its trend: regions are not convex);
- ``unit_semantics``: purity of the top images of unit and random directions of the feature
  layer (the input of the last linear layer), and the image rows of the paper's Figures 1–2.

``--only`` runs some parts (default: all; each part alone stays within a few minutes) and keeps
the other parts' results from an existing ``results.json``; ``results.md`` names the command
line that computed each part.
It writes ``results.md`` (tables beside the papers' numbers), ``results.json``, and the figures
``convexity.png``, ``paths.png``, ``units.png`` and ``random_directions.png`` under ``--out``.
Times are on one thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from provenance import command_line

from robaudit.figures import ImageGrid
from robaudit.metric import MetricResult
from robaudit.plotting import render_png
from robaudit.plugins.loaders.data import digits_splits
from robaudit.plugins.metrics.regions.connectivity import RegionConnectivity
from robaudit.plugins.metrics.regions.convexity import RegionConvexity
from robaudit.plugins.metrics.semantics.unit_semantics import UnitSemantics
from robaudit.testing import make_context, run_metric
from robaudit.zoo import digits_resnet

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "specs" / "models" / "digits_resnet.pt"
KS = [2, 3, 5, 10, 20, 40]
SCENARIOS = ("data", "adversarial", "noise")
BIG_BUDGET = {"max_anchors": 512, "max_depth": 16}
#: part → (results key, step, budget label, params)
CONNECTIVITY_PARTS = {
    "default": ("connectivity", "1e-2", "128 / 12 (default)", {}),
    "budget": ("connectivity_budget", "1e-2", "512 / 16", BIG_BUDGET),
    "paper": ("connectivity_paper_step", "1e-4", "128 / 12 (default)", {"step": 1e-4}),
    "paper_budget": ("connectivity_paper_budget", "1e-4", "512 / 16",
                     {"step": 1e-4, **BIG_BUDGET}),
}
PARTS = [*CONNECTIVITY_PARTS, "convexity", "semantics"]


def context() -> Any:
    model = digits_resnet()
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
    test = digits_splits()["test"]
    return make_context(model, test.x, test.y, seed=0)


def connectivity(pairs: int, **params: Any) -> list[dict[str, Any]]:
    """One row per scenario: the metric's details and the scenario's time."""
    rows = []
    for scenario in SCENARIOS:
        start = time.perf_counter()
        result = run_metric(RegionConnectivity(), context(), pairs=pairs,
                            scenarios=[scenario], **params)
        elapsed = time.perf_counter() - start
        rows.append({**result.details["scenarios"][0], "seconds": elapsed,
                     "ratios": [float(r) - 1 for r in _ratios(result)]})
        print(f"  {scenario:12s} {rows[-1]['fraction']:.3f} connected, "
              f"{rows[-1]['mean_anchors']:.1f} anchors, D-1 {rows[-1]['mean_ratio'] - 1:.2e}, "
              f"{elapsed:.1f} s", flush=True)
    return rows


def _ratios(result: MetricResult) -> tuple[float, ...]:
    """D(p) of the found paths, from the metric's D(p) − 1 histogram."""
    histogram = result.figures[1]
    return tuple(1 + v for v in histogram.values)  # type: ignore[union-attr]


def write_png(figure: Any, path: Path) -> None:
    path.write_bytes(base64.b64decode(render_png(figure)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "regions")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--paper-step-pairs", type=int, default=100)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    stored = args.out / "results.json"
    results: dict[str, Any] = json.loads(stored.read_text()) if stored.exists() else {}

    for part, (key, step, budget, params) in CONNECTIVITY_PARTS.items():
        if part in args.only:
            print(f"region_connectivity, step {step}, budget {budget}")
            pairs = args.paper_step_pairs if "step" in params else args.pairs
            results[key] = connectivity(pairs, **params)
            results.setdefault("commands", {})[key] = command_line()

    if "convexity" in args.only:
        print("region_convexity")
        start = time.perf_counter()
        convexity = run_metric(RegionConvexity(), context(), k=KS, combinations=200)
        results["convexity"] = {**convexity.details, "value": convexity.value,
                                "seconds": time.perf_counter() - start}
        results.setdefault("commands", {})["convexity"] = command_line()
        print("  ", [(r["k"], round(r["fraction"], 3)) for r in convexity.details["by_k"]])

    if "semantics" in args.only:
        print("unit_semantics")
        ctx = context()
        dim = int(ctx.features()[0].shape[1])
        live = dim - int(run_metric(UnitSemantics(), ctx, units=1, top=8, shown=0)
                         .details["constant_units"])
        semantics = run_metric(UnitSemantics(), context(), units=live, top=8, shown=4)
        results["semantics"] = {**semantics.details, "value": semantics.value}
        results.setdefault("commands", {})["semantics"] = command_line()
        print(f"   unit {semantics.value:.3f}, random {semantics.details['random_purity']:.3f}, "
              f"chance {semantics.details['chance_purity']:.3f} over {live} of {dim} units")
        grids = [f for f in semantics.figures if isinstance(f, ImageGrid)]
        write_png(grids[0], args.out / "units.png")
        write_png(grids[1], args.out / "random_directions.png")

    stored.write_text(json.dumps(results, indent=1, default=float))
    if all(key in results for key, *_ in CONNECTIVITY_PARTS.values()) and \
            "convexity" in results and "semantics" in results:
        figures(results, args.out)
        (args.out / "results.md").write_text(markdown(results))
    print(f"wrote {args.out}")


def figures(results: dict[str, Any], out: Path) -> None:
    """convexity.png (fraction against k, per class) and paths.png (anchors and D(p))."""
    fig = MplFigure(figsize=(5.0, 3.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    conv = results["convexity"]
    for row in conv["by_class"]:
        ax.plot(KS, [row[f"k={k}"] for k in KS], color="#cbd5e1", linewidth=0.9)
    ax.plot(KS, [r["fraction"] for r in conv["by_k"]], marker="o", color="#1d4ed8",
            linewidth=2, label="all classes")
    ax.set_xscale("log")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.minorticks_off()
    ax.set_xlabel("k (images combined)")
    ax.set_ylabel("fraction still in the class")
    ax.set_title("region_convexity, digits ResNet (grey: each class)", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.savefig(out / "convexity.png")

    fig = MplFigure(figsize=(8.0, 3.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    rows = results["connectivity"]
    left.bar(SCENARIOS, [r["fraction"] for r in rows], color="#93c5fd",
             label="step 1e-2, budget 128/12")
    for key, marker, colour, label in (
            ("connectivity_budget", "o", "#1d4ed8", "step 1e-2, budget 512/16"),
            ("connectivity_paper_step", "x", "#dc2626", "step 1e-4, budget 128/12"),
            ("connectivity_paper_budget", "+", "#16a34a", "step 1e-4, budget 512/16")):
        left.plot(SCENARIOS, [r["fraction"] for r in results[key]], marker, color=colour,
                  label=label, markersize=8)
    left.set_ylim(0, 1.05)
    left.set_ylabel("fraction of pairs connected")
    left.legend(frameon=False, fontsize=7, loc="lower left")
    for r in rows:
        ratios = np.asarray(r["ratios"])
        right.hist(np.log10(np.clip(ratios, 1e-12, None)), bins=30, histtype="step",
                   label=r["scenario"])
    right.set_xlabel("log10(D(p) − 1) of found paths, step 1e-2 (−12: straight, D = 1)")
    right.set_ylabel("pairs")
    right.legend(frameon=False, fontsize=7)
    fig.suptitle("region_connectivity, digits ResNet (the paper: always connected, "
                 "D ≈ 1 + 1e-4)", fontsize=9)
    fig.savefig(out / "paths.png")


def markdown(results: dict[str, Any]) -> str:
    live = results["semantics"]["feature_dim"] - results["semantics"]["constant_units"]
    # each part keeps the command that computed it (``--only`` reruns some parts)
    commands = sorted(set(results.get("commands", {}).values())) or ["(not recorded)"]
    lines = [
        "# Topology of classification regions and unit semantics on the digits ResNet",
        "",
        "Generated by " + ", then ".join(f"`{c}`" for c in commands) + " (one CPU thread). "
        "Model: the shipped `digits_resnet.pt`; data: the digits test split (450 images, "
        "1×8×8).",
        "",
        "## region_connectivity (Fawzi et al. 2018, Algorithm 1)",
        "",
        "| scenario | step | budget (anchors / depth) | pairs | connected | mean anchors | "
        "mean D(p) − 1 | straight segment valid | forward passes / pair | "
        "projection steps / pair | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, step, budget, _ in CONNECTIVITY_PARTS.values():
        for r in results[key]:
            lines.append(
                f"| {r['scenario']} | {step} | {budget} | {r['pairs']} | {r['fraction']:.3f} | "
                f"{r['mean_anchors']:.1f} | {r['mean_ratio'] - 1:.1e} | {r['straight']:.2f} | "
                f"{r['forwards_per_pair']:.0f} | {r['projection_steps_per_pair']:.1f} | "
                f"{r['seconds']:.1f} |")
    lines += [
        "",
        "The paper (CaffeNet on ImageNet, 1000 pairs per scenario, step 1e-4): a path is found "
        "for every pair, with about 10 anchors on average, and D(p) ≈ 1 + 1e-4 in all three "
        "scenarios. A projection step is one forward pass and `candidates` − 1 = 3 input "
        "gradients. Times are on one thread of a 2-core machine shared with other jobs (load "
        "average about 5 during these runs), so they overstate an idle machine's.",
        "",
        "![paths](paths.png)",
        "",
        "## region_convexity (Fawzi et al. 2018, convexity)",
        "",
        "| k | " + " | ".join(str(r["k"]) for r in results["convexity"]["by_k"]) + " |",
        "|---|" + "---|" * len(results["convexity"]["by_k"]),
        "| fraction still in the class | "
        + " | ".join(f"{r['fraction']:.3f}" for r in results["convexity"]["by_k"]) + " |",
        *(f"| class {row['class']} | " + " | ".join(f"{row[f'k={k}']:.3f}" for k in KS) + " |"
          for row in results["convexity"]["by_class"]),
        "",
        "200 combinations per class and k (flat Dirichlet weights). The paper: classification "
        "regions are not convex; the fraction falls as more images are combined (its figure's "
        "values are not in the text we have).",
        "",
        "![convexity](convexity.png)",
        "",
        "## unit_semantics (Szegedy et al. 2014, section 3)",
        "",
        "| directions | mean purity of the top 8 images |",
        "|---|---|",
        f"| units e_i (all {live} non-constant units) | {results['semantics']['value']:.3f} |",
        f"| as many random directions | {results['semantics']['random_purity']:.3f} |",
        f"| random sets of 8 images (chance) | {results['semantics']['chance_purity']:.3f} |",
        "",
        "The paper (MNIST and ImageNet, judged by eye): the images that most excite a unit and "
        "those that most excite a random direction are alike in their semantic coherence "
        "(Figures 1–4). Top images of 4 units (left) and 4 random directions (right), with "
        "each image's label:",
        "",
        "| units (the paper's Figure 1) | random directions (the paper's Figure 2) |",
        "|---|---|",
        "| ![units](units.png) | ![random directions](random_directions.png) |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
