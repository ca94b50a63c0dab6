"""Samples grouped by (predicted) class, and uniform draws within and across the groups, for
the metrics that work on classification regions (Fawzi et al., CVPR 2018: pairs of points of
one estimated class, convex combinations of k points of one class).

Every draw takes its uniform numbers ``u`` in [0, 1) from the caller (drawn per sample from the
check's generator), so the samples chosen do not depend on the batch size or the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassGroups:
    """The N samples of a split grouped by their labels (CPU tensors).

    labels  (N,) long: each sample's class.
    order   (N,) long: sample indices sorted by class (stable: index order within a class).
    counts  (C,) long: samples per class.
    starts  (C,) long: where each class begins in ``order``.
    """

    labels: torch.Tensor
    order: torch.Tensor
    counts: torch.Tensor
    starts: torch.Tensor

    @staticmethod
    def of(labels: torch.Tensor, num_classes: int | None = None) -> ClassGroups:
        """Group the samples by ``labels`` (moved to the CPU)."""
        labels = labels.detach().cpu().long()
        size = max(int(labels.max()) + 1 if labels.numel() else 0, num_classes or 0)
        counts = torch.bincount(labels, minlength=size)
        starts = counts.cumsum(0) - counts
        return ClassGroups(labels, torch.sort(labels, stable=True).indices, counts, starts)

    def eligible(self, minimum: int = 2) -> torch.Tensor:
        """The classes with at least ``minimum`` samples."""
        return (self.counts >= minimum).nonzero().squeeze(1)

    def members(self, cls: int) -> torch.Tensor:
        """The sample indices of class ``cls``."""
        start = int(self.starts[cls])
        return self.order[start : start + int(self.counts[cls])]

    def draw_among(self, pool: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Samples drawn uniformly from the samples of the classes in ``pool``, one per u."""
        in_pool = torch.zeros(self.counts.shape[0], dtype=torch.bool)
        in_pool[pool] = True
        candidates = self.order[in_pool[self.labels[self.order]]]
        return candidates[_position(u, candidates.shape[0])]

    def draw_partner(self, index: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """For each sample, another sample of its class (its class needs ≥ 2), uniformly."""
        cls = self.labels[index]
        rank = torch.empty_like(self.order)
        rank[self.order] = torch.arange(self.order.shape[0])
        within = rank[index] - self.starts[cls]
        size = self.counts[cls]
        offset = 1 + _position(u, size - 1)
        return self.order[self.starts[cls] + (within + offset) % size]

    def draw_outside(self, cls: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """For each class in ``cls``, a sample of another class, uniformly."""
        size = self.counts[cls]
        position = _position(u, self.order.shape[0] - size)
        position = torch.where(position < self.starts[cls], position, position + size)
        return self.order[position]


def _position(u: torch.Tensor, size: torch.Tensor | int) -> torch.Tensor:
    """⌊u · size⌋, kept below size (u < 1 up to rounding)."""
    size_t = torch.as_tensor(size, dtype=torch.long)
    return torch.minimum((u.double() * size_t.double()).long(), (size_t - 1).clamp_min(0))
