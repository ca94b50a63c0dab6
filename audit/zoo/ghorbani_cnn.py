"""The 1-, 2- and 3-layer CNNs of Ghorbani & Zou (2017, Appendix A), adapted to any input shape.

Each network is an ``nn.Sequential`` of plain layers (so that layer-walking metrics such as the
Lipschitz bound compose it): ``depth`` blocks of 5×5 stride-2 convolution → BatchNorm2d → ReLU →
max-pooling, then ``Flatten → Linear(·, hidden) → ReLU → Linear(hidden, num_classes)``. The
hidden layer (1024 units in the paper) is the feature space g of the deformation metrics: the
input of the last ``nn.Linear``, robaudit's default feature layer.

Appendix A gives the layers for 32×32 CIFAR10 images: convolutions of 64, 128 and 256 channels;
an 8×8 stride-8 pool after the single convolution of the 1-layer CNN and 2×2 stride-2 pools in
the deeper ones. It does not give the padding; here every convolution pads by 2 (output side
⌈s/2⌉), and a pool wider than its input is narrowed to the input (so small inputs still fit:
e.g. a 16×16 image becomes 8 → 4 → 2 → 1 → 1 → 1 through the 3-layer CNN). ``width`` scales
every channel count and ``hidden`` the hidden layer, for small, fast variants.

Training: the paper uses Adam with L2 weight decay (learning rates 1e-4, 5e-4, 1e-3 for the 1-,
2-, 3-layer CNNs); the zoo entries below use robaudit's shared recipe
(:func:`robaudit.zoo.training.fit`, SGD with Nesterov momentum and a cosine schedule) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from robaudit.context import DataSplit
from robaudit.zoo import ZooEntry

#: Channels of the convolutions and the pool after each, by depth (Appendix A).
LAYOUTS: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((64, 8),),
    2: ((64, 2), (128, 2)),
    3: ((64, 2), (128, 2), (256, 2)),
}


def ghorbani_cnn(
    depth: int,
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    hidden: int = 1024,
    width: float = 1.0,
) -> nn.Sequential:
    """The ``depth``-layer CNN of Appendix A for C×H×W inputs of ``in_shape``."""
    if depth not in LAYOUTS:
        raise ValueError(f"depth must be 1, 2 or 3 (Appendix A), got {depth}")
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be [C, H, W] with positive entries, got {in_shape}")
    channels, height, width_px = (int(s) for s in in_shape)
    layers: list[nn.Module] = []
    for out_channels, pool in LAYOUTS[depth]:
        out_channels = max(1, round(out_channels * width))
        layers += [
            nn.Conv2d(channels, out_channels, 5, stride=2, padding=2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        height, width_px = (height + 1) // 2, (width_px + 1) // 2
        kernel = (min(pool, height), min(pool, width_px))
        layers.append(nn.MaxPool2d(kernel, stride=kernel))
        height, width_px = height // kernel[0], width_px // kernel[1]
        channels = out_channels
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width_px, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


def ghorbani_cnn1(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                  hidden: int = 1024, width: float = 1.0) -> nn.Sequential:
    """The 1-layer CNN of Appendix A (conv 64 → 8×8 pool → 1024 hidden units)."""
    return ghorbani_cnn(1, in_shape, num_classes, hidden, width)


def ghorbani_cnn2(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                  hidden: int = 1024, width: float = 1.0) -> nn.Sequential:
    """The 2-layer CNN of Appendix A (conv 64, conv 128, 2×2 pools → 1024 hidden units)."""
    return ghorbani_cnn(2, in_shape, num_classes, hidden, width)


def ghorbani_cnn3(in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                  hidden: int = 1024, width: float = 1.0) -> nn.Sequential:
    """The 3-layer CNN of Appendix A (conv 64, 128, 256, 2×2 pools → 1024 hidden units)."""
    return ghorbani_cnn(3, in_shape, num_classes, hidden, width)


#: The synthetic data the zoo entries train on (the ``data`` options of specs/ghorbani-cnn.yaml):
#: a 2-label Gaussian mixture of 1×8×8 images (Appendix E) whose classes are intertwined in the
#: input space (mean input-space ITW_10 ≈ 0.7 at separation 0.15).
MIXTURE = {"clusters": 8, "points": 50, "test_points": 50, "sigma": 0.15, "shape": [1, 8, 8],
           "labels": 2, "separation": 0.15, "seed": 0}
#: The small variant that the zoo ships (a < 1 MB checkpoint): a quarter of the channels and
#: 128 hidden units.
SMALL = {"in_shape": (1, 8, 8), "num_classes": 2, "hidden": 128, "width": 0.25}
#: The recipe of the zoo entries (robaudit.zoo.training.fit).
RECIPE = {"epochs": 20, "lr": 0.02, "batch_size": 64, "weight_decay": 5e-4}


def _mixture_data() -> Mapping[str, DataSplit]:
    from robaudit.plugins.loaders.gaussian_mixture import MixtureOptions, mixture_splits

    return mixture_splits(MixtureOptions(**MIXTURE))


def _entry(depth: int) -> ZooEntry:
    def build() -> nn.Module:
        return ghorbani_cnn(depth, **SMALL)

    return ZooEntry(
        name=f"ghorbani_cnn{depth}",
        build=build,
        data=_mixture_data,
        factory=f"robaudit.zoo.ghorbani_cnn:ghorbani_cnn{depth}",
        description=f"the {depth}-layer CNN of Ghorbani & Zou 2017 (Appendix A; width 1/4, "
                    "128 hidden units) on a 2-label Gaussian mixture of 1×8×8 images",
        **RECIPE,
    )


ENTRIES: dict[str, ZooEntry] = {f"ghorbani_cnn{d}": _entry(d) for d in (1, 2, 3)}
