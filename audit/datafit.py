"""Does the data fit the model? Checked after loading and before any check runs (design §3).

Each failure is a located usage error (exit 4): inputs that are not finite, a ``normalize``
whose channel count differs from the data's, a sample the model cannot take (one forward pass
of one sample), an output that is not a batch of logits, labels outside the model's outputs.
Memory stays bounded: the finiteness scan goes batch by batch (a lazy split's through its
DataLoader).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robaudit.context import DataSplit
from robaudit.lazydata import LazyInputs, chunk_bounds
from robaudit.model import ModelUnderAudit

Locate = Callable[[tuple[str | int, ...], str], str]


def _non_finite(split: DataSplit, batch_size: int) -> int:
    if isinstance(split.x, LazyInputs) and split.x.finite:
        return 0  # e.g. pixels decoded from image files: not worth a decoding pass
    bad = 0
    for chunk, _ in split.chunks(chunk_bounds(len(split), batch_size)):
        bad += int((~torch.isfinite(chunk.flatten(1))).any(dim=1).sum())
    return bad


def input_problems(splits: dict[str, DataSplit], used: list[str], batch_size: int,
                   locate: Locate) -> list[str]:
    """Empty splits and samples with NaN or inf inputs, per used split."""
    problems = []
    for name in used:
        split = splits[name]
        if len(split) == 0:
            problems.append(locate(("data",), f"split {name!r} has no samples"))
            continue
        bad = _non_finite(split, batch_size)
        if bad:
            problems.append(locate(("data",), f"split {name!r}: {bad} of {len(split)} samples "
                                              "have NaN or infinite inputs"))
    return problems


def model_problems(key: tuple[str, ...], mua: ModelUnderAudit, normalize_channels: int | None,
                   splits: dict[str, DataSplit], used: list[str], locate: Locate) -> list[str]:
    """What keeps the model ``key`` (``("model",)`` or ``("models", NAME)``) from taking the
    data: the ``normalize`` channel count, one forward pass of one sample, the output's
    shape, and labels outside ``[0, classes)``."""
    sample = splits[used[0]].x[:1]
    if normalize_channels is not None:
        channels = sample.shape[1] if sample.dim() >= 2 else 1
        if sample.dim() != 4 or channels != normalize_channels:
            shape = "×".join(map(str, sample.shape[1:]))
            return [locate((*key, "normalize"),
                           f"{normalize_channels} channel(s) of mean/std, but the data's samples "
                           f"are {shape} (N×C×H×W images with C = {normalize_channels} expected)")]
    shape = "×".join(map(str, sample.shape[1:]))
    try:
        with torch.no_grad():
            out = mua.logits(sample.to(mua.device))
    except (Exception, SystemExit) as exc:
        return [locate(key, f"the model cannot take the data: a forward pass of one {shape} "
                            f"sample failed: {type(exc).__name__}: {exc}")]
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return [locate(key, f"the model's output for one {shape} sample is {got}; expected "
                            "logits of shape (1, classes) with at least 2 classes")]
    classes = int(out.shape[1])
    problems = []
    for name in used:
        labels = splits[name].y
        outside = int(((labels < 0) | (labels >= classes)).sum())
        if outside:
            low, high = int(labels.min()), int(labels.max())
            problems.append(locate(("data",), f"split {name!r}: {outside} labels lie outside "
                                              f"the model's {classes} classes [0, {classes - 1}] "
                                              f"(labels range from {low} to {high})"))
    return problems


def non_finite_outputs(mua: ModelUnderAudit, logits: torch.Tensor) -> str | None:
    """A message when the model's logits on the audit split hold NaN or inf, else None: every
    check that uses the model's outputs is then ``error`` (argmax of NaN is not a prediction)."""
    bad = int((~torch.isfinite(logits)).any(dim=1).sum())
    if not bad:
        return None
    return (f"the model {mua.name!r} gives NaN or infinite logits on {bad} of {len(logits)} "
            "audited samples, so its outputs cannot be judged")
