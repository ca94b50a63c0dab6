"""``robaudit.ops.activations``: significance against a numpy loop, Bernoulli numerics against
closed forms, ranks from Gram matrices against numpy, streamed statistics against one-shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.errors import MetricError, ParamError
from robaudit.figures import Heatmap
from robaudit.ops.activations import (
    GramStats,
    UnitStats,
    bernoulli_entropy,
    bernoulli_kl,
    bernoulli_log_likelihood,
    bernoulli_probabilities,
    check_layer_names,
    gram_factor,
    gram_rank,
    layer_statistics,
    linear_sites,
    output_sites,
    significance,
    stacked_rank,
)
from robaudit.plotting import render_png
from robaudit.testing import make_context


def brute_significance(h: np.ndarray, w: np.ndarray, b: np.ndarray, count_bias: bool
                       ) -> np.ndarray:
    """§2.1 written as loops: row i of [w_ij h_j | b_i], significant where x_ij / Σ_j x_ij > 1/n."""
    n_out, n_in = w.shape
    n = n_in + 1 if count_bias else n_in
    out = np.zeros((len(h), n_out, n_in + 1), dtype=bool)
    for s in range(len(h)):
        for i in range(n_out):
            row = [w[i, j] * h[s, j] for j in range(n_in)] + [b[i]]
            total = sum(row)
            for j in range(n_in + 1):
                out[s, i, j] = total != 0 and row[j] / total > 1.0 / n
    return out


@pytest.mark.parametrize("count_bias", [True, False])
def test_significance_equals_a_numpy_loop(count_bias):
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    h = torch.randn(40, 5, dtype=torch.float64)
    h[:20] = h[:20].relu()  # non-negative inputs, as after a ReLU, and mixed signs
    ours = significance(h, layer, count_bias).numpy()
    brute = brute_significance(h.numpy(), layer.weight.detach().numpy(),
                               layer.bias.detach().numpy(), count_bias)
    assert ours.shape == (40, 3, 6)
    np.testing.assert_array_equal(ours, brute)
    assert 0 < ours.mean() < 1


def test_bias_column_changes_the_threshold():
    """One row [1, 1, 1 | 0.3] (sum 3.3): each input's share 0.303 is above 1/4 (n = n_in + 1
    columns) but below 1/3 (n = n_in)."""
    layer = nn.Linear(3, 1)
    layer.weight.data = torch.ones(1, 3)
    layer.bias.data = torch.tensor([0.3])
    h = torch.ones(1, 3)
    assert significance(h, layer, True)[0, 0].tolist() == [True, True, True, False]
    assert significance(h, layer, False)[0, 0].tolist() == [False, False, False, False]


def test_zero_row_sum_has_no_significant_entry():
    layer = nn.Linear(2, 1, bias=False)
    layer.weight.data = torch.tensor([[1.0, -1.0]])
    assert not significance(torch.ones(1, 2), layer).any()


def test_bernoulli_kl_and_entropy_match_closed_forms_with_smoothing():
    """Interaction 0 is significant on all 4 samples of class 0 and none of class 1: smoothed
    p = 4.5/5 and 0.5/5, so the KL is finite and equals the closed form."""
    counts = torch.tensor([[4, 2], [0, 2]])
    samples = torch.tensor([4, 4])
    p = bernoulli_probabilities(counts, samples, 0.5)
    np.testing.assert_allclose(p.numpy(), [[0.9, 0.5], [0.1, 0.5]])

    def kl(a, b):
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    def h(a):
        return -(a * np.log(a) + (1 - a) * np.log(1 - a))

    matrix = bernoulli_kl(p, p).numpy()
    expected = (kl(0.9, 0.1) + kl(0.5, 0.5)) / 2
    np.testing.assert_allclose(matrix, [[0, expected], [expected, 0]], atol=1e-15)
    np.testing.assert_allclose(bernoulli_entropy(p).numpy(), [(h(0.9) + h(0.5)) / 2] * 2)
    ll = bernoulli_log_likelihood(torch.tensor([[1, 0]]), p[:1]).item()
    assert ll == pytest.approx((np.log(0.9) + np.log(0.5)) / 2)


def test_gram_rank_equals_numpy_matrix_rank_of_the_rows():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(30, 4, generator=g, dtype=torch.float64)
    rows = torch.randn(50, 4, generator=g, dtype=torch.float64) @ basis.T  # rank 4 in R^30
    tol = 1e-3
    sigma = np.linalg.svd(rows.numpy(), compute_uv=False)
    assert gram_rank(rows.T @ rows, tol) == np.linalg.matrix_rank(rows.numpy(),
                                                                  tol=tol * sigma[0]) == 4
    assert gram_rank(torch.zeros(3, 3), tol) == 0


class Net(nn.Module):
    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 8), nn.ReLU())
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _context(batch_size: int, n: int = 90):
    torch.manual_seed(1)
    model = Net()
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(2))
    y = torch.arange(n) % 3
    return make_context(model, x, y, batch_size=batch_size), model, x, y


def test_streamed_statistics_equal_one_shot_ones():
    streamed, model, x, y = _context(batch_size=7)
    sites = output_sites(streamed.model, ("body.1", "body.0"))
    units, _ = layer_statistics(streamed, sites, "units")
    grams = layer_statistics(streamed, sites[:1], "gram")
    with torch.no_grad():
        h = model.body(x).double()
    assert isinstance(units, UnitStats) and isinstance(grams[0], GramStats)
    for c in range(3):
        rows = h[y == c]
        np.testing.assert_array_equal(units.active[c].numpy(), (rows > 0).sum(0).numpy())
        np.testing.assert_allclose(grams[0].gram[c].numpy(), (rows.T @ rows).numpy(),
                                   rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(units.samples.numpy(), [30, 30, 30])


def test_checks_on_the_same_layers_share_one_pass():
    ctx, model, _, _ = _context(batch_size=32)
    calls = []
    model.head.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    sites = output_sites(ctx.model, None)
    layer_statistics(ctx, sites, "units")
    read = sum(calls)
    layer_statistics(ctx, sites, "units")
    layer_statistics(ctx, sites[1:], "units")
    assert read == 1 + 90 and sum(calls) == read  # the class count's one sample, then one pass


def test_a_misspelt_layer_lists_the_closest_names():
    ctx, _, _, _ = _context(batch_size=32)
    close = r"no module named 'body.2'; closest: body\.[01] \((Linear|ReLU)\)"
    with pytest.raises(ParamError, match=close) as e:
        check_layer_names(ctx.model, ("body.2",))
    assert e.value.key == "layers"
    with pytest.raises(ParamError, match=r"is a ReLU, not an nn\.Linear"):
        check_layer_names(ctx.model, ("body.1",), linear=True)


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = TupleOut()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pair(x)[0])


def test_a_module_whose_output_is_not_a_tensor_is_a_clear_error():
    ctx = make_context(TupleNet(), torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    with pytest.raises(MetricError, match="layer 'pair' gives a tuple, not a tensor"):
        layer_statistics(ctx, output_sites(ctx.model, ("pair",)), "units")


def test_heatmap_renders_and_refuses_mismatched_labels():
    figure = Heatmap(title="t", values=((0.1, 1.0), (2.0, float("nan"))), xlabels=("a", "b"))
    assert len(render_png(figure)) > 100
    with pytest.raises(ValueError, match="3 x labels for 2"):
        render_png(Heatmap(title="t", values=((1.0, 2.0),), xlabels=("a", "b", "c")))


def test_stacked_rank_from_factors_equals_the_rank_of_the_summed_grams():
    g = torch.Generator().manual_seed(3)
    shared = torch.randn(40, 2, generator=g, dtype=torch.float64)
    a = torch.randn(30, 5, generator=g, dtype=torch.float64) @ torch.cat(
        [shared, torch.randn(40, 3, generator=g, dtype=torch.float64)], 1).T
    b = torch.randn(25, 6, generator=g, dtype=torch.float64) @ torch.cat(
        [shared, torch.randn(40, 4, generator=g, dtype=torch.float64)], 1).T
    fa, fb = gram_factor(a.T @ a), gram_factor(b.T @ b)
    assert fa.shape == (40, 5) and fb.shape == (40, 6)
    for tol in (1e-6, 1e-3):
        assert stacked_rank([fa], tol) == gram_rank(a.T @ a, tol) == 5
        assert stacked_rank([fa, fb], tol) == gram_rank(a.T @ a + b.T @ b, tol) == 9


class TokenNet(nn.Module):
    """An nn.Linear applied to every one of 3 tokens (inputs batch × 3 × 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.view(-1, 3, 4)).mean(dim=1)


def test_a_linear_applied_to_tokens_is_a_clear_error_for_interactions():
    ctx = make_context(TokenNet(), torch.randn(6, 12), torch.zeros(6, dtype=torch.long))
    with pytest.raises(MetricError, match="inputs of 12 values a sample, not 4"):
        layer_statistics(ctx, linear_sites(ctx.model, None), "interactions")
