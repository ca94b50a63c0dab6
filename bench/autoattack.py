"""robaudit's AutoAttack against torchattacks' (and ART's, when it runs), on the shipped digits
ResNet and the same digits test samples, with the same budgets and one CPU thread; beside it
the gap between PGD-20 and AutoAttack and FMN's median ℓ2 distortion against DeepFool's.

    pip install -e '.[bench]'          # the peers: never runtime dependencies of robaudit
    python bench/autoattack.py [--samples 100] [--eps 0.05] [--threads 1] [--no-art]
                               [--out docs/bench/autoattack.md]
    python bench/autoattack.py --tiny  # a few samples and steps: the suite's smoke test

Every implementation gets the same model (eval mode, frozen), samples, true labels, ℓ∞
budget ``eps`` in the box [0, 1] and attack budgets: APGD-CE (``steps`` iterations, 1
restart), APGD-T and FAB-T (``steps`` iterations, the top ``targets`` classes), Square
(``queries`` queries), run in cascade. torchattacks' ensemble is its ``MultiAttack`` of its
``APGD``, ``APGDT``, ``FAB`` (multi-targeted) and ``Square`` with these budgets (what its
``AutoAttack`` builds, with the budgets exposed); ART's is its ``AutoAttack`` with its
default attacks at ``eps``. Columns: wall time, time relative to robaudit's, robust accuracy
(the fraction of samples still correctly classified by a fresh forward pass) with its Wilson
95% interval. Goal: robaudit's robust accuracy no higher than the peers' beyond sampling noise.
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peers import BOX, WEIGHTS, load_model, timed  # the shared model and timer
from rich.console import Console
from rich.table import Table
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


@dataclass(frozen=True)
class Row:
    what: str
    implementation: str
    seconds: float
    value: float
    count: int | None = None  # samples behind value, for an accuracy's interval


def accuracy(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(dim=1) == y).double().mean())


def robaudit_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  budget: dict[str, int]) -> list[Row]:
    rows = []
    for version in ("standard", "fast"):
        ctx = make_context(model, x, y, input_range=BOX, batch_size=256)
        result, seconds = timed(lambda v=version, c=ctx: run_metric(
            AutoAttackAccuracy(), c, eps=eps, version=v, **budget))
        rows.append(Row(f"AutoAttack ℓ∞ {eps:g}", f"robaudit ({version})", seconds,
                        result.value, len(x)))
    seeds = sample_seeds(torch.Generator().manual_seed(0), len(x))
    adv, seconds = timed(lambda: pgd(model, x, y, eps=eps, norm="linf", steps=20,
                                     step_size=2.5 * eps / 20, seeds=seeds, input_range=BOX))
    rows.append(Row(f"PGD-20 ℓ∞ {eps:g}", "robaudit", seconds, accuracy(model, adv, y), len(x)))
    return rows


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
    adv, seconds = timed(lambda: ensemble(x, y))
    return Row(f"AutoAttack ℓ∞ {eps:g}", "torchattacks 3.5", seconds, accuracy(model, adv, y),
               len(x))


def art_row(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> Row:
    from art.attacks.evasion import AutoAttack
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                                   nb_classes=10, clip_values=BOX, device_type="cpu")
    attack = AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=eps / 4, batch_size=256)
    adv, seconds = timed(lambda: attack.generate(x.numpy(), y.numpy()))
    return Row(f"AutoAttack ℓ∞ {eps:g}", "ART 1.20 (its defaults)", seconds,
               accuracy(model, torch.from_numpy(adv), y), len(x))


def distortion_rows(model: nn.Module, x: torch.Tensor, steps: int) -> list[Row]:
    """Median ℓ2 distortion of DeepFool and FMN over the samples both fooled."""
    with torch.no_grad():
        label = model(x).argmax(dim=1)
    df, df_seconds = timed(lambda: deepfool(model, x, norm="l2", input_range=BOX))
    fm, fm_seconds = timed(lambda: fmn(model, x, label, norm="l2", steps=steps,
                                       input_range=BOX))
    both = df.converged & fm.found
    deep = lp_norm(df.perturbation, "l2")[both]
    return [Row("median ℓ2 distortion", "DeepFool (robaudit)", df_seconds, float(deep.median())),
            Row("median ℓ2 distortion", "FMN (robaudit)", fm_seconds,
                float(fm.norm[both].median()))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.05,
                        help="ℓ∞ budget (the default audit's pgd_linf check)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--targets", type=int, default=9)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-art", action="store_true", help="leave ART out")
    parser.add_argument("--tiny", action="store_true",
                        help="8 samples, 5 steps, 2 targets, 20 queries: a smoke test")
    parser.add_argument("--out", type=Path, help="also append the table to this file")
    args = parser.parse_args()
    if args.tiny:
        args.samples, args.steps, args.targets, args.queries = 8, 5, 2, 20
    torch.set_num_threads(args.threads)
    budget = {"steps": args.steps, "targets": args.targets, "queries": args.queries}

    model = load_model(WEIGHTS)
    test = digits_splits()["test"]
    x, y = test.x[: args.samples].contiguous(), test.y[: args.samples]
    rows = robaudit_rows(model, x, y, args.eps, budget)
    for name, peer in (("torchattacks", lambda: torchattacks_row(model, x, y, args.eps, budget)),
                       ("art", lambda: art_row(model, x, y, args.eps))):
        if name == "art" and (args.no_art or args.tiny):
            continue
        if importlib.util.find_spec(name) is None:
            print(f"{name} is not installed: its row is left out")
            continue
        try:
            rows.append(peer())
        except Exception as error:  # a peer's failure is reported, not the bench's
            print(f"{name} failed, its row is left out: {error!r}")
    rows += distortion_rows(model, x, args.steps)

    table = Table(title=f"AutoAttack on the digits ResNet (shipped weights), {len(x)} test "
                        f"samples, {args.threads} thread(s); steps {args.steps}, targets "
                        f"{args.targets}, queries {args.queries}")
    for column in ("measure", "implementation", "time (s)", "time / robaudit", "value",
                   "95% CI"):
        table.add_column(column, justify="left" if column in ("measure", "implementation")
                         else "right")
    reference: dict[str, float] = {}
    for row in rows:
        reference.setdefault(row.what, row.seconds)
        ci = "—" if row.count is None else "{:.3f}–{:.3f}".format(
            *wilson_interval(round(row.value * row.count), row.count))
        table.add_row(row.what, row.implementation, f"{row.seconds:.2f}",
                      f"{row.seconds / reference[row.what]:.2f}×", f"{row.value:.4g}", ci)
    console = Console(width=150, record=True)
    console.print(table)
    if args.out:
        with args.out.open("a") as out:
            out.write("```\n" + console.export_text() + "```\n\n")


if __name__ == "__main__":
    main()
