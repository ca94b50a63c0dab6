"""The geometry metrics shard (design §8): ``run_metric_sharded`` on 2 and 3 simulated processes
gives exactly what one process gives (value, samples with NaN where a point is left out, ci,
details, figures) for the universal-perturbation, curvature and activation metrics, also
through the shard-report encoding; and the per-unit layer reads of the activation metrics sum
exactly to the whole split's pass.

The data: 23 audit samples in units of 5 (4 full units and a partial one of 3; the curvature
checks use the first 17, so their last unit, 15–16, is partial inside a full unit of the
split), on a ReLU network whose four classes all occur in the unit box. Every check runs with
small settings, and some with DeepFool stopped after 3 steps, so that most boundary points
are left out and units hold both kinds.
"""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.metric import (
    Metric,
    MetricResult,
    SampleMetric,
    UnitResult,
    gather_units,
    work_units,
)
from robaudit.ops.activations import (
    InteractionStats,
    UnitStats,
    layer_statistics,
    linear_sites,
    output_sites,
    split_classes,
    unit_statistics,
)
from robaudit.plugins.metrics.activations.activation_sparsity import ActivationSparsity
from robaudit.plugins.metrics.activations.adversarial_likelihood import AdversarialLikelihood
from robaudit.plugins.metrics.activations.interaction_significance import (
    InteractionSignificance,
)
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.curvature.curvature_detection import CurvatureDetection
from robaudit.plugins.metrics.curvature.curvature_ratio import CurvatureRatio
from robaudit.plugins.metrics.curvature.curvature_subspace_vulnerability import (
    CurvatureSubspaceVulnerability,
)
from robaudit.plugins.metrics.universal.robustness_category import RobustnessCategory
from robaudit.plugins.metrics.universal.uap import UAPFoolingRate
from robaudit.sharding import shards_samples
from robaudit.testing import fresh, make_context, run_metric, run_metric_sharded
from robaudit.wire import decode, encode

SUBSPACE = {"fit": 6, "directions": 3, "subspace": 3, "min_included": 0.5}

CASES: list[tuple[Metric, dict[str, Any]]] = [
    (UAPFoolingRate(), {"max_passes": 2, "eps": 0.2}),
    (UAPFoolingRate(), {"max_passes": 2, "norm": "l2", "method": "sgd", "max_iter": 3}),
    (RobustnessCategory(), {"max_passes": 2, "eps": 0.2, "steps": 3}),
    (RobustnessCategory(), {"max_passes": 2, "eps": 0.2, "attack": "deepfool"}),
    (BoundaryCurvature(), {"points": 17, "k": 3, "max_iter": 2, "min_included": 0.0}),
    (BoundaryCurvature(), {"points": 17, "k": 2, "h": [0.01, 0.1], "dense_max": 8,
                           "iterations": 6, "directions": 5}),
    (CurvatureRatio(), {"points": 17, "samples": 8, **SUBSPACE}),
    (CurvatureRatio(), {"points": 17, "samples": 8, "max_iter": 5, "hvp": "softplus",
                        **{**SUBSPACE, "min_included": 0.0}}),
    (CurvatureDetection(), {"points": 17, "T": 4}),
    (CurvatureDetection(), {"points": 17, "T": 4, "h": [0.01, 0.1], "max_iter": 3,
                            "min_included": 0.0}),
    (CurvatureSubspaceVulnerability(), {"points": 17, "norms": [0.1, 0.5], **SUBSPACE}),
    (CurvatureSubspaceVulnerability(), {"points": 30, "max_iter": 5,
                                        **{**SUBSPACE, "min_included": 0.0}}),
    (ActivationSparsity(), {"layers": ["1", "2"]}),
    (InteractionSignificance(), {"layers": ["1", "3"]}),
    (AdversarialLikelihood(), {"steps": 3}),
]


def network() -> nn.Module:
    """16 → 12 → 4 ReLU network, its first layer steep and centred on the box, so that the
    four classes split the unit box and DeepFool converges within the box."""
    torch.manual_seed(0)
    first, last = nn.Linear(16, 12), nn.Linear(12, 4)
    with torch.no_grad():
        first.weight.mul_(6)
        first.bias.copy_(-first.weight.sum(1) * 0.5 + 0.3 * torch.randn(12))
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), last)


