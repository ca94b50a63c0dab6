"""The DeepFool floor of ``bench/floors.py`` against a count known in closed form: on a linear
classifier the paper's DeepFool takes exactly one step per sample."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from analytic_models import linear

from robaudit.testing import make_context

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from floors import paper_deepfool_floor


def test_the_papers_deepfool_on_a_linear_model_is_one_step_of_every_class_gradient() -> None:
    """5 classes, so c = 4 class gradients a step; 13 samples in batches of 4, one step each:
    gradient = 4·13 and forward = 13 − (4 − 2)·13 (the clean pass, the graph's forward and the
    crossing check per step, less the c forward passes the gradient throughput counts)."""
    model = linear(6, 5, seed=30)
    x = torch.randn(13, 6, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    ctx = make_context(model, x, model(x).argmax(dim=1), input_range=(-1e3, 1e3), batch_size=4)
    floor = paper_deepfool_floor(ctx, ctx.split, {"norm": "l2", "overshoot": 0.02,
                                                  "candidates": 10, "max_iter": 50})
    assert (floor.forward, floor.gradient) == (13 - 2 * 13, 4 * 13)
    assert "13 steps of 4 class gradients" in floor.note
