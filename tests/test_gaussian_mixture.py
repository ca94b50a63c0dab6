"""The gaussian_mixture data source (Ghorbani & Zou 2017, Appendix E, Algorithm 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from robaudit.pluginmanager import load_plugins
from robaudit.plugins.loaders.gaussian_mixture import MixtureOptions, mixture_splits


def cluster_centroids(x: torch.Tensor, tolerance: float = 0.02) -> torch.Tensor:
    """Group points that lie within ``tolerance`` of a group's first point (tiny σ only)."""
    flat = x.flatten(1)
    firsts: list[torch.Tensor] = []
    groups: list[list[torch.Tensor]] = []
    for point in flat:
        for first, members in zip(firsts, groups, strict=True):
            if (point - first).norm() < tolerance:
                members.append(point)
                break
        else:
            firsts.append(point)
            groups.append([point])
    return torch.stack([torch.stack(members).mean(0) for members in groups])


def test_splits_shapes_labels_and_box() -> None:
    options = MixtureOptions(clusters=7, points=12, test_points=5, sigma=0.5, dim=3, labels=4,
                             box=(-1.0, 2.0))
    splits = mixture_splits(options)
    assert set(splits) == {"train", "test"}
    assert splits["train"].x.shape == (84, 3) and splits["test"].x.shape == (35, 3)
    for split in splits.values():
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.min() >= -1.0 and split.x.max() <= 2.0
        assert ((split.x == -1.0) | (split.x == 2.0)).any()  # σ = 0.5 in a width-3 box clips
        assert int(split.y.min()) >= 0 and int(split.y.max()) < 4
        assert len(split.y) % 7 == 0


def test_image_shape_and_own_seed() -> None:
    a = mixture_splits(MixtureOptions(shape=[1, 4, 4], seed=3))
    b = mixture_splits(MixtureOptions(shape=[1, 4, 4], seed=3))
    c = mixture_splits(MixtureOptions(shape=[1, 4, 4], seed=4))
    assert a["train"].x.shape == (2000, 1, 4, 4)
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["test"].y, b["test"].y)
    assert not torch.equal(a["train"].x, c["train"].x)
    # the source ignores the audit seed: the data is the data
    source = load_plugins().data_sources["gaussian_mixture"]
    options = MixtureOptions(shape=[1, 4, 4], seed=3)
    loaded = source.load(options, Path("."), seed=99)
    assert torch.equal(loaded["train"].x, a["train"].x)


def test_separation_scales_the_distances_between_means() -> None:
    # every cluster keeps its own draws (same seed), only its mean moves: with a tiny σ and no
    # clipping, the cluster centroids' pairwise distances scale by the separation
    def pairwise(separation: float) -> torch.Tensor:
        options = MixtureOptions(clusters=5, points=50, test_points=1, sigma=1e-3, dim=4,
                                 labels=2, separation=separation, seed=1)
        centres = cluster_centroids(mixture_splits(options)["train"].x)
        assert centres.shape[0] == 5
        return torch.pdist(centres).sort().values

    d1, d_half = pairwise(1.0), pairwise(0.5)
    assert torch.allclose(d_half, 0.5 * d1, rtol=1e-2)


def test_labels_are_drawn_per_cluster() -> None:
    splits = mixture_splits(MixtureOptions(clusters=3, points=30, test_points=10, sigma=1e-4,
                                           dim=2, labels=5, seed=0))
    x, y = splits["train"].x, splits["train"].y
    # points of one cluster (tiny σ: identical up to noise) share one label
    for centre in cluster_centroids(x):
        same = (x - centre).norm(dim=1) < 0.02
        assert int(same.sum()) == 30
        assert torch.unique(y[same]).numel() == 1


@pytest.mark.parametrize("bad", [{"dim": 3, "shape": [1, 2, 2]}, {"sigma": 0},
                                 {"separation": -1}, {"labels": 1}, {"box": [1, 0]},
                                 {"shape": [0, 2]}, {"colour": 1}])
def test_bad_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        MixtureOptions.model_validate(bad)
