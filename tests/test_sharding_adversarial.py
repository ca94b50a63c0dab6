"""The adversarial and deformation metrics shard (design §8): run as 2 or 3 processes would
run them (:func:`robaudit.testing.run_metric_sharded`: fresh caches and generators, units
dealt round-robin, reduced in sample order), they give exactly the one-process result.

The independent answer is the one-process run itself (:func:`robaudit.testing.run_metric`):
value, per-sample values (NaN equal to NaN), interval, details and figures must be equal bit
for bit, not to a tolerance. The data are 26 samples and the batch size 5, so there are 6
units, the last of one sample, and the 6-sample galleries span two units.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.context import AuditContext
from robaudit.metric import (
    Metric,
    MetricResult,
    SampleMetric,
    UnitResult,
    gather_units,
    work_units,
)
from robaudit.ops.deepfool import deepfool_split, deepfool_unit
from robaudit.plugins.metrics.adversarial.attack_accuracy import (
    FGSMAccuracy,
    NoiseAccuracy,
    PGDAccuracy,
)
from robaudit.plugins.metrics.adversarial.deepfool_distortion import DeepFoolMinDistortion
from robaudit.plugins.metrics.deformation.fgsm_output_change import FgsmOutputChange
from robaudit.plugins.metrics.deformation.sphere_deformation import SphereDeformation
from robaudit.testing import make_context, run_metric, run_metric_sharded
from robaudit.wire import decode, encode

SAMPLES, BATCH = 26, 5
BOX = (-3.0, 3.0)


def same(a: Any, b: Any) -> bool:
    """Exact equality of results' parts: floats and arrays bit for bit, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return (a.shape == b.shape and a.dtype == b.dtype
                and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f")))
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return type(a) is type(b) and a == b


def mlp(seed: int) -> nn.Module:
    """A random 8-12-3 ReLU MLP (its feature layer g: the 12 hidden units)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs in the box [-3, 3]; labels the model's predictions, every fifth
    changed (so some samples are misclassified when clean)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 8, generator=g).clamp(*BOX)
    with torch.no_grad():
        y = mlp(0)(x).argmax(dim=1)
    y[::5] = (y[::5] + 1) % 3
    return x, y


def context(data: tuple[torch.Tensor, torch.Tensor]) -> AuditContext:
    return make_context(mlp(0), *data, input_range=BOX, batch_size=BATCH, seed=7)


CASES: list[tuple[Metric, dict[str, Any]]] = [
    (FGSMAccuracy(), {"eps": 1.0}),
    (PGDAccuracy(), {"eps": [0.5, 1.5], "steps": 4, "restarts": 2}),
    (PGDAccuracy(), {"eps": 2.0, "norm": "l2", "steps": 3}),
    (NoiseAccuracy(), {"sigma": [1.0, 3.0]}),
    (DeepFoolMinDistortion(), {}),
    (DeepFoolMinDistortion(), {"norm": "linf", "max_iter": 2, "min_included": 0.0}),
    (FgsmOutputChange(), {"eps": 0.5}),
    (SphereDeformation(), {"radius": [0.5, 2.0], "points": 3, "samples": 23}),
    (SphereDeformation(), {"points": 12, "samples": 100, "clip": True}),
]


@pytest.mark.parametrize(("metric", "params"), CASES,
                         ids=[f"{m.name}-{i}" for i, (m, _) in enumerate(CASES)])
def test_sharded_runs_equal_the_single_process_run(metric: Metric, params: dict[str, Any],
                                                   data: tuple[torch.Tensor, torch.Tensor]
                                                   ) -> None:
    whole = run_metric(metric, context(data), **params)
    assert whole.samples is not None and whole.samples.size > 0
    for world in (2, 3):
        sharded = run_metric_sharded(metric, context(data), world, **params)
        for part in dataclasses.fields(MetricResult):
            assert same(getattr(whole, part.name), getattr(sharded, part.name)), (
                f"{metric.name} on {world} processes: {part.name} differs")


def test_units_run_by_one_check_are_the_shared_deepfool_run_of_the_split(
        data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The other DeepFool-based checks read DeepFool per work unit: after
    deepfool_min_distortion's units in one process every unit is cached under its key, and
    deepfool_split reads them (it runs nothing) and equals a run of deepfool_split on a fresh
    context; a shard that ran only some units holds those alone."""
    ctx = context(data)
    run_metric(DeepFoolMinDistortion(), ctx, candidates=3)
    key = ("deepfool", "model", "test", "l2", 0.02, 3, 50)
    units = work_units(SAMPLES, BATCH)
    assert all((*key, unit.start, unit.stop) in ctx.cache for unit in units)
    shared = deepfool_split(ctx, candidates=3)
    fresh = deepfool_split(context(data), candidates=3)
    for name in ("perturbation", "boundary", "iterations", "converged", "normal"):
        assert torch.equal(getattr(shared, name), getattr(fresh, name))
    shard = context(data)
    for unit in units[1::2]:
        deepfool_unit(shard, unit, candidates=3)
    assert [(*key, unit.start, unit.stop) in shard.cache for unit in units] == [
        False, True, False, True, False, True]


@pytest.mark.parametrize(("metric", "params"), CASES,
                         ids=[f"{m.name}-{i}" for i, (m, _) in enumerate(CASES)])
def test_unit_results_travel_between_processes_unchanged(
        metric: Metric, params: dict[str, Any], data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Every unit's arrays and extras (the galleries) pass through the JSON wire encoding
    of shard reports (robaudit.wire) and reduce to the same result as before it."""
    assert isinstance(metric, SampleMetric)
    ctx = context(data)
    validated = metric.Params.model_validate(params)
    fitted = metric.fit(ctx, validated)
    units = work_units(metric.sample_count(ctx, validated), ctx.batch_size)
    results = [metric.per_sample(ctx, validated, unit, fitted) for unit in units]
    wired = [UnitResult(**decode(json.loads(json.dumps(encode(
        {"arrays": r.arrays, "extra": r.extra}))))) for r in results]
    direct = metric.reduce(validated, gather_units(results))
    assert same(direct, metric.reduce(validated, gather_units(wired)))
