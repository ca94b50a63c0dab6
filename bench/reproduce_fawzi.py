"""Reproduce the curvature findings of Fawzi et al. (CVPR 2018, sections 3 and 4) with
robaudit's curvature metrics, on CPU in minutes.

    python bench/reproduce_fawzi.py [--out docs/fawzi] [--models digits cnn32] [--limit N]

Models (the paper's CIFAR-10 / ImageNet networks are replaced by what runs offline here):

- ``digits``: the shipped digits ResNet (specs/models/digits_resnet.pt, d = 64) on the digits
  test split (reference: the train split);
- ``cnn32``: a small CNN on 3×32×32 inputs (d = 3072, the paper's CIFAR dimension) that this
  script trains itself on the digits upsampled to 32×32 (bilinear) and copied to 3 channels,
  on one thread (about a minute); its weights are cached under bench/.cache/ (git-ignored).
  The inputs have 3072 coordinates but the data span only the 64 dimensions of the 8×8
  digits (the image of a linear map of rank 64), which the report says.

For each model it runs ``boundary_curvature`` at several finite-difference steps h (and on the
Softplus(β = 50) copy), ``curvature_ratio``, ``curvature_subspace_vulnerability`` and
``curvature_detection``, each timed next to its floor (HVPs × forward+backward at the model's
batched throughput; the audit points' DeepFool, shared through the cache, is timed apart), and
times 100 points × the top-20 principal curvatures at d = 3072 (batched Lanczos). It writes, per
model, ``<model>.md`` (the paper's findings beside what robaudit measures) and ``<model>.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from provenance import command_line
from torch import nn

from robaudit.context import AuditContext, DataSplit
from robaudit.metric import Metric, MetricResult
from robaudit.ops.curvature import MarginHessian, default_step, principal_curvatures_lanczos
from robaudit.ops.deepfool import deepfool_split
from robaudit.plugins.loaders.data import digits_splits
from robaudit.plugins.loaders.models import load_weights
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.curvature.curvature_detection import CurvatureDetection
from robaudit.plugins.metrics.curvature.curvature_ratio import CurvatureRatio
from robaudit.plugins.metrics.curvature.curvature_subspace_vulnerability import (
    CurvatureSubspaceVulnerability,
)
from robaudit.testing import make_context, run_metric
from robaudit.zoo import digits_resnet
from robaudit.zoo.training import accuracy, fit

sys.path.insert(0, str(Path(__file__).parent))
from floors import Throughput, measure_throughput

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"


class SmallCNN(nn.Sequential):
    """Three conv-BN-ReLU-maxpool stages (16, 32, 64 channels) and a linear layer: 3×32×32."""

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.MaxPool2d(2)]
        super().__init__(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


def upsampled(split: DataSplit) -> DataSplit:
    """Digits as 3×32×32 images in [0, 1]: bilinear upsampling, the channel copied three times."""
    x = nnf.interpolate(split.x, size=(32, 32), mode="bilinear", align_corners=False)
    return DataSplit(x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous(), split.y)


def cnn32(splits: dict[str, DataSplit]) -> nn.Module:
    """The 3×32×32 CNN, trained once (seed 0, 12 epochs) and cached under bench/.cache/."""
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    path = CACHE / "cnn32_digits.pt"
    model = SmallCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    start = time.perf_counter()
    fit(model, splits["train"].x, splits["train"].y, epochs=12, lr=0.05, batch_size=64, seed=0)
    score = accuracy(model, splits["test"].x, splits["test"].y)
    print(f"trained cnn32 in {time.perf_counter() - start:.1f} s: test accuracy {score:.3f}")
    if score < 0.9:
        raise SystemExit("cnn32 did not train (test accuracy under 0.9); not cached")
    torch.save(model.state_dict(), path)
    return model.eval()


@dataclass
class Setting:
    """What one model is measured with; ``key`` names its output files."""

    key: str
    name: str
    model: nn.Module
    splits: dict[str, DataSplit]
    steps: list[float]
    k: int
    ratio_subspace: int
    vulnerability_subspace: int
    detection_steps: list[float]
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def context(s: Setting) -> AuditContext:
    return make_context(s.model, s.splits["test"].x, s.splits["test"].y,
                        reference=(s.splits["train"].x, s.splits["train"].y), batch_size=256)


def timed(metric: Metric, ctx: AuditContext, rates: Throughput, **params: Any
          ) -> tuple[MetricResult, float, float]:
    """The metric's result, its time and its floor (seconds at the measured throughput)."""
    start = time.perf_counter()
    result = run_metric(metric, ctx, **params)
    seconds = time.perf_counter() - start
    floor = metric.floor(ctx, metric.Params.model_validate(params))
    return result, seconds, rates.seconds(floor) if floor else float("nan")


