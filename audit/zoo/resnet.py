"""A small residual network for the 8×8 scikit-learn digits: robaudit's shipped default model.

The structure is fixed for the metrics that walk the network layer by layer (e.g. the Lipschitz
bound of Szegedy et al. 2014, section 4.3, which bounds a residual block by 1 + L(branch)):
:class:`DigitsResNet` is an ``nn.Sequential`` of plain layers and :class:`BasicBlock` s, and each
block exposes its residual ``branch`` and its ``shortcut`` as attributes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution with padding 1 and no bias (a batch norm follows it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """The basic residual block of He et al. (2016): ``relu(branch(x) + shortcut(x))``.

    branch    ``nn.Sequential(conv3x3, BatchNorm2d, ReLU, conv3x3, BatchNorm2d)``; the first
              convolution carries the stride.
    shortcut  ``nn.Identity()`` when the shape is kept, else ``nn.Sequential(conv1x1 with the
              stride, BatchNorm2d)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class DigitsResNet(nn.Sequential):
    """A ResNet for 1×8×8 inputs in [0, 1]: stem conv-bn-relu, stages of :class:`BasicBlock` s
    (each stage after the first halves the resolution), global average pooling, a linear layer.

    widths       the channels of each stage (the stem has ``widths[0]``).
    blocks       the number of blocks of each stage.
    in_channels  the input's channels; ``num_classes`` the outputs.

    The layers are named (``stem_conv``, ``stem_bn``, ``stem_relu``, ``stage1_block1``, …,
    ``pool``, ``flatten``, ``fc``); the input of ``fc`` is the feature representation g(x).
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32),
        blocks: Sequence[int] = (1, 1),
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        if len(widths) != len(blocks) or not widths:
            raise ValueError("widths and blocks need one entry per stage")
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem_conv=conv3x3(in_channels, widths[0]),
            stem_bn=nn.BatchNorm2d(widths[0]),
            stem_relu=nn.ReLU(),
        )
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            for index in range(1, count + 1):
                stride = 2 if stage > 1 and index == 1 else 1
                layers[f"stage{stage}_block{index}"] = BasicBlock(channels, width, stride)
                channels = width
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(channels, num_classes)
        super().__init__(layers)


def digits_resnet(**kwargs: object) -> nn.Module:
    """The factory of the spec's ``model.factory: robaudit.zoo:digits_resnet``; ``kwargs`` go
    to :class:`DigitsResNet` (the shipped checkpoint uses the defaults)."""
    return DigitsResNet(**kwargs)  # type: ignore[arg-type]
