"""The deterministic training recipe of the zoo's models (CPU, seeded, no downloads).

Training is the one place in robaudit that calls ``loss.backward()`` on a model's parameters;
the audit itself never does. Every random choice (mini-batch order, augmentation) is drawn
from a ``torch.Generator`` seeded with ``seed``, so the same seed gives the same weights on the
same machine, also under ``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from robaudit.context import ProgressFactory

#: A training-time attack: (model, inputs, labels, generator) -> the inputs to train on
#: (e.g. :class:`robaudit.zoo.adversarial.PGDTraining`, Madry et al. 2018).
Perturbation = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 5e-4,
    max_shift: int = 0,
    perturb: Perturbation | None = None,
    progress: ProgressFactory | None = None,
) -> nn.Module:
    """Train a classifier on ``(x, y)`` with cross-entropy and return it in eval mode.

    x            N×C×H×W images or N×D vectors (float); ``y`` N integer labels.
    epochs       passes over the data; each in a fresh random order (the last batch may be short).
    lr           the peak learning rate of SGD with Nesterov momentum 0.9; it rises linearly
                 over the first epoch and then follows a cosine to zero (per step).
    weight_decay L2 penalty of SGD (applied to every parameter).
    max_shift    augmentation for images: each training image is shifted by a random number
                 of pixels in [-max_shift, max_shift] along each axis (zero filled); 0 = none.
    perturb      a training-time attack applied to each (augmented) mini-batch, whose output
                 the step trains on (adversarial training); None = the clean batch.
    progress     a progress factory (e.g. the console's); one unit per step.

    Training runs on one CPU thread (restored afterwards): the small zoo models gain nothing
    from more, the weights then do not depend on the machine's core count, and a shared
    machine is not oversubscribed (two threads on two busy cores ran 10-30× slower).
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y need the same non-zero length, got {len(x)} and {len(y)}")
    if max_shift and x.dim() != 4:
        raise ValueError("max_shift needs N×C×H×W images")
    generator = torch.Generator().manual_seed(seed)
    x, y = x.float(), y.long()
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    task = progress(total, "training") if progress is not None else None
    with single_thread():
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for begin in range(0, len(x), batch_size):
                index = order[begin : begin + batch_size]
                inputs = x[index]
                if max_shift:
                    inputs = random_shift(inputs, max_shift, generator)
                if perturb is not None:
                    inputs = perturb(model, inputs, y[index], generator)
                loss = F.cross_entropy(model(inputs), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if task is not None:
                    task.advance(1)
    return model.eval()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one intra-op CPU thread, then restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of an N×C×H×W batch by its own random offset in
    [-max_shift, max_shift]² pixels, filling with zeros (one gather, no loop over samples)."""
    n, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    rows = torch.arange(h).view(1, h) - shifts[:, :1]  # source row of each output row
    cols = torch.arange(w).view(1, w) - shifts[:, 1:]
    valid = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(
        n, 1, 1, w
    )
    batch = torch.arange(n).view(n, 1, 1)
    gathered = x.permute(0, 2, 3, 1)[
        batch, rows.clamp(0, h - 1).view(n, h, 1), cols.clamp(0, w - 1).view(n, 1, w)
    ].permute(0, 3, 1, 2)
    return gathered * valid


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """The fraction of ``(x, y)`` that ``model`` (put in eval mode) classifies correctly."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size].float())
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / len(x)