def measure(s: Setting) -> None:
    torch.set_num_threads(1)
    ctx = context(s)
    d = int(s.splits["test"].x[0].numel())
    rates = measure_throughput(ctx.model, s.splits["test"].x[:256])
    out = s.results
    out["d"] = d
    out["accuracy"] = accuracy(s.model, s.splits["test"].x, s.splits["test"].y)
    out["authors_h"] = default_step(d, (0.0, 1.0))
    out["rates"] = rates
    start = time.perf_counter()
    deepfool_split(ctx)
    out["deepfool_s"] = time.perf_counter() - start
    times: list[tuple[str, float, float]] = []

    curv, sec, floor = timed(BoundaryCurvature(), ctx, rates, h=s.steps, k=s.k)
    out["curvature"] = curv
    times.append((f"boundary_curvature ({len(s.steps)} h)", sec, floor))
    soft, sec, floor = timed(BoundaryCurvature(), ctx, rates, hvp="softplus", beta=50.0, k=s.k)
    out["softplus"] = soft
    times.append(("boundary_curvature (softplus β 50)", sec, floor))
    ratio, sec, floor = timed(CurvatureRatio(), ctx, rates, subspace=s.ratio_subspace,
                              directions=20, fit=100)
    out["ratio"] = ratio
    times.append((f"curvature_ratio ({s.ratio_subspace} directions)", sec, floor))
    vul, sec, floor = timed(CurvatureSubspaceVulnerability(), ctx, rates,
                            subspace=s.vulnerability_subspace, directions=20, fit=100)
    out["vulnerability"] = vul
    times.append((f"curvature_subspace_vulnerability (S of {s.vulnerability_subspace})", sec,
                  floor))
    det, sec, floor = timed(CurvatureDetection(), ctx, rates, h=s.detection_steps, T=16)
    out["detection"] = det
    times.append((f"curvature_detection ({len(s.detection_steps)} h)", sec, floor))
    out["times"] = times
    if d > 1000:
        out["lanczos"] = time_lanczos(ctx, rates, points=100, k=20)


def time_lanczos(ctx: AuditContext, rates: Throughput, points: int, k: int) -> dict[str, float]:
    """100 boundary points × their top-k and bottom-k principal curvatures (Lanczos, default
    2k + 40 steps, finite differences at the authors' h), in batches of 100 points."""
    df = deepfool_split(ctx)
    z = df.boundary[:points]
    own = ctx.logits()[:points].argmax(dim=1).cpu()
    d = int(z[0].numel())
    start_vec = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = time.perf_counter()
    op = MarginHessian(ctx.model.logits, z, df.crossed_into[:points], own,
                       h=default_step(d, (0.0, 1.0)), chunk=256)
    curv = principal_curvatures_lanczos(op, k, start_vec)
    seconds = time.perf_counter() - start
    gradients = points * (1 + 2 * curv.hvps)
    return {"seconds": seconds, "hvps": curv.hvps, "floor": gradients / rates.gradient}


def settings(names: list[str], limit: int | None = None) -> list[Setting]:
    """The models to measure; ``limit`` keeps the first ``limit`` test samples (a smoke run)."""
    digits = digits_splits()
    if limit is not None:
        test = digits["test"]
        digits["test"] = DataSplit(test.x[:limit], test.y[:limit])
    out = []
    if "digits" in names:
        model = digits_resnet()
        load_weights(model, ROOT / "specs/models/digits_resnet.pt")
        out.append(Setting("digits", "digits ResNet (d = 64)", model.eval(), digits,
                           steps=[default_step(64, (0, 1)), 1e-4, 0.01, 0.05, 0.5], k=31,
                           ratio_subspace=20, vulnerability_subspace=8,
                           detection_steps=[default_step(64, (0, 1)), 0.01, 0.05]))
    if "cnn32" in names:
        big = {name: upsampled(split) for name, split in digits.items()}
        out.append(Setting("cnn32", "3×32×32 CNN (d = 3072)", cnn32(big), big,
                           steps=[default_step(3072, (0, 1)), 0.01, 0.1], k=20,
                           ratio_subspace=50, vulnerability_subspace=200,
                           detection_steps=[default_step(3072, (0, 1)), 0.1],
                           note="The inputs are the 8×8 digits upsampled to 32×32 (bilinear) "
                                "and copied to 3 channels: d = 3072 coordinates, but the data "
                                "span only 64 dimensions (a linear image of the 8×8 digits), "
                                "unlike CIFAR-10's."))
    return out


