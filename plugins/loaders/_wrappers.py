"""The modules the model loaders wrap a loaded model in (``loaders/models.py``), apart so that
loading the plugins does not import torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robaudit.model import Normalize


class HuggingFaceClassifier(nn.Module):
    """A transformers image classifier as robaudit audits it: inputs in ``input_range`` are
    normalised with the image processor's mean and std (``normalize``, None when the spec gives
    its own or the processor does not normalise), and the output object's ``logits`` returned.
    Its modules are ``model.*`` (e.g. ``features: model.vit.layernorm``)."""

    def __init__(self, model: nn.Module, normalize: Normalize | None) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            x = self.normalize(x)
        return self.model(pixel_values=x).logits


class ExportedClassifier(nn.Module):
    """A ``torch.export`` program as a module. The program's train/eval behaviour was fixed
    when it was exported (checked to be eval at load), so ``train()`` leaves it alone."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> Any:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedClassifier:
        self.training = mode
        return self
