"""Issue #13, the report people read: per-class breakdowns of accuracy-type metrics, galleries
of clean / perturbation / perturbed samples, and accuracy curves over lists of eps / sigma."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robaudit.figures import ImageGrid, LinePlot
from robaudit.ops.perclass import GALLERY_SAMPLES, per_class_accuracy
from robaudit.plugins.metrics.adversarial.attack_accuracy import (
    FGSMAccuracy,
    NoiseAccuracy,
    PGDAccuracy,
)
from robaudit.plugins.metrics.adversarial.deepfool_distortion import DeepFoolMinDistortion
from robaudit.plugins.metrics.general.accuracy import CleanAccuracy
from robaudit.testing import make_context, run_metric


def _setup(batch_size: int = 64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(90, 1, 4, 4, generator=gen)
    y = torch.randint(0, 3, (90,), generator=gen)
    return make_context(model, x, y, batch_size=batch_size)


def test_per_class_accuracy_equals_a_numpy_group_by():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    correct = rng.random(500) < 0.3 + 0.15 * labels
    rows = per_class_accuracy(torch.tensor(correct), torch.tensor(labels))
    for row in rows:
        mine = correct[labels == row["class"]]
        assert row["samples"] == mine.size and row["correct"] == int(mine.sum())
        assert abs(row["accuracy"] - mine.mean()) < 1e-12
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
    assert [r["class"] for r in rows] == [0, 1, 2, 3]


def test_accuracy_type_metrics_report_their_classes_and_a_gallery():
    ctx = _setup()
    clean = run_metric(CleanAccuracy(), ctx)
    weighted = sum(r["correct"] for r in clean.details["per_class"]) / 90
    assert abs(weighted - clean.value) < 1e-12
    for metric, params in ((FGSMAccuracy(), {"eps": 0.1}), (PGDAccuracy(), {"eps": 0.1}),
                           (NoiseAccuracy(), {"sigma": 0.2})):
        result = run_metric(metric, ctx, **params)
        rows = result.details["per_class"]
        assert sum(r["correct"] for r in rows) == result.details["correct"]
        [grid] = [f for f in result.figures if isinstance(f, ImageGrid)]
        assert grid.images.shape[:2] == (3, GALLERY_SAMPLES)
        clean_row, _, perturbed_row = grid.images
        x = ctx.data().x[:GALLERY_SAMPLES].numpy()
        assert np.allclose(clean_row, x)
        if "eps" in params:  # the perturbed images stay in the attack's ℓ∞ ball
            assert np.abs(perturbed_row - clean_row).max() <= params["eps"] + 1e-6
        assert len(grid.captions[2]) == GALLERY_SAMPLES
    deepfool = run_metric(DeepFoolMinDistortion(), ctx)
    [grid] = [f for f in deepfool.figures if isinstance(f, ImageGrid)]
    flipped = [c for c in grid.captions[2] if c.endswith("✗")]
    assert flipped  # DeepFool points are across the boundary


def test_an_eps_list_gives_the_curve_and_the_value_at_the_first():
    ctx = _setup()
    levels = [0.1, 0.02, 0.3]  # the value is at the first; the curve runs in increasing eps
    curve = run_metric(PGDAccuracy(), ctx, eps=levels)
    singles = {eps: run_metric(PGDAccuracy(), _setup(), eps=eps).value for eps in levels}
    assert curve.value == singles[0.1]
    assert [row["accuracy"] for row in curve.details["curve"]] == [
        singles[0.02], singles[0.1], singles[0.3]]
    assert singles[0.02] >= singles[0.1] >= singles[0.3]  # a larger ball never helps
    [plot] = [f for f in curve.figures if isinstance(f, LinePlot)]
    assert plot.x == (0.02, 0.1, 0.3)


def test_a_sigma_list_and_batch_independence():
    levels = [0.0, 0.2, 1.0]
    values = {size: run_metric(NoiseAccuracy(), _setup(size), sigma=levels)
              for size in (7, 90)}
    assert values[7].details["curve"] == values[90].details["curve"]
    clean = run_metric(CleanAccuracy(), _setup()).value
    assert values[7].details["curve"][0]["accuracy"] == clean  # sigma 0 is the clean input