def fmt(v: float) -> str:
    return f"{v:.3g}"


def report(runs: list[Setting], command: str) -> str:
    lines = ["# Fawzi et al. (2018) curvature findings, reproduced with robaudit", "",
             f"Generated by `{command}` (one CPU thread). Curvature is "
             "oriented from the point's own class (design §6): convex own region > 0.", ""]
    for s in runs:
        r = s.results
        curv, soft = r["curvature"].details, r["softplus"].details
        ratio, vul, det = (r["ratio"].details, r["vulnerability"].details,
                           r["detection"].details)
        lines += [f"## {s.name}", ""] + ([s.note, ""] if s.note else []) + [
                  f"Clean test accuracy {r['accuracy']:.3f}; authors' h = 10·√d/512 = "
                  f"{fmt(r['authors_h'])}; {curv['points']} boundary points "
                  f"({curv['excluded']} excluded); spectrum: {curv['spectrum']}.", "",
                  "### Principal curvatures at z = x + r(x) (paper: Figure 'curvature "
                  "profile')", "",
                  "| h | mean curvature | points with negative mean | mean largest κ | "
                  "mean smallest κ | median |κ| / max |κ| (averaged spectrum) |",
                  "|---|---|---|---|---|---|"]
        spectrum = np.abs(np.r_[curv["smallest_curvatures"], curv["largest_curvatures"]])
        concentration = (f"{np.median(spectrum) / spectrum.max():.2f} (h {curv['h']})"
                         if curv["spectrum"] == "dense" else
                         f"n/a: Lanczos computes only the {s.k} extremes at each end")
        for row in curv["by_h"]:
            lines.append(f"| {row['h']} | {fmt(row['value'])} | {row['negative_fraction']:.0%} | "
                         f"{fmt(row['mean_largest'])} | {fmt(row['mean_smallest'])} | " + (
                             concentration if row is curv["by_h"][0] else "") + " |")
        lines.append(f"| softplus β 50 (accuracy {soft['softplus_accuracy']:.3f}, change "
                     f"{soft['softplus_accuracy_change']:+.3f}) | {fmt(r['softplus'].value)} | "
                     f"{soft['negative_fraction']:.0%} | {fmt(soft['largest_curvatures'][-1])} "
                     f"| {fmt(soft['smallest_curvatures'][0])} | |")
        rho = ratio["rho"]
        lines += ["", "### Shared directions (paper: ρ_i ≫ 1 for the first u_i, falling "
                  "towards 1)", "",
                  f"ρ_i at h {ratio['h']} ({ratio['points']} audit points, fit on "
                  f"{ratio['fit_points']} reference points): ρ_1..5 = "
                  + ", ".join(fmt(v) for v in rho[:5])
                  + f"; ρ_10 = {fmt(rho[9])}; ρ_{len(rho)} = {fmt(rho[-1])}; "
                  f"curvature_ratio = {fmt(r['ratio'].value)}.", "",
                  f"### Noise in S vs S⊥ (paper Figure 7: S of 200 in d = 3072; here S of "
                  f"{vul['subspace']} in d = {vul['dimension']})", "",
                  "| ‖noise‖/‖x‖ | misclassified, noise in S | misclassified, noise in S⊥ |",
                  "|---|---|---|"]
        lines += [f"| {row['noise']} | {row['in_S']:.1%} | {row['in_S_perp']:.1%} |"
                  for row in vul["misclassification"]]
        paper = {"random": "0.25 / 0.25", "adversarial (DeepFool r(x))": "0.64 / 0.60",
                 "x₂ − x₁": "0.10 / 0.09", "∇x (loss gradient)": "0.22 / 0.24"}
        lines += ["", f"### Table 1: ‖P_S v‖/‖v‖ (isotropic: √(m/d) = "
                  f"{vul['isotropic_share']:.2f})", "",
                  "| perturbation v | paper (LeNet / NiN, S of 200, d = 3072) | robaudit |",
                  "|---|---|---|"]
        lines += [f"| {row['perturbation']} | {paper[row['perturbation']]} | "
                  f"{row['projection_on_S']:.2f} |" for row in vul["projection_table"]]
        low, high = r["detection"].ci or (float("nan"), float("nan"))
        lines += ["", "### Detection, Algorithm 2 (paper: label recovery 92 / 88 / 74 % on "
                  "GoogLeNet / CaffeNet / VGG-19 at t = 0)", "",
                  f"{det['included']['used']} of {det['included']['asked']} points (DeepFool "
                  f"converged); the value's AUC (h {det['h']}) has the paired DeLong 95% "
                  f"interval {low:.2f}–{high:.2f}. A tie for the most curved class counts as "
                  f"not recovered.", "",
                  "| h | ROC AUC | detected at t = 0 | false alarms at t = 0 | label recovery "
                  "| label ties | clean points with ρ < 0 |", "|---|---|---|---|---|---|---|"]
        for row in det.get("by_h", [det]):
            lines.append(f"| {row['h']} | {row['auc']:.2f} | {row['detection_rate']:.0%} | "
                         f"{row['false_alarm_rate']:.0%} | {row['label_recovery']:.0%} | "
                         f"{row['label_ties']:.0%} | {row['clean_negative_fraction']:.0%} |")
        rates = r["rates"]
        lines += ["", "### Time against floor (one thread)", "",
                  f"Throughput {rates.forward:,.0f} samples/s forward, {rates.gradient:,.0f} "
                  f"forward+input-gradient; the shared DeepFool of the audit split took "
                  f"{r['deepfool_s']:.2f} s.", "",
                  "| check | time (s) | floor (s) | time / floor |", "|---|---|---|---|"]
        lines += [f"| {name} | {sec:.2f} | {floor:.2f} | {sec / floor:.2f}× |"
                  for name, sec, floor in r["times"]]
        if "lanczos" in r:
            lz = r["lanczos"]
            lines += ["", f"100 points × top-20 and bottom-20 principal curvatures at d = 3072 "
                      f"(batched Lanczos, {lz['hvps']} steps, finite differences): "
                      f"{lz['seconds']:.2f} s (floor {lz['floor']:.2f} s)."]
        lines.append("")
    return "\n".join(lines)


