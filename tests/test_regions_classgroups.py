"""``ClassGroups`` draws (the pairs and sets of the region metrics) and the validity grid of
``segments_valid``, checked by brute force."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from robaudit.ops.classgroups import ClassGroups
from robaudit.ops.paths import segments_valid


def test_partners_are_other_samples_of_the_same_class_uniformly() -> None:
    labels = torch.tensor([2, 0, 2, 1, 2, 0, 2, 1, 1, 2])
    groups = ClassGroups.of(labels)
    assert groups.counts.tolist() == [2, 3, 5]
    assert groups.members(2).tolist() == [0, 2, 4, 6, 9]
    index = torch.zeros(20_000, dtype=torch.long)  # sample 0, class 2
    partner = groups.draw_partner(index, torch.rand(20_000, generator=torch.Generator()
                                                    .manual_seed(0)))
    assert set(partner.tolist()) == {2, 4, 6, 9}
    counts = np.bincount(partner.numpy(), minlength=10)[[2, 4, 6, 9]]
    assert stats.chisquare(counts).pvalue > 1e-3
    every = groups.draw_partner(torch.arange(10), torch.rand(10))
    assert bool((every != torch.arange(10)).all())
    assert torch.equal(labels[every], labels)


def test_outside_draws_never_hit_the_class_and_pools_only_their_classes() -> None:
    labels = torch.tensor([2, 0, 2, 1, 2, 0, 2, 1, 1, 2])
    groups = ClassGroups.of(labels)
    gen = torch.Generator().manual_seed(1)
    for cls in range(3):
        drawn = groups.draw_outside(torch.full((5000,), cls), torch.rand(5000, generator=gen))
        assert bool((labels[drawn] != cls).all())
        expected = (labels != cls).nonzero().squeeze(1)
        assert set(drawn.tolist()) == set(expected.tolist())
    pooled = groups.draw_among(torch.tensor([0, 2]), torch.rand(5000, generator=gen))
    assert set(pooled.tolist()) == set((labels != 1).nonzero().squeeze(1).tolist())
    assert groups.eligible(3).tolist() == [1, 2]


def test_validity_visits_each_grid_point_once() -> None:
    """A valid segment of length ℓ at spacing s costs ⌈ℓ/s⌉ − 1 forward passes, one per
    interior grid point i/m (visited in a coarse-to-fine order, each exactly once)."""
    seen: list[torch.Tensor] = []

    def predict(v: torch.Tensor) -> torch.Tensor:
        seen.append(v[:, 0].clone())
        return torch.zeros(v.shape[0], dtype=torch.long)

    start = torch.zeros(3, 2, dtype=torch.float64)
    end = torch.zeros(3, 2, dtype=torch.float64)
    end[:, 0] = torch.tensor([1.0, 0.5, 0.0])
    spacing = torch.tensor([0.01, 0.03, 0.01], dtype=torch.float64)
    valid, forwards = segments_valid(predict, start, end, torch.zeros(3, dtype=torch.long),
                                     spacing, batch_size=16)
    assert valid.tolist() == [True, True, True]
    assert forwards.tolist() == [99, 16, 0]  # ⌈1/0.01⌉ − 1, ⌈0.5/0.03⌉ − 1, empty segment
    t = torch.cat(seen)
    np.testing.assert_allclose(np.sort(t[:99].numpy()), np.arange(1, 100) / 100)
    np.testing.assert_allclose(np.sort(t[99:].numpy()), 0.5 * np.arange(1, 17) / 17)
    # coarse to fine: the first few visits of the long segment are spread over it
    assert np.ptp(t[:4].numpy()) > 0.5
