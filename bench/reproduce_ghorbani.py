"""Reproduce the trends of Ghorbani & Zou (2017) with robaudit's metrics, on CPU in minutes.

    python bench/reproduce_ghorbani.py [--out docs/ghorbani] [--seeds 3] [--threads 2]
                                       [--depths 1 2 3] [--separations 0.05 ... 1.0]
                                       [--checkpoint specs/models/ghorbani_cnn3_mixture.pt]

The paper's CIFAR10 experiments are replaced by the synthetic data of its Appendix E (the
``gaussian_mixture`` source, 1×8×8 images, 2 labels) and its CNNs by the small variants of
``robaudit.zoo.ghorbani_cnn`` (a quarter of the channels, 128 hidden units), trained with the
zoo's recipe (``robaudit.zoo.training.fit``). For every setting and seed (the seed sets the
data, the initialisation and the mini-batch order) it measures, before and after training:
``rank_order_spearman`` (Algorithm 2), ``sphere_deformation`` (Algorithm 1), ``intertwinedness``
(section 2) and ``fgsm_output_change`` (Appendix G). It prints and writes (under ``--out``):

- Figure 4 / Appendix D: Spearman and sphere k against depth (1, 2, 3 layers), before and after
  training, on the mixture at the zoo's separation;
- Figure 5: Spearman of the trained 3-layer CNN against the data's intertwinedness;
- Figure 6: FGSM output change of the trained 3-layer CNN against intertwinedness;

as ``results.md`` (tables, mean ± std over seeds) and ``figures.png``. The intertwinedness of a
mixture is measured, not assumed: 1 − the mean input-space ITW_10 of its test split (0 = every
neighbour shares the class, higher = more intertwined). ``--checkpoint`` also trains the zoo
entry ``ghorbani_cnn3`` (seed 0) and saves the weights that specs/ghorbani-cnn.yaml audits.
``results.md`` starts with the exact command line that wrote it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from provenance import command_line
from torch import nn

from robaudit.context import DataSplit
from robaudit.metric import Metric
from robaudit.plugins.loaders.gaussian_mixture import MixtureOptions, mixture_splits
from robaudit.plugins.metrics.deformation.fgsm_output_change import FgsmOutputChange
from robaudit.plugins.metrics.deformation.intertwinedness import Intertwinedness
from robaudit.plugins.metrics.deformation.sphere_deformation import SphereDeformation
from robaudit.testing import make_context, run_metric
from robaudit.zoo import train_model
from robaudit.zoo.ghorbani_cnn import MIXTURE, RECIPE, SMALL, ghorbani_cnn
from robaudit.zoo.training import accuracy, fit

try:
    from robaudit.plugins.metrics.deformation.spearman import RankOrderSpearman

    SPEARMAN: Metric = RankOrderSpearman()
except ImportError:  # the metric registry has it under its spec name
    from robaudit.pluginmanager import load_plugins

    SPEARMAN = load_plugins().metrics["rank_order_spearman"]

#: Separations of the cluster means (the intertwinedness knob of the mixture).
SEPARATIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
DEPTHS = (1, 2, 3)
#: Extra runs of the depth table: (label, depth, changes to the zoo recipe). The quarter-width
#: 1-layer CNN underfits with the shared recipe; trained harder it deforms too.
EXTRA_RUNS = (("1, lr 0.1, 40 epochs", 1, {"lr": 0.1, "epochs": 40}),)
#: Metric params: fewer than the paper's (1000 samples, 1000 points, 10,000 trials) to stay fast.
SPEARMAN_PARAMS = {"pairs": 100, "trials": 300}
SPHERE_PARAMS = {"radius": 1.0, "points": 100, "samples": 100}
FGSM_PARAMS = {"eps": 2 / 256, "clip": False}
ITW_N = 10
COLUMNS = ("spearman", "sphere_k", "fgsm_change", "itw_feature", "itw_input", "accuracy")


@dataclass
class Measure:
    """The metrics of one model on one data set."""

    spearman: float
    sphere_k: float
    fgsm_change: float
    itw_feature: float
    itw_input: float
    accuracy: float


def measure(model: nn.Module, splits: dict[str, DataSplit]) -> Measure:
    """Every metric of the paper on the test split (the training split as reference)."""
    test, train = splits["test"], splits["train"]
    ctx = make_context(model, test.x, test.y, reference=(train.x, train.y))
    try:
        itw = run_metric(Intertwinedness(), ctx, n=ITW_N, ns=[ITW_N], radii=[0.01])
        return Measure(
            spearman=run_metric(SPEARMAN, ctx, **SPEARMAN_PARAMS).value,
            sphere_k=run_metric(SphereDeformation(), ctx, **SPHERE_PARAMS).value,
            fgsm_change=run_metric(FgsmOutputChange(), ctx, **FGSM_PARAMS).value,
            itw_feature=itw.value,
            itw_input=float(itw.details["input_itw_n"]),
            accuracy=accuracy(model, test.x, test.y),
        )
    finally:
        ctx.model.__exit__(None, None, None)  # give training back its mode and gradients


def before_after(depth: int, separation: float, seed: int, recipe: dict | None = None
                 ) -> tuple[Measure, Measure]:
    """Measure the ``depth``-layer CNN on the mixture at ``separation`` before and after
    training it with the zoo's recipe (updated with ``recipe``); ``seed`` sets the data, the
    init and the batch order."""
    splits = mixture_splits(MixtureOptions(**{**MIXTURE, "separation": separation,
                                              "seed": seed}))
    torch.manual_seed(seed)
    model = ghorbani_cnn(depth, **SMALL)
    before = measure(model, splits)
    fit(model, splits["train"].x, splits["train"].y, seed=seed, **{**RECIPE, **(recipe or {})})
    return before, measure(model, splits)


def summarise(rows: Iterable[Measure]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation over seeds of every column."""
    rows = list(rows)
    return {c: (float(np.mean([getattr(r, c) for r in rows])),
                float(np.std([getattr(r, c) for r in rows]))) for c in COLUMNS}


