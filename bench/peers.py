"""robaudit's attacks against the peers, on the shipped digits ResNet and the same digits test
samples (``--model resnet18``: ``bench/size.py``'s ResNet-18 on those digits at 3×32×32, the
CIFAR-size model of the size table), in one run: DeepFool (ART 1.20, foolbox 3.3,
torchattacks 3.5), the universal perturbation of Moosavi-Dezfooli et al. 2017 (ART's
``UniversalPerturbation`` with its DeepFool attacker) and PGD (torchattacks 3.5).

    pip install -e '.[bench]'          # the peers: never runtime dependencies of robaudit
    python bench/peers.py [--samples 200] [--eps 0.1] [--threads 1] [--repeats 3] [--weights W.pt]
                          [--model resnet18] [--size 256] [--out docs/bench/peers.md]

Every implementation gets the same model (eval mode, frozen), the same samples, the same
hyper-parameters (DeepFool: 50 iterations, overshoot 0.02, 10 candidate classes, the box
[0, 1]; universal perturbation: ℓ∞ budget ``eps``, δ = 0.2, at most ``--passes`` passes, fitted
and scored on the samples; PGD: ℓ∞ ``eps``, 20 steps of 2.5·eps/20, a random start, the true
labels) and the same number of CPU threads. Columns: wall time, time relative to robaudit's,
the success rate (DeepFool: the prediction changed; UAP: the fooling rate on the samples;
PGD: 1 − robust accuracy), ρ_adv = mean ‖r‖₂/‖x‖₂ over the successful samples (DeepFool's
robustness measure, Moosavi-Dezfooli et al. 2016, eq. 15), and the robust accuracy for PGD.

DeepFool rows: robaudit as the metric runs it (the paper's steps, then a line search to the
crossing and one projection onto the boundary's tangent plane, see :mod:`robaudit.ops.deepfool`),
without the projection, with the paper's steps alone (``refine=0, keep=10``) and with the damped
steps of issue 8 (``damping=0.8, project=0, keep=10``: robaudit's DeepFool before issue 23).
Times are CPU seconds of this process (``time.process_time``), so the ratios hold on a shared
machine; each DeepFool implementation's is the median of ``--repeats`` runs (default 3)
after one untimed run, so that a burst of the other jobs in one 0.3 s run does not decide a
ratio and no implementation is charged its first call's set-up.

Goals (issue 23): DeepFool ≥ 30× faster than ART's at its best batch (``--art-batch 200``)
at success 1.0 with ρ_adv at most ART's and foolbox's; the universal perturbation ≥ 50×
faster than ART's with a fooling rate at least ART's; PGD at least as fast as
torchattacks' with the same robust accuracy.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from robaudit.ops.attacks import pgd
from robaudit.ops.deepfool import deepfool
from robaudit.ops.sampling import sample_seeds
from robaudit.ops.uap import fit_uap_deepfool, fit_uap_sgd, fooled, predictions
from robaudit.plugins.loaders.data import digits_splits
from robaudit.zoo import digits_resnet

WEIGHTS = Path(__file__).resolve().parent.parent / "specs" / "models" / "digits_resnet.pt"
BOX = (0.0, 1.0)


@dataclass(frozen=True)
class Row:
    attack: str
    implementation: str
    seconds: float
    success: float
    rho: float | None = None
    robust_accuracy: float | None = None


def timed(run: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """``run()`` and the CPU time it took (all threads of this process: with one thread per
    side a fair measure on a shared machine, where wall time counts the other jobs too): with
    ``repeats`` > 1, the median of that many runs after one untimed run (which pays the set-up
    that a first call pays, e.g. oneDNN's kernels for each new batch size: robaudit's first
    DeepFool of 200 digits took 1.2–1.9× its later ones) and the last run's result."""
    if repeats > 1:
        run()
    seconds = []
    for _ in range(repeats):
        start = time.process_time()
        out = run()
        seconds.append(time.process_time() - start)
    return out, statistics.median(seconds)


