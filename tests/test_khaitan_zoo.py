"""The modified AlexNet of Khaitan (2024, Appendix A) in the zoo and its three recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.context import DataSplit
from robaudit.zoo import ZOO, train_model
from robaudit.zoo.khaitan_alexnet import (
    PerImageStandardize,
    digits_alexnet,
    khaitan_alexnet,
    random_labels,
)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 28, 28), (3, 32, 32)])
def test_the_network_follows_appendix_a_for_any_input_size(shape):
    model = khaitan_alexnet(shape, num_classes=10)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    pools = [m for m in model if isinstance(m, nn.MaxPool2d)]
    norms = [m for m in model if isinstance(m, nn.LocalResponseNorm)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [c.kernel_size for c in convs] == [(5, 5)] * 2
    assert [p.kernel_size for p in pools] == [3, 3]
    assert [(n.size, n.alpha, n.beta, n.k) for n in norms] == [(5, 1e-4, 0.75, 2.0)] * 2
    assert [m.out_features for m in linears] == [384, 192, 10]
    # each block is conv → ReLU → 3×3 max-pool → LRN, as the appendix orders them
    kinds = [type(m).__name__ for m in model][1:9]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"] * 2
    assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_each_image_is_standardised_on_its_own():
    x = torch.rand(4, 3, 6, 6) * torch.tensor([1.0, 5.0, 0.5, 2.0]).view(4, 1, 1, 1) + 3
    out = PerImageStandardize()(x).double().numpy().reshape(4, -1)
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(1), 1, atol=1e-5)
    constant = PerImageStandardize()(torch.full((1, 1, 4, 4), 0.7))  # std floored at 1/4
    assert torch.isfinite(constant).all() and constant.abs().max() < 1e-5


def test_random_labels_replace_only_the_training_labels_and_are_seeded():
    y = torch.arange(1000) % 10
    splits = {"train": DataSplit(torch.zeros(1000, 2), y), "test": DataSplit(torch.zeros(5, 2),
                                                                             y[:5])}
    shuffled = random_labels(splits)
    assert torch.equal(shuffled["test"].y, y[:5])
    assert torch.equal(shuffled["train"].y, random_labels(splits)["train"].y)
    agreement = float((shuffled["train"].y == y).double().mean())
    assert abs(agreement - 0.1) < 0.04  # uniform labels agree with the true ones by chance
    assert set(shuffled["train"].y.tolist()) == set(range(10))


def test_the_three_recipes_are_in_the_zoo(tmp_path):
    clean, random, untrained = (ZOO[n] for n in ("khaitan_alexnet", "khaitan_alexnet_random",
                                                 "khaitan_alexnet_untrained"))
    assert untrained.epochs == 0 and clean.epochs > 0 and random.epochs > 0
    assert clean.weight_decay == random.weight_decay == 0.0  # Appendix A: no regularisation
    assert not torch.equal(clean.data()["train"].y, random.data()["train"].y)
    info = train_model("khaitan_alexnet_untrained", tmp_path / "u.pt", seed=0)
    model = digits_alexnet()
    model.load_state_dict(torch.load(tmp_path / "u.pt", weights_only=True))
    torch.manual_seed(0)
    assert torch.equal(model[1].weight, digits_alexnet()[1].weight)  # the initialisation
    assert info["test_accuracy"] < 0.5