def fmt(stat: tuple[float, float]) -> str:
    return f"{stat[0]:.3f} ± {stat[1]:.3f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run(seeds: int, depths: Iterable[int] = DEPTHS,
        separations: Iterable[float] = SEPARATIONS) -> tuple[dict, dict]:
    """Figure 4 (by depth) and Figures 5-6 (by separation): {key: (before, after)} summaries;
    the extra runs only with the whole depth table."""
    by_depth, by_separation = {}, {}
    depths = list(depths)
    runs = [(str(d), d, {}) for d in depths]
    runs += list(EXTRA_RUNS) if depths == list(DEPTHS) else []
    for label, depth, recipe in runs:
        pairs = [before_after(depth, MIXTURE["separation"], s, recipe) for s in range(seeds)]
        by_depth[label] = (summarise(p[0] for p in pairs), summarise(p[1] for p in pairs))
        print(f"depth {label}: done", flush=True)
    for separation in separations:
        pairs = [before_after(3, separation, s) for s in range(seeds)]
        by_separation[separation] = (summarise(p[0] for p in pairs),
                                     summarise(p[1] for p in pairs))
        print(f"separation {separation}: done", flush=True)
    return by_depth, by_separation


def report(by_depth: dict, by_separation: dict, seeds: int, seconds: float) -> str:
    depth_rows = [
        [d, stage, fmt(s["spearman"]), fmt(s["sphere_k"]), fmt(s["fgsm_change"]),
         fmt(s["itw_feature"]), fmt(s["accuracy"])]
        for d, pair in by_depth.items() for stage, s in zip(("before", "after"), pair,
                                                             strict=True)
    ]
    sep_rows = [
        [f"{sep}", fmt((1 - b["itw_input"][0], b["itw_input"][1])), fmt(b["spearman"]),
         fmt(a["spearman"]), fmt(b["sphere_k"]), fmt(a["sphere_k"]), fmt(a["fgsm_change"]),
         fmt(a["itw_feature"]), fmt(a["accuracy"])]
        for sep, (b, a) in by_separation.items()
    ]
    lines = trend_lines(by_depth, by_separation)
    mixture = ", ".join(f"{k}={v}" for k, v in MIXTURE.items() if k not in ("separation",
                                                                              "seed"))
    return "\n".join([
        "# Ghorbani & Zou (2017) reproduced with robaudit",
        "",
        f"Generated by `{command_line()}` "
        f"({seeds} seeds, {seconds:.0f} s on this machine's CPU). Mean ± std over seeds; "
        "the seed sets the data, the initialisation and the mini-batch order.",
        "",
        f"Data: `gaussian_mixture` ({mixture}); models: `robaudit.zoo.ghorbani_cnn` with "
        f"{SMALL}; training: `robaudit.zoo.training.fit` with {RECIPE}. Metrics on the "
        f"test split: rank_order_spearman {SPEARMAN_PARAMS}, sphere_deformation "
        f"{SPHERE_PARAMS}, fgsm_output_change {FGSM_PARAMS}, intertwinedness n={ITW_N}.",
        "",
        f"## Figure 4 / Appendix D: deformation by depth (separation {MIXTURE['separation']})",
        "",
        "Rows 1-3 use the zoo recipe; the last row trains the 1-layer CNN harder (on 1×8×8 "
        "inputs its quarter-width version is a global max-pool of 16 channels, which underfits "
        "the shared recipe).",
        "",
        table(["layers", "training", "Spearman r_s", "sphere k", "FGSM ‖P−P*‖₁",
               "feature ITW_10", "test accuracy"], depth_rows),
        "",
        "## Figures 5 and 6: 3-layer CNN against the intertwinedness of the data",
        "",
        "Intertwinedness = 1 − mean input-space ITW_10 of the test split (higher = more "
        "intertwined); `before` columns are the untrained network's, the others the trained "
        "network's.",
        "",
        table(["separation", "intertwinedness", "r_s before", "r_s after", "k before", "k after",
               "FGSM ‖P−P*‖₁", "feature ITW_10", "test accuracy"], sep_rows),
        "",
        "## Trends (computed from the means above)",
        "",
        *lines,
        "",
        "![figures](figures.png)",
        "",
    ])


