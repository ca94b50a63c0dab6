"""The modified AlexNet of Khaitan (2024, Appendix A), adapted to any input shape, with the
three training settings of its experiments: clean labels, random labels, untrained.

Appendix A (after Zhang et al. 2017's CIFAR10 AlexNet): two convolutional blocks, each a 5×5
convolution followed by a 3×3 max-pool and local response normalisation (size 5, α = 1e-4,
β = 0.75, k = 2), then two fully connected hidden layers of 384 and 192 units and the output
layer; ReLU after the convolutions and hidden layers; each image standardised on its own to
zero mean and unit standard deviation. Choices where the appendix is silent: the network
standardises its own input (:class:`PerImageStandardize`, the first module), so audits run in
the [0, 1] pixel space; 64 channels per convolution (Zhang et al.'s and cuda-convnet's) times
``width``; every convolution pads by 2 (size kept) and every pool is 3×3 with stride 2 and
padding 1 (size halved, rounded up), so an 8×8 digit becomes 8 → 4 → 2 pixels. The digits
entries use ``width`` 0.5 (32 channels): the 8×8 inputs need less, and the random-label network
then memorises its labels within a few CPU minutes.

The appendix trains with plain SGD at learning rate 0.01 decayed by 0.95 per epoch, without
weight decay or dropout; the zoo entries use robaudit's shared recipe
(:func:`robaudit.zoo.training.fit`: SGD with Nesterov momentum and a cosine schedule) at the
appendix's learning rate 0.01, batches of 16 and no weight decay, on the scikit-learn digits.
Both trained settings are trained to (near) zero training error, as in §2.3 (measured: clean
and random labels, see docs/khaitan/results.md). ``khaitan_alexnet_random`` trains on the
same images with labels drawn uniformly at random (seeded; the memorisation setting of Zhang
et al. and §2.3), ``khaitan_alexnet_untrained`` is the initialisation itself (0 epochs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from robaudit.context import DataSplit
from robaudit.zoo import ZooEntry


class PerImageStandardize(nn.Module):
    """Each image minus its own mean, divided by its own standard deviation (Appendix A), the
    deviation floored at 1/√(pixels) as TensorFlow's ``per_image_standardization`` does, so a
    constant image maps to zeros instead of dividing by zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, unbiased=False).clamp_min(1.0 / math.sqrt(flat.shape[1]))
        shape = (-1, *([1] * (x.dim() - 1)))
        return (x - mean.view(shape)) / std.view(shape)


def khaitan_alexnet(in_shape: Sequence[int] = (3, 28, 28), num_classes: int = 10,
                    width: float = 1.0, hidden: Sequence[int] = (384, 192)) -> nn.Sequential:
    """The modified AlexNet of Appendix A for C×H×W inputs of ``in_shape``."""
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be [C, H, W] with positive entries, got {in_shape}")
    channels, height, width_px = (int(s) for s in in_shape)
    layers: list[nn.Module] = [PerImageStandardize()]
    for _ in range(2):
        out_channels = max(1, round(64 * width))
        layers += [
            nn.Conv2d(channels, out_channels, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
        ]
        height, width_px, channels = (height + 1) // 2, (width_px + 1) // 2, out_channels
    features = channels * height * width_px
    layers.append(nn.Flatten())
    for units in hidden:
        layers += [nn.Linear(features, units), nn.ReLU()]
        features = units
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


#: The digits adaptation that the zoo entries build.
DIGITS = {"in_shape": (1, 8, 8), "num_classes": 10, "width": 0.5}
#: The shared recipe's settings for the three entries (epochs, learning rate).
RECIPES = {"clean": (30, 0.01), "random": (100, 0.01), "untrained": (0, 0.01)}
FACTORY = "robaudit.zoo.khaitan_alexnet:digits_alexnet"


def digits_alexnet() -> nn.Sequential:
    """The modified AlexNet for the 1×8×8 digits (10 classes, 32 channels)."""
    return khaitan_alexnet(**DIGITS)


def random_labels(splits: Mapping[str, DataSplit], seed: int = 0) -> dict[str, DataSplit]:
    """The splits with the "train" labels replaced by labels drawn uniformly from the classes
    present (seeded), the other splits unchanged: the memorisation setting of §2.3."""
    train = splits["train"]
    classes = int(train.y.max()) + 1
    labels = torch.randint(0, classes, train.y.shape, generator=torch.Generator().manual_seed(seed))
    return {**splits, "train": DataSplit(train.x, labels)}


def _digits() -> Mapping[str, DataSplit]:
    from robaudit.plugins.loaders.data import digits_splits

    return digits_splits()


def _random_digits() -> Mapping[str, DataSplit]:
    return random_labels(_digits())


def _entry(setting: str) -> ZooEntry:
    epochs, lr = RECIPES[setting]
    suffix = "" if setting == "clean" else f"_{setting}"
    labels = {"clean": "clean labels", "random": "uniformly random training labels",
              "untrained": "untrained (the initialisation)"}[setting]
    return ZooEntry(
        name=f"khaitan_alexnet{suffix}",
        build=digits_alexnet,
        data=_random_digits if setting == "random" else _digits,
        epochs=epochs,
        lr=lr,
        batch_size=16,
        weight_decay=0.0,
        factory=FACTORY,
        description=f"the modified AlexNet of Khaitan 2024 (Appendix A) on the 8×8 digits, "
                    f"{labels}",
    )


ENTRIES: dict[str, ZooEntry] = {e.name: e for e in map(_entry, ("clean", "random", "untrained"))}
