"""Every metric that draws random numbers gives the same result at batch sizes 7, 64 and 450.

The data are the 450 digits test samples (batch size 450 is the whole split in one batch; 7
leaves a last batch of 2), the model a small MLP trained on the digits training split in
the fixture (a few hundred full-batch steps: fast, and accurate enough for attacks to have
something to fool). The independent answer is the metric's own result at another batch
size: random numbers are drawn per sample (:mod:`robaudit.ops.sampling`), so the values,
the per-sample results and the details must agree, continuous values to float rounding
(a batch's float32 matrix products may round differently: rtol 1e-5). Before per-sample
draws, PGD with restarts failed this at every batch size pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.metric import Metric, MetricResult
from robaudit.plugins.loaders.data import digits_splits
from robaudit.plugins.metrics.adversarial.attack_accuracy import NoiseAccuracy, PGDAccuracy
from robaudit.plugins.metrics.adversarial.lbfgs import LBFGSMinDistortion
from robaudit.plugins.metrics.adversarial.transfer import TransferRate
from robaudit.plugins.metrics.deformation.intertwinedness import Intertwinedness
from robaudit.plugins.metrics.deformation.spearman import RankOrderSpearman
from robaudit.plugins.metrics.deformation.sphere_deformation import SphereDeformation
from robaudit.plugins.metrics.universal.robustness_category import RobustnessCategory
from robaudit.plugins.metrics.universal.uap import UAPFoolingRate
from robaudit.testing import make_context, run_metric

BATCH_SIZES = (7, 64, 450)


def mlp(seed: int, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A 64-32-10 ReLU MLP trained full-batch with Adam (150 steps)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    splits = digits_splits()
    train, test = splits["train"], splits["test"]
    return {
        "model": mlp(0, train.x, train.y),
        "source": mlp(1, train.x, train.y),
        "train": (train.x, train.y),
        "test": (test.x, test.y),
    }


CASES: list[tuple[Metric, dict[str, Any]]] = [
    (PGDAccuracy(), {"eps": 0.1, "norm": "linf", "steps": 3, "restarts": 3}),
    (PGDAccuracy(), {"eps": 0.8, "norm": "l2", "steps": 3, "restarts": 2}),
    (NoiseAccuracy(), {"sigma": 0.4}),
    (RobustnessCategory(), {"eps": 0.1, "steps": 3, "max_passes": 1, "fit_limit": 50}),
    (UAPFoolingRate(), {"eps": 0.1, "max_passes": 1, "fit_limit": 50}),
    (UAPFoolingRate(), {"eps": 0.5, "norm": "l2", "max_passes": 1, "fit_limit": 50}),
    (TransferRate(), {"source": "source"}),
    (SphereDeformation(), {"points": 30, "samples": 12}),
    (RankOrderSpearman(), {"pairs": 20, "trials": 30}),
    (Intertwinedness(), {"n": 5}),
]


def run(setup: dict[str, Any], metric: Metric, params: dict[str, Any], batch_size: int,
        limit: int | None = None) -> MetricResult:
    x, y = setup["test"]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    ctx = make_context(setup["model"], x, y, reference=setup["train"], batch_size=batch_size,
                       seed=3, models={"source": setup["source"]})
    return run_metric(metric, ctx, **params)


def assert_same(a: MetricResult, b: MetricResult) -> None:
    assert a.value == pytest.approx(b.value, rel=1e-5, abs=1e-9)
    if a.samples is None:
        assert b.samples is None
    else:
        assert b.samples is not None
        np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5, atol=1e-9)
    for key, value in a.details.items():
        if isinstance(value, float):
            assert b.details[key] == pytest.approx(value, rel=1e-5, abs=1e-9, nan_ok=True), key
        elif isinstance(value, (int, str)):
            assert b.details[key] == value, key


@pytest.mark.parametrize(("metric", "params"), CASES,
                         ids=[f"{m.name}-{i}" for i, (m, _) in enumerate(CASES)])
def test_random_metrics_do_not_depend_on_the_batch_size(
    setup: dict[str, Any], metric: Metric, params: dict[str, Any]
) -> None:
    results = [run(setup, metric, params, size) for size in BATCH_SIZES]
    for other in results[1:]:
        assert_same(results[0], other)


def test_pgd_restarts_attack_and_do_not_depend_on_the_batch_size(setup: dict[str, Any]) -> None:
    """The case the issue reported: ``restarts > 1`` with random starts. More restarts can
    only lower the robust accuracy (the first restart's seeds do not depend on ``restarts``),
    at every batch size alike."""
    params = {"eps": 0.1, "norm": "linf", "steps": 2, "step_size": 0.05}
    one = [run(setup, PGDAccuracy(), {**params, "restarts": 1}, s) for s in BATCH_SIZES]
    four = [run(setup, PGDAccuracy(), {**params, "restarts": 4}, s) for s in BATCH_SIZES]
    for results in (one, four):
        for other in results[1:]:
            np.testing.assert_array_equal(results[0].samples, other.samples)
    assert bool(np.all(four[0].samples <= one[0].samples))
    assert four[0].value < one[0].value


def test_lbfgs_does_not_depend_on_the_batch_size(setup: dict[str, Any]) -> None:
    """L-BFGS draws its random targets per sample and solves fixed chunks of the split
    (its ``chunk`` param), whatever the batch size."""
    params = {"search_steps": 3, "max_iter": 15, "chunk": 8}
    results = [run(setup, LBFGSMinDistortion(), params, s, limit=20) for s in BATCH_SIZES]
    for other in results[1:]:
        assert_same(results[0], other)
