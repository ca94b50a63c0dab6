"""The metric API for scale-out (design §8) in one process: work units, the exact wire encoding
of shares, the reduction of shares, and a plugin author's SampleMetric sharded in simulation."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from robaudit import Gathered, MetricParams, MetricResult, SampleMetric, Unit, UnitResult
from robaudit.figures import Histogram, ImageGrid
from robaudit.metric import work_units
from robaudit.sharding import (
    Share,
    decode_share,
    encode_share,
    owned_units,
    reduce_shares,
    run_units,
)
from robaudit.testing import fresh, make_context, run_metric, run_metric_sharded
from robaudit.wire import WireError, decode, digest, encode


@pytest.mark.parametrize("count, batch", [(1, 4), (10, 4), (12, 4), (40, 16), (7, 100)])
def test_work_units_tile_the_samples_in_order(count: int, batch: int) -> None:
    units = work_units(count, batch)
    covered = [i for unit in units for i in range(count)[unit.indices]]
    assert covered == list(range(count))
    assert all(len(u) == batch for u in units[:-1]) and [u.index for u in units] == list(
        range(len(units)))
    for world in (1, 2, 3, 5):
        shares = [owned_units(units, rank, world) for rank in range(world)]
        assert sorted(u.index for share in shares for u in share) == [u.index for u in units]
        assert all(u.index % world == rank for rank, s in enumerate(shares) for u in s)


def test_the_wire_encoding_is_exact() -> None:
    rng = np.random.default_rng(0)
    value = {
        "floats": [0.1, 1 / 3, float("nan"), float("inf"), -float("inf"), 5e-324, -0.0],
        "ints": [0, -1, 2**62],
        ("tuple", "key"): (1, "a", None, True),
        "arrays": [rng.standard_normal((3, 2)).astype(dt) for dt in ("float64", "float32",
                                                                     "float16")]
        + [np.arange(5, dtype=np.int64), np.array([True, False]), np.zeros((0, 3)),
           np.array(2.5)],
        "tensor": torch.tensor([1.5, float("nan")], dtype=torch.float32),
        "figures": [Histogram("h", (1.0, 2.0), markers={"mean": 1.5}),
                    ImageGrid("g", rng.random((1, 2, 3, 3)), ("row",), (("a", "b"),))],
    }
    back = decode(encode(value))
    assert back.keys() == value.keys()
    assert np.array_equal(back["floats"], value["floats"], equal_nan=True)
    assert str(back["floats"][-1]) == "-0.0" and back["ints"] == value["ints"]
    assert back[("tuple", "key")] == (1, "a", None, True)
    for a, b in zip(value["arrays"], back["arrays"], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert np.array_equal(back["tensor"], value["tensor"].numpy(), equal_nan=True)
    hist, grid = back["figures"]
    assert hist == value["figures"][0]
    assert np.array_equal(grid.images, value["figures"][1].images) and grid.captions == (
        ("a", "b"),)


@pytest.mark.parametrize("data", [
    {"figure": "system", "fields": {}}, {"pickle": "gASV"}, {"float": "1e9"},
    {"array": "object", "shape": [1], "b64": ""}, {"array": "float64", "shape": [2], "b64": "!"},
])
def test_the_wire_decodes_data_only(data: Any) -> None:
    with pytest.raises(WireError):
        decode(data)


def test_an_object_that_is_not_data_is_not_encoded() -> None:
    with pytest.raises(WireError):
        encode({"f": print})


def test_digests_tell_bit_different_fits_apart() -> None:
    x = torch.linspace(0, 1, 11)
    assert digest({"v": x, "n": 3}) == digest({"v": x.clone(), "n": 3})
    nudged = x.clone()
    nudged[4] = torch.nextafter(nudged[4], torch.tensor(2.0))
    assert digest({"v": x}) != digest({"v": nudged})


class Margin(SampleMetric):
    """A plugin author's metric: the mean logit margin over the reference's mean margin."""

    name: ClassVar[str] = "margin"
    Params: ClassVar[type[MetricParams]] = MetricParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "tests"
    fits = 0

    def fit(self, ctx: Any, params: Any) -> torch.Tensor:
        Margin.fits += 1
        with torch.no_grad():
            top = ctx.model.logits(ctx.data(ctx.reference).x.to(ctx.device)).topk(2).values
        return (top[:, 0] - top[:, 1]).mean()

    def fit_summary(self, fitted: torch.Tensor) -> dict[str, Any]:
        return {"reference_margin": float(fitted)}

    def per_sample(self, ctx: Any, params: Any, unit: Unit, fitted: torch.Tensor
                   ) -> UnitResult:
        top = ctx.unit_logits(unit).topk(2).values
        extra = {"first": Histogram("first", (1.0,))} if unit.index == 0 else {}
        return UnitResult({"margin": (top[:, 0] - top[:, 1]) / fitted}, extra)

    def reduce(self, params: Any, gathered: Gathered) -> MetricResult:
        margin = gathered.arrays["margin"]
        return MetricResult(value=float(margin.mean()), samples=margin,
                            details={**gathered.fit, "units": len(gathered.extras)},
                            figures=list(gathered.extras[0].values()))


@pytest.fixture
def context() -> Any:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x, y = torch.rand(45, 6), torch.randint(0, 4, (45,))
    return make_context(net, x, y, reference=(torch.rand(30, 6), torch.randint(0, 4, (30,))),
                        batch_size=8)


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_a_sample_metric_shards_to_the_same_numbers(context: Any, world: int) -> None:
    one = run_metric(Margin(), context)
    Margin.fits = 0
    many = run_metric_sharded(Margin(), context, world)
    assert Margin.fits == 1  # fitted once, broadcast
    assert many.value == one.value and np.array_equal(many.samples, one.samples)
    assert many.details == one.details == {**one.details, "units": 6}
    assert many.figures == one.figures


def test_shares_survive_the_wire_and_reduce_only_when_complete(context: Any) -> None:
    metric, params = Margin(), MetricParams()
    fitted = metric.fit(fresh(context), params)
    shares = [decode_share(encode_share(run_units(metric, fresh(context), params, fitted,
                                                  rank, 2))) for rank in range(2)]
    assert reduce_shares(metric, params, shares).value == run_metric(metric, context).value
    with pytest.raises(ValueError, match="missing"):
        reduce_shares(metric, params, shares[:1])
    with pytest.raises(ValueError, match="two shards"):
        reduce_shares(metric, params, [shares[0], shares[0], shares[1]])
    other = Share(units=shares[1].units, fit_digest="0" * 64, unit_count=6)
    with pytest.raises(ValueError, match="fitted different things"):
        reduce_shares(metric, params, [shares[0], other])


def test_checks_that_share_a_fit_are_one_task() -> None:
    from robaudit.pluginmanager import load_plugins
    from robaudit.sharding import task_groups
    from robaudit.spec import Check

    metrics = load_plugins([], []).metrics

    def check(cid: str, metric: str, **params: Any) -> Check:
        m = metrics[metric]
        return Check(id=cid, index=0, metric=m, params=m.Params.model_validate(params),
                     expect={}, tags=())

    checks = [check("acc", "clean_accuracy"), check("uap", "uap_fooling_rate"),
              check("lip", "lipschitz_bound"), check("cat", "robustness_category"),
              check("uap2", "uap_fooling_rate", eps=0.2), check("spear", "rank_order_spearman")]
    tasks = [[c.id for c in task] for task in task_groups(checks)]
    # uap and category share one fit; another eps is another fit
    assert tasks == [["acc"], ["uap", "cat"], ["lip"], ["uap2"], ["spear"]]