def rho_adv(x: torch.Tensor, adv: torch.Tensor, success: torch.Tensor) -> float:
    """Mean ‖x' − x‖₂ / ‖x‖₂ over the successful samples."""
    r = (adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    return float(r[success].mean()) if bool(success.any()) else float("nan")


def load_model(weights: Path) -> nn.Module:
    model = digits_resnet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_size_model(epochs: int | None = None) -> nn.Module:
    """``bench/size.py``'s ResNet-18 at 3×32×32 (trained once by its recipe and cached; for
    ``epochs`` when given, 0 keeping the random initialisation), eval mode, frozen."""
    import torchvision
    from size import trained_weights

    model = torchvision.models.resnet18(num_classes=10)
    weights = trained_weights(0) if epochs is None else trained_weights(0, epochs)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def art_classifier(model: nn.Module, shape: tuple[int, ...]) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=shape,
                             nb_classes=10, clip_values=BOX, device_type="cpu")


def bench_deepfool(model: nn.Module, x: torch.Tensor, clean: torch.Tensor,
                   art_batch: int, repeats: int) -> list[Row]:
    import foolbox
    import torchattacks
    from art.attacks.evasion import DeepFool

    rows = []
    variants: tuple[tuple[str, dict[str, Any]], ...] = (
        ("robaudit", {}),
        ("robaudit, no projection", {"project": 0}),
        ("robaudit, the paper's steps", {"refine": 0, "keep": 10}),
        ("robaudit, damped steps (issue 8)", {"damping": 0.8, "project": 0, "keep": 10}),
    )
    deepfool(model, x[:8], norm="l2", input_range=BOX)  # the first call's set-up, at any repeats
    for name, options in variants:
        result, seconds = timed(lambda options=options: deepfool(
            model, x, norm="l2", candidates=10, overshoot=0.02, max_iter=50, input_range=BOX,
            **options), repeats)
        changed = predictions(model, result.boundary, len(x)) != clean
        rows.append(Row("DeepFool ℓ2", name, seconds, float(changed.double().mean()),
                        rho_adv(x, result.boundary, changed)))

    art = DeepFool(art_classifier(model, tuple(x.shape[1:])), max_iter=50, epsilon=0.02,
                   nb_grads=10, batch_size=art_batch, verbose=False)
    adv, seconds = timed(lambda: torch.from_numpy(art.generate(x.numpy())), repeats)
    changed = predictions(model, adv, len(x)) != clean
    rows.append(Row("DeepFool ℓ2", f"ART 1.20 (batch {art_batch})", seconds,
                    float(changed.double().mean()), rho_adv(x, adv, changed)))

    fmodel = foolbox.PyTorchModel(model, bounds=BOX)
    attack_fb = foolbox.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    (_, adv, _), seconds = timed(lambda: attack_fb(fmodel, x, clean, epsilons=None),
                                   repeats)
    changed = predictions(model, adv, len(x)) != clean
    rows.append(Row("DeepFool ℓ2", f"foolbox {foolbox.__version__}", seconds,
                    float(changed.double().mean()), rho_adv(x, adv, changed)))

    attack = torchattacks.DeepFool(model, steps=50, overshoot=0.02)
    adv, seconds = timed(lambda: attack(x, clean), repeats)
    changed = predictions(model, adv, len(x)) != clean
    rows.append(Row("DeepFool ℓ2", "torchattacks 3.5", seconds, float(changed.double().mean()),
                    rho_adv(x, adv, changed)))
    return rows