def trend_lines(by_depth: dict, by_separation: dict) -> list[str]:
    """The paper's claims, each checked on the means of this run."""

    def means(pairs: Iterable, stage: int, key: str) -> list[float]:
        return [pair[stage][key][0] for pair in pairs]

    def monotone(values: list[float], increasing: bool) -> bool:
        steps = np.diff(values)
        return bool((steps > 0).all() if increasing else (steps < 0).all())

    shared = [by_depth[str(d)] for d in DEPTHS if str(d) in by_depth]  # the shared recipe
    sep_pairs = list(by_separation.values())  # separation increasing = intertwinedness falling

    def per_row(key: str, larger_after: bool) -> str:
        def holds(pair: tuple) -> bool:
            before, after = pair[0][key][0], pair[1][key][0]
            return after > before if larger_after else after < before

        rows = [f"depth {label}: {yes(holds(p))}" for label, p in by_depth.items()]
        rows.append(f"depth 3 at every separation: {yes(all(holds(p) for p in sep_pairs))}")
        return "; ".join(rows)

    claims = [
        ("sphere k after training > before (Appendix D)", per_row("sphere_k", True)),
        ("Spearman after training < before (Figure 4c)", per_row("spearman", False)),
        ("sphere k after training increases with depth (Figure 4a)",
         yes(monotone(means(shared, 1, "sphere_k"), increasing=True))),
        ("Spearman after training decreases with depth (Figure 4b)",
         yes(monotone(means(shared, 1, "spearman"), increasing=False))),
        ("measured intertwinedness decreases as the separation grows",
         yes(monotone([1 - v for v in means(sep_pairs, 0, "itw_input")], increasing=False))),
        ("Spearman after training decreases as intertwinedness increases (Figure 5)",
         yes(monotone(means(sep_pairs, 1, "spearman"), increasing=True))),
        ("FGSM output change increases as intertwinedness increases (Figure 6)",
         yes(monotone(means(sep_pairs, 1, "fgsm_change"), increasing=False))),
        ("sphere k after training increases as intertwinedness increases (not claimed by the "
         "paper)", yes(monotone(means(sep_pairs, 1, "sphere_k"), increasing=False))),
    ]
    return [f"- {claim}: **{verdict}**" for claim, verdict in claims]


def yes(value: bool) -> str:
    return "yes" if value else "no"


def plot(by_depth: dict, by_separation: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    depths = [d for d in DEPTHS if str(d) in by_depth]
    for ax, key, label in ((axes[0], "sphere_k", "sphere deformation k"),
                           (axes[1], "spearman", "rank-order Spearman r_s")):
        for index, stage in enumerate(("before", "after")):
            mean = [by_depth[str(d)][index][key][0] for d in depths]
            std = [by_depth[str(d)][index][key][1] for d in depths]
            ax.errorbar(depths, mean, yerr=std, marker="o", capsize=3,
                        label=f"{stage} training")
        ax.set_xticks(depths)
        ax.set_xlabel("convolutional layers")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title("Fig. 4a / App. D: sphere k vs depth")
    axes[1].set_title("Fig. 4b: Spearman vs depth")
    itw = [1 - b["itw_input"][0] for b, _ in by_separation.values()]
    for ax, key, label, title in (
        (axes[2], "spearman", "rank-order Spearman r_s", "Fig. 5: Spearman vs intertwinedness"),
        (axes[3], "fgsm_change", "FGSM ‖P − P*‖₁", "Fig. 6: FGSM change vs intertwinedness"),
    ):
        for index, stage in enumerate(("before", "after")):
            if key == "fgsm_change" and stage == "before":
                continue
            mean = [pair[index][key][0] for pair in by_separation.values()]
            std = [pair[index][key][1] for pair in by_separation.values()]
            ax.errorbar(itw, mean, yerr=std, marker="o", capsize=3, label=f"{stage} training")
        ax.set_xlabel("intertwinedness (1 − input ITW_10)")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/ghorbani"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS),
                        choices=DEPTHS, help="the depth table's rows (the extra run needs all)")
    parser.add_argument("--separations", type=float, nargs="+", default=list(SEPARATIONS),
                        help="the separation table's rows")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="also train the zoo entry ghorbani_cnn3 and save it here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    by_depth, by_separation = run(args.seeds, args.depths, args.separations)
    text = report(by_depth, by_separation, args.seeds, time.perf_counter() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    plot(by_depth, by_separation, args.out / "figures.png")
    print(text)
    if args.checkpoint is not None:
        print("ghorbani_cnn3 checkpoint:", train_model("ghorbani_cnn3", args.checkpoint, seed=0))


if __name__ == "__main__":
    main()
