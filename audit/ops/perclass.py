"""Per-class breakdowns and example galleries of accuracy-type and perturbation metrics (issue
#13: the report people read)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robaudit.figures import Figure, ImageGrid
from robaudit.metric import MetricResult
from robaudit.ops.stats import wilson_interval

#: Samples a gallery shows.
GALLERY_SAMPLES = 6


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
    """A table row per true class: its samples, how many are correct, the accuracy and its
    Wilson 95% interval."""
    correct, labels = correct.bool().cpu(), labels.cpu()
    rows = []
    for label in labels.unique().tolist():
        mine = correct[labels == label]
        hits, total = int(mine.sum()), int(mine.numel())
        low, high = wilson_interval(hits, total)
        rows.append({"class": int(label), "samples": total, "correct": hits,
                     "accuracy": hits / total, "ci_low": low, "ci_high": high})
    return rows


def accuracy_result(correct: np.ndarray, labels: np.ndarray, figures: list[Figure] | None = None,
                    **details: Any) -> MetricResult:
    """An accuracy check's result from per-sample 0/1 ``correct`` and true ``labels`` (in
    sample order): the accuracy, Wilson's 95% interval, ``details`` between the counts and
    the accuracy per true class."""
    hits, total = int(correct.sum()), int(correct.size)
    return MetricResult(
        value=hits / total, samples=correct, ci=wilson_interval(hits, total),
        details={"correct": hits, "samples": total, **details,
                 "per_class": per_class_accuracy(torch.from_numpy(correct),
                                                 torch.from_numpy(labels))},
        figures=list(figures or []))


def gallery(title: str, clean: torch.Tensor, perturbed: torch.Tensor, labels: torch.Tensor,
            clean_pred: torch.Tensor, perturbed_pred: torch.Tensor) -> ImageGrid:
    """Rows of clean images, their perturbations and the perturbed images, with the true label
    and the predictions as captions. The perturbation row is rescaled so that grey is 0 and
    its largest |δ| reaches black or white (so small perturbations stay visible beside the
    images, which are shown in their own range)."""
    clean, perturbed = clean.detach().cpu().double(), perturbed.detach().cpu().double()
    delta = perturbed - clean
    low, high = float(clean.min()), float(clean.max())
    span = high - low if high > low else 1.0
    scale = float(delta.abs().max()) or 1.0
    shown_delta = low + span * (0.5 + delta / (2 * scale))
    images = torch.stack([clean, shown_delta, perturbed]).numpy()
    clean_text = [f"y={int(y)}, pred {int(p)}" for y, p in zip(labels, clean_pred, strict=True)]
    delta_text = [f"‖δ‖∞ {float(d.abs().max()):.3g}" for d in delta]
    adv_text = [f"pred {int(p)}" + (" ✗" if int(p) != int(y) else "")
                for y, p in zip(labels, perturbed_pred, strict=True)]
    return ImageGrid(title=title, images=np.asarray(images),
                     row_labels=("clean", f"perturbation (grey = 0, ±{scale:.3g})", "perturbed"),
                     captions=(tuple(clean_text), tuple(delta_text), tuple(adv_text)))
