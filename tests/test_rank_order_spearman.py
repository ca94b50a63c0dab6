"""``rank_order_spearman`` against analytic feature maps and a brute-force scipy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from robaudit.plugins.metrics.deformation.spearman import RankOrderSpearman
from robaudit.testing import make_context, run_metric


class Featurise(nn.Module):
    """g = ``body``, followed by a linear head (the default feature layer is its input)."""

    def __init__(self, body: nn.Module, dim: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


def orthogonal(dim: int, seed: int = 0) -> nn.Linear:
    """2.5 × an orthogonal matrix, in float64 (orthogonal to ~1e-16: float32's ~1e-7 error
    would reorder nearly equal distances)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    layer = nn.Linear(dim, dim).double()
    layer.weight.data = 2.5 * q
    return layer


@pytest.mark.parametrize("seed", range(5))
def test_scaled_orthogonal_feature_map_gives_exactly_one(seed):
    x = torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    model = Featurise(orthogonal(16), 16).double()
    ctx = make_context(model, x, torch.zeros(200, dtype=torch.long), seed=seed)
    result = run_metric(RankOrderSpearman(), ctx, pairs=50, trials=200)
    assert result.value == 1.0
    assert np.all(result.samples == 1.0)


def test_deforming_map_matches_a_brute_force_scipy_estimate():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8), nn.Tanh())
    for layer in body:
        if isinstance(layer, nn.Linear):
            layer.weight.data *= 6
    model = Featurise(body, 8)
    x = torch.rand(300, 1, 4, 4)
    ctx = make_context(model, x, torch.zeros(300, dtype=torch.long))
    result = run_metric(RankOrderSpearman(), ctx, pairs=100, trials=2000)

    rng = np.random.default_rng(5)
    with torch.no_grad():
        g = body(x.flatten(1)).numpy()
    flat = x.flatten(1).numpy()
    brute = []
    for _ in range(2000):
        a = rng.integers(0, 300, size=100)
        b = (a + rng.integers(1, 300, size=100)) % 300
        d_in = [np.linalg.norm(flat[i] - flat[j]) for i, j in zip(a, b, strict=True)]
        d_g = [np.linalg.norm(g[i] - g[j]) for i, j in zip(a, b, strict=True)]
        brute.append(stats.spearmanr(d_in, d_g).statistic)
    assert 0.05 < result.value < 0.95  # the map really deforms
    # two Monte-Carlo estimates of the same mean: within 5 standard errors of their difference
    se = np.hypot(np.std(brute) / np.sqrt(2000), result.samples.std() / np.sqrt(2000))
    assert abs(result.value - np.mean(brute)) < 5 * se


def test_same_seed_same_value_other_seed_other_value():
    body = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
    x = torch.rand(100, 16)
    y = torch.zeros(100, dtype=torch.long)
    values = [run_metric(RankOrderSpearman(), make_context(Featurise(body, 8), x, y, seed=s),
                         pairs=20, trials=50).value for s in (0, 0, 1)]
    assert values[0] == values[1] != values[2]


def test_value_does_not_depend_on_the_batch_size(monkeypatch):
    """Pairs are drawn per trial and their distances computed in chunks of the batch size:
    the same bits whatever the chunks (7, 64 or 450 pairs a chunk)."""
    monkeypatch.setattr("robaudit.ops.neighbors.CHUNK_VALUES", 1)  # a pair per batch entry
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(48, 8), nn.Tanh())
    x, y = torch.rand(120, 3, 4, 4), torch.zeros(120, dtype=torch.long)
    results = [run_metric(RankOrderSpearman(),
                          make_context(Featurise(body, 8), x, y, batch_size=size),
                          pairs=30, trials=40) for size in (7, 64, 450)]
    for other in results[1:]:
        assert np.array_equal(other.samples, results[0].samples)


def test_trials_whose_pairs_are_all_copies_are_left_out_and_counted():
    """20 copies of one point and 2 others: a trial of 3 pairs all among the copies has every
    distance 0 in both spaces, so no r_s (about (190/231)³ ≈ 56% of trials)."""
    from robaudit.errors import MetricError

    g = torch.Generator().manual_seed(0)
    points = torch.rand(3, 4, generator=g)
    x = torch.cat([points[:1].repeat(20, 1), points[1:]])
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    ctx = make_context(model, x, torch.zeros(22, dtype=torch.long))
    with pytest.raises(MetricError, match=r"trials \(the others have all-equal distances"):
        run_metric(RankOrderSpearman(), ctx, pairs=3, trials=400)
    result = run_metric(RankOrderSpearman(), ctx, pairs=3, trials=400, min_included=0.2)
    share = result.details["included"]["share"]
    assert abs(share - (1 - (190 / 231) ** 3)) < 0.08
    assert len(result.samples) == result.details["included"]["used"]
    assert np.isfinite(result.samples).all()


def _deforming_context(batch_size: int = 256) -> object:
    torch.manual_seed(2)
    body = nn.Sequential(nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh())
    x = torch.rand(60, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    return make_context(Featurise(body, 8), x, torch.zeros(60, dtype=torch.long),
                        batch_size=batch_size)


@pytest.mark.parametrize("pairs, trials", [(30, 100), (100, 2500)])
def test_pairs_and_distance_matrix_give_the_same_value(pairs, trials, monkeypatch):
    """Issue #23: the cost model picks a path; forcing either gives the same trials' r_s (the
    same pairs, the same distances), so the value is Algorithm 2's whichever is taken. 2,500
    trials of 100 pairs run in two chunks of 200,000 pairs."""
    from robaudit.ops.pairdistances import PairBlocks

    results = {}
    for path, cost in (("matrix", 0), ("pairs", 10**12)):
        monkeypatch.setattr(PairBlocks, "evaluations", lambda self, cost=cost: cost)
        results[path] = run_metric(RankOrderSpearman(), _deforming_context(), pairs=pairs,
                                   trials=trials)
    assert 0.05 < results["pairs"].value < 0.95  # a deforming map: ranks really move
    assert abs(results["matrix"].value - results["pairs"].value) < 1e-6
    np.testing.assert_allclose(results["matrix"].samples, results["pairs"].samples, atol=1e-6)


def test_value_does_not_depend_on_the_batch_size_nor_the_path_it_picks(monkeypatch):
    """60 samples, 3,000 pairs, a pair of rows per batch entry: batch 64 makes one 60 × 60
    block (3,600 evaluations > 3,000): the pairs; batches 7 and 1 make blocks of 7 × 7 and
    1 × 1 (at most 45 × 49 = 2,205 and 1,770 evaluations): the matrix. The same trials."""
    from robaudit.ops import pairdistances

    monkeypatch.setattr("robaudit.ops.neighbors.CHUNK_VALUES", 1)
    paths = []
    original = pairdistances.matrix_pair_distances

    def spy(*args: object) -> torch.Tensor:
        paths.append(1)
        return original(*args)

    monkeypatch.setattr(pairdistances, "matrix_pair_distances", spy)
    samples = {}
    for size in (64, 7, 1):
        paths.clear()
        result = run_metric(RankOrderSpearman(), _deforming_context(size), pairs=30, trials=100)
        samples[size] = (result.samples, len(paths))
    assert [taken for _, taken in samples.values()] == [0, 2, 2]  # input and feature spaces
    for other in (7, 1):
        assert np.array_equal(samples[other][0], samples[64][0])
