"""Small models that robaudit ships and trains with its own recipe (no downloads).

``ZOO`` maps a name to its :class:`ZooEntry`: how to build the untrained network, the data it
is trained on, and the hyper-parameters of :func:`robaudit.zoo.training.fit`. Each submodule of
``robaudit.zoo`` contributes the entries of its ``ENTRIES`` dict, so a new model family is a new
module and nothing here changes. ``robaudit zoo list`` prints ``ZOO``; ``robaudit zoo train NAME
--out PATH`` calls :func:`train_model`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from robaudit.context import DataSplit, ProgressFactory
from robaudit.errors import UsageError
from robaudit.zoo.resnet import digits_resnet
from robaudit.zoo.training import Perturbation, accuracy, fit


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model and its training recipe.

    build         returns the untrained ``nn.Module`` (its initialisation draws from torch's
                  global generator, which :func:`train_model` seeds).
    data          returns the splits; the recipe trains on "train" and reports "test".
    epochs, lr, batch_size, weight_decay, max_shift, perturb   passed to :func:`fit`.
    factory       the spec's ``model.factory`` that rebuilds the network for the checkpoint.
    """

    name: str
    build: Callable[[], nn.Module] = field(repr=False)
    data: Callable[[], Mapping[str, DataSplit]] = field(repr=False)
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float = 5e-4
    max_shift: int = 0
    perturb: Perturbation | None = field(default=None, repr=False)
    factory: str = ""
    description: str = field(default="", compare=False)


def _digits_data() -> Mapping[str, DataSplit]:
    from robaudit.plugins.loaders.data import digits_splits

    return digits_splits()


#: The entries of this module: robaudit's shipped default model.
ENTRIES: dict[str, ZooEntry] = {
    "digits_resnet": ZooEntry(
        name="digits_resnet",
        build=digits_resnet,
        data=_digits_data,
        epochs=30,
        lr=0.05,
        batch_size=64,
        weight_decay=5e-4,
        max_shift=1,
        factory="robaudit.zoo:digits_resnet",
        description="ResNet (widths 16/32, one BasicBlock each) on the 8×8 scikit-learn digits",
    ),
}


def _collect() -> dict[str, ZooEntry]:
    """``ENTRIES`` of this package and of every submodule, by name."""
    found = dict(ENTRIES)
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, entry in getattr(module, "ENTRIES", {}).items():
            if name in found and found[name] is not entry:
                raise RuntimeError(f"zoo entry {name!r} is defined twice ({module.__name__})")
            found[name] = entry
    return found


ZOO: dict[str, ZooEntry] = _collect()


def train_model(
    name: str, out: Path | str, seed: int = 0, progress: ProgressFactory | None = None,
    epochs: int | None = None,
) -> dict[str, float]:
    """Build the zoo model ``name``, train it with its recipe and ``seed`` (for at most
    ``epochs`` when given: a quick run; an untrained entry stays untrained), save its float32
    ``state_dict`` to ``out`` (``torch.save``; loads with ``weights_only=True``) and return
    {"train_accuracy", "test_accuracy", "seconds", "parameters"}."""
    if name not in ZOO:
        raise UsageError(f"zoo: unknown model {name!r}; known: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    splits = entry.data()
    train, test = splits["train"], splits["test"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = entry.build()
    start = time.perf_counter()
    model = fit(
        network,
        train.x,
        train.y,
        epochs=entry.epochs if epochs is None else min(epochs, entry.epochs),
        lr=entry.lr,
        batch_size=entry.batch_size,
        seed=seed,
        weight_decay=entry.weight_decay,
        max_shift=entry.max_shift,
        perturb=entry.perturb,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    torch.save(state, out)
    return {
        "train_accuracy": accuracy(model, train.x, train.y),
        "test_accuracy": accuracy(model, test.x, test.y),
        "seconds": round(seconds, 2),
        "parameters": float(sum(p.numel() for p in model.parameters())),
    }


__all__ = ["ZOO", "ZooEntry", "digits_resnet", "fit", "train_model"]