def bench_uap(model: nn.Module, x: torch.Tensor, clean: torch.Tensor, eps: float,
              passes: int, seed: int) -> list[Row]:
    from art.attacks.evasion import UniversalPerturbation

    rows = []
    methods = (("robaudit (deepfool)", fit_uap_deepfool), ("robaudit (sgd)", fit_uap_sgd))
    for name, fit_fn in methods:
        fit, seconds = timed(lambda fit_fn=fit_fn: fit_fn(
            model, x, eps=eps, norm="linf", delta=0.2, max_passes=passes, batch=64,
            input_range=BOX, generator=torch.Generator().manual_seed(seed)))
        hits = fooled(model, x, fit.perturbation, clean, input_range=BOX, batch=len(x))
        rows.append(Row(f"UAP ℓ∞ {eps:g}", f"{name}, {fit.passes} passes", seconds,
                        float(hits.double().mean())))

    random.seed(seed)
    np.random.seed(seed)
    art = UniversalPerturbation(
        art_classifier(model, tuple(x.shape[1:])), attacker="deepfool",
        attacker_params={"max_iter": 50, "epsilon": 0.02, "nb_grads": 10, "verbose": False},
        delta=0.2, max_iter=passes, eps=eps, norm=np.inf, batch_size=32, verbose=False,
    )
    _, seconds = timed(lambda: art.generate(x.numpy()))
    noise = torch.from_numpy(np.asarray(art.noise)[0]).float()
    hits = fooled(model, x, noise, clean, input_range=BOX, batch=len(x))
    rows.append(Row(f"UAP ℓ∞ {eps:g}", "ART 1.20", seconds, float(hits.double().mean())))
    return rows


def bench_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
              seed: int) -> list[Row]:
    import torchattacks

    steps, alpha = 20, 2.5 * eps / 20
    rows = []
    seeds = sample_seeds(torch.Generator().manual_seed(seed), len(x))
    adv, seconds = timed(lambda: pgd(model, x, y, eps=eps, norm="linf", steps=steps,
                                     step_size=alpha, seeds=seeds, input_range=BOX))
    accuracy = float((predictions(model, adv, len(x)) == y).double().mean())
    rows.append(Row(f"PGD ℓ∞ {eps:g}", "robaudit", seconds, 1 - accuracy,
                    robust_accuracy=accuracy))
    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    adv, seconds = timed(lambda: attack(x, y))
    accuracy = float((predictions(model, adv, len(x)) == y).double().mean())
    rows.append(Row(f"PGD ℓ∞ {eps:g}", "torchattacks 3.5", seconds, 1 - accuracy,
                    robust_accuracy=accuracy))
    return rows