def context():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(23, 1, 4, 4, generator=g), torch.randint(0, 4, (23,), generator=g)
    reference = torch.rand(30, 1, 4, 4, generator=g), torch.randint(0, 4, (30,), generator=g)
    return make_context(network(), x, y, reference=reference, batch_size=5, seed=3)


@cache
def one_process(case: int) -> MetricResult:
    metric, params = CASES[case]
    return run_metric(metric, context(), **params)


def same(a: Any, b: Any, where: str) -> None:
    """Equal bit for bit, NaN equal to NaN, through dicts, lists and figures."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            same(u, v, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == np.asarray(b).dtype, where
        assert np.array_equal(a, b, equal_nan=True), where
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b), where
        same(vars(a), vars(b), where)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"


def wire(value: Any) -> Any:
    """``value`` through the JSON encoding of shard reports (``--shard``, ``robaudit merge``)."""
    return decode(json.loads(json.dumps(encode(value))))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{m.name}-{i}" for i, (m, _) in enumerate(CASES)])
def test_shards_give_the_one_process_result(case: int, world: int) -> None:
    metric, params = CASES[case]
    assert shards_samples(metric)
    whole = one_process(case)
    sharded = run_metric_sharded(metric, context(), world, **params)
    same(sharded.value, whole.value, "value")
    same(sharded.samples, whole.samples, "samples")
    same(sharded.ci, whole.ci, "ci")
    same(sharded.details, whole.details, "details")
    same(sharded.figures, whole.figures, "figures")


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{m.name}-{i}" for i, (m, _) in enumerate(CASES)])
def test_units_and_fit_summaries_survive_the_shard_report_encoding(case: int) -> None:
    """Per-sample arrays, extras and the fit summary hold only what a shard report can carry
    (numbers, strings, lists, dicts, arrays), and the reduce of their decoded copies is the
    one-process result."""
    metric, params = CASES[case]
    assert isinstance(metric, SampleMetric)
    validated = metric.Params.model_validate(params)
    ctx = fresh(context())
    fitted = metric.fit(ctx, validated)
    units = work_units(metric.sample_count(ctx, validated), ctx.batch_size)
    results = []
    for unit in units:
        result = metric.per_sample(ctx, validated, unit, fitted)
        results.append(UnitResult(wire(result.arrays), wire(result.extra)))
    reduced = metric.reduce(validated, gather_units(results, wire(metric.fit_summary(fitted))))
    whole = one_process(case)
    same(reduced.details, whole.details, "details")
    same(reduced.samples, whole.samples, "samples")
    same(reduced.value, whole.value, "value")


def test_the_cases_hold_left_out_points_and_partial_units() -> None:
    """The data exercise what could break a shard: boundary points left out (NaN samples, DeepFool
    stopped early) next to computed ones, in a partial last unit, and every audit sample's
    boundary normal when DeepFool runs to the end."""
    samples = one_process(4).samples
    assert samples is not None and len(samples) == 17
    assert np.isnan(samples).any() and not np.isnan(samples).all()
    for case in (7, 9):
        details = one_process(case).details
        assert details["excluded"] > 0 and details["points"] > 0
    assert one_process(0).details["normals"] == 23


def test_unit_statistics_sum_to_the_split_statistics() -> None:
    """The per-unit reads of a sharded activation check add up to the whole split's pass:
    active counts and significant-interaction counts sum exactly, fractions concatenate."""
    ctx = context()
    sites = linear_sites(ctx.model, None) + output_sites(ctx.model, ("2",))
    classes = split_classes(ctx)
    units = work_units(len(ctx.data()), ctx.batch_size)
    for kind, stats_sites in (("units", sites[1:]), ("interactions", sites[:1])):
        whole = layer_statistics(ctx, stats_sites, kind)
        parts = [unit_statistics(ctx, stats_sites, kind, unit, classes) for unit in units]
        for i, split_stats in enumerate(whole):
            assert torch.equal(sum(p[i].samples for p in parts), split_stats.samples)
            if isinstance(split_stats, UnitStats):
                assert torch.equal(sum(p[i].active for p in parts), split_stats.active)
            else:
                assert isinstance(split_stats, InteractionStats)
                assert torch.equal(sum(p[i].significant for p in parts),
                                   split_stats.significant)
                assert torch.equal(torch.cat([p[i].fraction for p in parts]),
                                   split_stats.fraction)