def figures(runs: list[Setting], path: Path) -> None:
    fig = Figure(figsize=(12, 3.2 * len(runs)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, s in enumerate(runs):
        r = s.results
        curv = r["curvature"].details
        axes = [fig.add_subplot(len(runs), 4, 4 * i + j + 1) for j in range(4)]
        spectrum = np.r_[curv["smallest_curvatures"], curv["largest_curvatures"]]
        axes[0].plot(spectrum, marker=".", linewidth=1)
        axes[0].axhline(0, color="grey", linewidth=0.6)
        axes[0].set_title(f"{s.name}: averaged sorted κ (h {curv['h']})", fontsize=8)
        if curv["spectrum"] != "dense":
            axes[0].axvline(len(spectrum) / 2 - 0.5, color="grey", linestyle=":")
            axes[0].set_xlabel(f"{s.k} smallest | {s.k} largest (the {s.results['d'] - 1 - 2 * s.k}"
                               " between are not computed)", fontsize=7)
        rho = r["ratio"].details["rho"]
        axes[1].plot(range(1, len(rho) + 1), rho, marker=".")
        axes[1].axhline(1, color="grey", linewidth=0.6)
        axes[1].set_title("ρ_i along shared directions", fontsize=8)
        vul = r["vulnerability"].details["misclassification"]
        norms = [row["noise"] for row in vul]
        axes[2].plot(norms, [row["in_S"] for row in vul], marker="o", label="noise in S")
        axes[2].plot(norms, [row["in_S_perp"] for row in vul], marker="o", label="noise in S⊥")
        axes[2].set_xlabel("‖noise‖/‖x‖", fontsize=8)
        axes[2].legend(fontsize=7)
        axes[2].set_title("misclassification (Figure 7)", fontsize=8)
        det = r["detection"]
        roc = det.figures[0]
        axes[3].plot(roc.x, roc.series["ρ ≥ threshold"], label=f"AUC {det.value:.2f}")
        axes[3].plot([0, 1], [0, 1], color="grey", linewidth=0.6)
        axes[3].legend(fontsize=7)
        axes[3].set_title(f"detection ROC (h {det.details['h']})", fontsize=8)
        for ax in axes:
            ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/fawzi")
    parser.add_argument("--models", nargs="+", default=["digits", "cnn32"],
                        choices=["digits", "cnn32"])
    parser.add_argument("--limit", type=int, help="audit only the first N test samples")
    args = parser.parse_args()
    command = command_line()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in settings(args.models, args.limit):
        start = time.perf_counter()
        measure(s)
        print(f"{s.name}: measured in {time.perf_counter() - start:.1f} s", flush=True)
        text = report([s], command)
        (out / f"{s.key}.md").write_text(text)
        figures([s], out / f"{s.key}.png")
        print(text, flush=True)


if __name__ == "__main__":
    main()