def cpu_throughput(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> Any:
    """The model's forward and forward+input-gradient rates on the batch ``x``, in samples
    per CPU second (as :func:`timed` measures the attacks)."""
    from floors import Throughput

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def gradient() -> None:
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(model(inputs).sum(), inputs)

    rates = []
    for step in (forward, gradient):
        step()  # warm-up
        _, seconds = timed(lambda step=step: [step() for _ in range(repeats)])
        rates.append(repeats * len(x) / seconds)
    return Throughput(*rates)


def bench_deepfool_floor(samples: int, epochs: int | None = None) -> Table:
    """DeepFool ℓ2 on ``bench/size.py``'s ResNet-18 at 3×32×32 (trained once, cached; for
    ``epochs`` when given, 0 keeping the random initialisation), one batch of ``samples``
    digits: robaudit's and the paper's steps' CPU time against the floor
    of ``bench/floors.py`` (:func:`floors.paper_deepfool_work`: the paper's steps × its class
    gradients, at the batched throughput measured here in CPU time)."""
    from floors import paper_deepfool_work
    from size import digits32

    model = load_size_model(epochs)
    x = digits32(digits_splits()["test"].x[:samples])
    options = {"norm": "l2", "overshoot": 0.02, "candidates": 10, "max_iter": 50}
    floor = paper_deepfool_work(model, x, samples, "cpu", options, BOX)
    rates = cpu_throughput(model, x)
    floor_s = rates.seconds(floor)
    table = Table(title=f"DeepFool ℓ2 on the ResNet-18 at 3×32×32, {samples} test digits, "
                        f"1 batch; floor {floor_s:.2f} s ({floor.note})")
    for column in ("implementation", "time (s)", "time / floor", "success", "ρ_adv"):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    deepfool(model, x[:8], norm="l2", input_range=BOX)  # warm-up
    for name, extra in (("robaudit", {}), ("robaudit, the paper's steps",
                                           {"refine": 0, "keep": 10})):
        result, seconds = timed(lambda extra=extra: deepfool(model, x, input_range=BOX,
                                                             **options, **extra))
        table.add_row(name, f"{seconds:.2f}", f"{seconds / floor_s:.2f}×",
                      f"{float(result.converged.double().mean()):.3f}",
                      f"{rho_adv(x, result.boundary, result.converged):.4f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.1, help="ℓ∞ budget of UAP and PGD")
    parser.add_argument("--passes", type=int, default=10, help="UAP passes at most")
    parser.add_argument("--art-batch", type=int, default=1,
                        help="ART DeepFool's batch_size (ART's default is 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="DeepFool: each implementation's CPU time is the median of this "
                             "many runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["deepfool", "uap", "pgd"], action="append")
    parser.add_argument("--model", choices=["digits", "resnet18"], default="digits",
                        help="the model the peers are compared on: the shipped digits ResNet "
                             "at 1×8×8, or bench/size.py's ResNet-18 at 3×32×32 (the digits "
                             "upsampled; trained once, see --size-epochs)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS,
                        help="digits_resnet weights (default: the shipped ones; e.g. one "
                             "trained by robaudit.zoo.train_model with another seed)")
    parser.add_argument("--size", type=int, default=0,
                        help="also time DeepFool on bench/size.py's ResNet-18 at 3×32×32 on "
                             "this many samples against its floor (trains the model once)")
    parser.add_argument("--size-epochs", type=int,
                        help="train the ResNet-18 of --size and --model resnet18 this many "
                             "epochs (default: bench/size.py's recipe; 0: random weights, a "
                             "smoke run)")
    parser.add_argument("--out", type=Path, help="also append the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = digits_splits()["test"]
    x, y = test.x[: args.samples].contiguous(), test.y[: args.samples]
    if args.model == "resnet18":
        from size import digits32

        model, x = load_size_model(args.size_epochs), digits32(x)
        name = "the ResNet-18 at 3×32×32"
    else:
        model = load_model(args.weights)
        name = (f"the digits ResNet ({'shipped' if args.weights == WEIGHTS else args.weights.name}"
                " weights)")
    clean = predictions(model, x, len(x))
    selected = args.only or ["deepfool", "uap", "pgd"]
    rows: list[Row] = []
    if "deepfool" in selected:
        rows += bench_deepfool(model, x, clean, args.art_batch, args.repeats)
    if "uap" in selected:
        rows += bench_uap(model, x, clean, args.eps, args.passes, args.seed)
    if "pgd" in selected:
        rows += bench_pgd(model, x, y, args.eps, args.seed)

    table = Table(title=f"peers on {name}, {len(x)} test samples, "
                        f"{args.threads} thread(s), DeepFool times the median of "
                        f"{args.repeats} runs; clean accuracy "
                        f"{float((clean == y).double().mean()):.3f}")
    for column in ("attack", "implementation", "time (s)", "time / robaudit", "success",
                   "ρ_adv", "robust acc."):
        table.add_column(column, justify="left" if column in ("attack", "implementation")
                         else "right")
    reference: dict[str, float] = {}
    for row in rows:
        reference.setdefault(row.attack, row.seconds)
        table.add_row(
            row.attack, row.implementation, f"{row.seconds:.3f}",
            f"{row.seconds / reference[row.attack]:.1f}×", f"{row.success:.3f}",
            "—" if row.rho is None else f"{row.rho:.4f}",
            "—" if row.robust_accuracy is None else f"{row.robust_accuracy:.3f}",
        )
    console = Console(width=150, record=True)
    console.print(table)
    if args.size:
        console.print(bench_deepfool_floor(args.size, args.size_epochs))
    if args.out:
        with args.out.open("a") as out:
            out.write("```\n" + console.export_text() + "```\n\n")


if __name__ == "__main__":
    main()
