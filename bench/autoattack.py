"""robaudit's AutoAttack against torchattacks' and ART's, on the shipped digits ResNet and on the
zoo's adversarially trained one (``digits_resnet_pgd.pt``), on the same digits test samples with
the same budgets and one CPU thread; beside it the gap between PGD-20 and AutoAttack and FMN's
median ℓ2 distortion against DeepFool's.

    pip install -e '.[bench]'          # the peers: never runtime dependencies of robaudit
    python bench/autoattack.py [--samples 100] [--eps 0.05] [--threads 1] [--no-art]
                               [--models plain robust] [--out docs/bench/autoattack.md]
    python bench/autoattack.py --tiny  # a few samples and steps: the suite's smoke test

Every implementation gets the same model (eval mode, frozen), samples, true labels, ℓ∞
budget ``eps`` in the box [0, 1] and attack budgets, run in cascade (each attack only on the
points the earlier ones left robust):

- robaudit ``standard``: APGD-CE (``steps`` iterations, 1 restart), APGD-T and FAB-T (``steps``
  iterations, the top ``targets`` classes), Square (``queries`` queries); ``fast``: no FAB-T,
  at most 3 targets and 1000 queries.
- torchattacks: its ``MultiAttack`` of ``APGD``, ``APGDT``, ``FAB(multi_targeted=True)`` and
  ``Square`` with the standard budgets (what its ``AutoAttack`` builds, budgets exposed).
- ART: its ``AutoAttack`` defaults (5 random starts of each APGD, DeepFool, Square with 5
  restarts of 5000 iterations) do not finish in minutes on CPU, so its row chains three ART
  ``AutoAttack`` runs with ART's own attacks at the standard budgets: APGD-CE (1 start), then
  APGD-DLR untargeted and targeted at every other class (``targeted=True``: the 9 others are
  the top 9 with 10 classes), then Square (``queries``, 1 restart). ART has no FAB; its step
  starts at ``eps_step`` = 2·eps, the paper's. ``--art-samples`` runs it on fewer samples.

Columns: CPU time of this process (one thread: the compute, not the machine's load), time
relative to robaudit's ``standard``, robust accuracy (samples still correctly classified by a
fresh forward pass) with its Wilson 95% interval. Below each table: the paired comparison on
the same points (how many robaudit left robust that the peer broke, and the converse, with
McNemar's exact one-sided p-value for "robaudit is weaker"), and the floor of the standard
protocol: the CPU time of the passes that any implementation must spend on the points that
stay robust (each survives every attack's whole budget: ``steps`` · (1 + 2 · targets)
forward-and-gradient passes and ``queries`` forward passes), at the model's batched speed.
Goals: robaudit's robust accuracy no higher than the peers' beyond sampling noise; 3× faster
than the faster peer at equal strength.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peers import BOX, WEIGHTS, art_classifier, load_model  # the shared model loader
from provenance import command_line
from rich.console import Console
from rich.table import Table
from scipy.stats import binomtest
from torch import nn

from robaudit.ops.attacks import pgd
from robaudit.ops.deepfool import deepfool
from robaudit.ops.fmn import fmn
from robaudit.ops.projections import lp_norm
from robaudit.ops.sampling import sample_seeds
from robaudit.ops.stats import wilson_interval
from robaudit.plugins.loaders.data import digits_splits
from robaudit.plugins.metrics.adversarial.autoattack import AutoAttackAccuracy
from robaudit.testing import make_context, run_metric

MODELS = {"plain": WEIGHTS, "robust": WEIGHTS.parent / "digits_resnet_pgd.pt"}


@dataclass(frozen=True)
class Row:
    what: str
    implementation: str
    seconds: float
    value: float
    count: int | None = None  # samples behind value, for an accuracy's interval
    robust: np.ndarray | None = None  # per sample, for the paired comparison


def cpu_timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """``run()`` and the CPU time this process spent in it."""
    start = time.process_time()
    out = run()
    return out, time.process_time() - start


def still_correct(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (model(adv.float()).argmax(dim=1) == y).numpy()


def attack_row(what: str, name: str, seconds: float, robust: np.ndarray) -> Row:
    return Row(what, name, seconds, float(robust.mean()), len(robust), robust)


def robaudit_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  budget: dict[str, int]) -> list[Row]:
    rows = []
    for version in ("standard", "fast"):
        ctx = make_context(model, x, y, input_range=BOX, batch_size=256)
        result, seconds = cpu_timed(lambda v=version, c=ctx: run_metric(
            AutoAttackAccuracy(), c, eps=eps, version=v, **budget))
        rows.append(attack_row(f"AutoAttack ℓ∞ {eps:g}", f"robaudit ({version})", seconds,
                               np.asarray(result.samples) > 0.5))
    return rows


def pgd_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> Row:
    seeds = sample_seeds(torch.Generator().manual_seed(0), len(x))
    adv, seconds = cpu_timed(lambda: pgd(model, x, y, eps=eps, norm="linf", steps=20,
                                         step_size=2.5 * eps / 20, seeds=seeds,
                                         input_range=BOX))
    return attack_row(f"PGD-20 ℓ∞ {eps:g}", "robaudit", seconds, still_correct(model, adv, y))


def torchattacks_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                     budget: dict[str, int]) -> Row:
    import torchattacks

    steps, targets = budget["steps"], budget["targets"]
    attacks = [
        torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce",
                          seed=0),
        torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                           n_classes=10, seed=0),
        torchattacks.FAB(model, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                         multi_targeted=True, n_classes=10, seed=0),
        torchattacks.Square(model, norm="Linf", eps=eps, n_queries=budget["queries"],
                            n_restarts=1, seed=0),
    ]
    attacks[1].n_target_classes = targets
    attacks[2].n_target_classes = targets
    ensemble = torchattacks.MultiAttack(attacks)
    adv, seconds = cpu_timed(lambda: ensemble(x, y))
    return attack_row(f"AutoAttack ℓ∞ {eps:g}", "torchattacks 3.5", seconds,
                      still_correct(model, adv, y))


def art_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            budget: dict[str, int]) -> Row:
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    classifier = art_classifier(model)

    def apgd(loss: str) -> AutoProjectedGradientDescent:
        return AutoProjectedGradientDescent(
            classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=budget["steps"],
            nb_random_init=1, batch_size=256, loss_type=loss, verbose=False)

    square = SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=budget["queries"],
                          p_init=0.8, nb_restarts=1, batch_size=256, verbose=False)
    stages = ((apgd("cross_entropy"), False), (apgd("difference_logits_ratio"), True),
              (square, False))

    def run() -> np.ndarray:
        adv = x.numpy()
        for attack, targeted in stages:  # each stage attacks only what is still robust
            adv = AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=2 * eps,
                             attacks=[attack], batch_size=256, targeted=targeted
                             ).generate(adv, y.numpy())
        return adv

    adv, seconds = cpu_timed(run)
    adv_t = torch.from_numpy(adv)
    if float((adv_t - x).abs().max()) > eps * (1 + 1e-5):
        raise RuntimeError("ART returned a point outside the budget")
    return attack_row(f"AutoAttack ℓ∞ {eps:g}", "ART 1.20 (APGD-CE, APGD-DLR(-T), Square)",
                      seconds, still_correct(model, adv_t, y))


def distortion_rows(model: nn.Module, x: torch.Tensor, steps: int) -> list[Row]:
    """Median ℓ2 distortion of DeepFool and FMN over the samples both fooled."""
    with torch.no_grad():
        label = model(x).argmax(dim=1)
    df, df_seconds = cpu_timed(lambda: deepfool(model, x, norm="l2", input_range=BOX))
    fm, fm_seconds = cpu_timed(lambda: fmn(model, x, label, norm="l2", steps=steps,
                                           input_range=BOX))
    both = df.converged & fm.found
    deep = lp_norm(df.perturbation, "l2")[both]
    return [Row("median ℓ2 distortion", "DeepFool (robaudit)", df_seconds,
                float(deep.median())),
            Row("median ℓ2 distortion", f"FMN, {steps} steps (robaudit)", fm_seconds,
                float(fm.norm[both].median()))]


def floor_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: dict[str, int],
                  repeats: int = 20) -> float:
    """The CPU time of the standard protocol's passes on ``x`` (the points that stay robust):
    ``steps`` · (1 + 2 · targets) forward-and-gradient passes and ``queries`` forward passes
    of the whole batch, each timed as the mean of ``repeats``."""
    if len(x) == 0:
        return 0.0

    def gradient() -> None:
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), y)
        torch.autograd.grad(loss, xa)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    gradient(), forward()  # warm-up
    per_gradient = cpu_timed(lambda: [gradient() for _ in range(repeats)])[1] / repeats
    per_forward = cpu_timed(lambda: [forward() for _ in range(repeats)])[1] / repeats
    passes = budget["steps"] * (1 + 2 * budget["targets"])
    return passes * per_gradient + budget["queries"] * per_forward


def paired(reference: np.ndarray, peer: np.ndarray) -> tuple[int, int, float]:
    """(robust for robaudit only, robust for the peer only, McNemar's exact one-sided p-value
    that robaudit leaves more points robust than the peer)."""
    weaker = int((reference & ~peer).sum())
    stronger = int((~reference & peer).sum())
    total = weaker + stronger
    p = binomtest(weaker, total, 0.5, alternative="greater").pvalue if total else 1.0
    return weaker, stronger, float(p)


def bench_model(label: str, weights: Path, x: torch.Tensor, y: torch.Tensor,
                args: argparse.Namespace, budget: dict[str, int], console: Console) -> None:
    model = load_model(weights)
    rows = robaudit_rows(model, x, y, args.eps, budget)
    peers: list[tuple[str, Callable[[], Row]]] = [
        ("torchattacks", lambda: torchattacks_row(model, x, y, args.eps, budget))]
    if not (args.no_art or args.tiny):
        n = args.art_samples or len(x)
        peers.append(("art", lambda: art_row(model, x[:n], y[:n], args.eps, budget)))
    for name, peer in peers:
        if importlib.util.find_spec(name) is None:
            console.print(f"{name} is not installed: its row is left out")
            continue
        try:
            rows.append(peer())
        except Exception as error:  # a peer's failure is reported, not the bench's
            console.print(f"{name} failed, its row is left out: {error!r}")
    rows.append(pgd_row(model, x, y, args.eps))
    rows += distortion_rows(model, x, args.steps)

    table = Table(title=f"{label}: {weights.name}, {len(x)} digits test samples, "
                        f"{args.threads} thread(s); steps {args.steps}, targets "
                        f"{args.targets}, queries {args.queries}")
    for column in ("measure", "implementation", "CPU time (s)", "time / robaudit", "value",
                   "95% CI"):
        table.add_column(column, justify="left" if column in ("measure", "implementation")
                         else "right")
    reference: dict[str, float] = {}
    for row in rows:
        reference.setdefault(row.what, row.seconds)
        ci = "—" if row.count is None else "{:.3f}–{:.3f}".format(
            *wilson_interval(round(row.value * row.count), row.count))
        table.add_row(row.what, row.implementation, f"{row.seconds:.2f}",
                      f"{row.seconds / max(reference[row.what], 1e-9):.2f}×",
                      f"{row.value:.4g}", ci)
    console.print(table)

    standard = rows[0]
    assert standard.robust is not None
    comparison = Table(title=f"{label}: robaudit (standard) against each, on the same points")
    for column in ("against", "robust for robaudit only", "robust for it only",
                   "p (robaudit weaker)"):
        comparison.add_column(column, justify="left" if column == "against" else "right")
    for row in rows[1:]:
        if row.robust is None or row.what != standard.what:
            continue
        weaker, stronger, p = paired(standard.robust[: len(row.robust)], row.robust)
        comparison.add_row(row.implementation, str(weaker), str(stronger), f"{p:.3g}")
    console.print(comparison)
    survivors = torch.from_numpy(standard.robust)
    floor = floor_seconds(model, x[survivors], y[survivors], budget)
    pgd_value = next(r.value for r in rows if r.what.startswith("PGD-20"))
    console.print(f"{label}: floor of the standard protocol on the {int(survivors.sum())} "
                  f"points left robust: {floor:.2f} s CPU (robaudit standard "
                  f"{standard.seconds / max(floor, 1e-9):.2f}× the floor); PGD-20 − AutoAttack "
                  f"(standard) = {pgd_value - standard.value:+.3f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.05,
                        help="ℓ∞ budget (the default audit's pgd_linf check)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--targets", type=int, default=9)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS),
                        default=["plain", "robust"])
    parser.add_argument("--no-art", action="store_true", help="leave ART out")
    parser.add_argument("--art-samples", type=int, help="ART on the first N samples only")
    parser.add_argument("--tiny", action="store_true",
                        help="8 samples, 5 steps, 2 targets, 20 queries: a smoke test")
    parser.add_argument("--out", type=Path, help="also append the tables to this file")
    args = parser.parse_args()
    if args.tiny:
        args.samples, args.steps, args.targets, args.queries = 8, 5, 2, 20
    torch.set_num_threads(args.threads)
    budget = {"steps": args.steps, "targets": args.targets, "queries": args.queries}
    test = digits_splits()["test"]
    x, y = test.x[: args.samples].contiguous(), test.y[: args.samples]
    console = Console(width=150, record=True)
    for label in args.models:
        bench_model(label, MODELS[label], x, y, args, budget, console)
    if args.out:
        with args.out.open("a") as out:
            out.write(f"`{command_line()}`\n\n```\n{console.export_text()}```\n\n")


if __name__ == "__main__":
    main()
