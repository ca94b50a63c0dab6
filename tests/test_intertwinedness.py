"""intertwinedness (Ghorbani & Zou 2017, section 2) and the k-NN primitives it uses, against
brute-force loops and a mixture whose clusters are far apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from robaudit.errors import ParamError
from robaudit.ops.neighbors import knn, pair_distances, radius_label_counts
from robaudit.plugins.loaders.gaussian_mixture import MixtureOptions, mixture_splits
from robaudit.plugins.metrics.deformation.intertwinedness import Intertwinedness
from robaudit.testing import make_context, run_metric


def random_net(d: int, seed: int, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 5), nn.Linear(5, classes))


def small_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(25, 4, generator=g), torch.randint(0, 3, (25,), generator=g)
    xr, yr = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    return x, y, xr, yr


def brute_itw_n(q: np.ndarray, yq: np.ndarray, r: np.ndarray, yr: np.ndarray, n: int,
                skip_self: bool = False) -> list[float]:
    out = []
    for i in range(len(q)):
        dist = [(float(np.linalg.norm(q[i] - r[j])), j) for j in range(len(r))
                if not (skip_self and j == i)]
        dist.sort()
        out.append(sum(yr[j] == yq[i] for _, j in dist[:n]) / n)
    return out


def brute_itw_r(q: np.ndarray, yq: np.ndarray, r: np.ndarray, yr: np.ndarray, radius: float,
                skip_self: bool = False) -> tuple[float, int]:
    ratios, empty = [], 0
    for i in range(len(q)):
        inside = [j for j in range(len(r)) if np.linalg.norm(q[i] - r[j]) <= radius
                  and not (skip_self and j == i)]
        if not inside:
            empty += 1
            continue
        ratios.append(sum(yr[j] == yq[i] for j in inside) / len(inside))
    return float(np.mean(ratios)) if ratios else float("nan"), empty


def test_knn_matches_sorting_with_small_chunks_and_exclusion() -> None:
    g = torch.Generator().manual_seed(3)
    q, r = torch.randn(13, 5, generator=g), torch.randn(29, 5, generator=g)
    d, i = knn(q, r, 6, query_chunk=4, reference_chunk=7)
    full = torch.cdist(q, r)
    expected_d, expected_i = full.sort(dim=1)
    assert torch.equal(i, expected_i[:, :6])
    torch.testing.assert_close(d, expected_d[:, :6])
    exclude = expected_i[:, 0]  # forbid each query's nearest: the next ones move up
    _, i2 = knn(q, r, 6, exclude=exclude, query_chunk=5, reference_chunk=3)
    assert torch.equal(i2, expected_i[:, 1:7])
    with pytest.raises(ValueError):
        knn(q, r, 30)


def test_radius_label_counts_match_a_loop() -> None:
    g = torch.Generator().manual_seed(4)
    q, r = torch.randn(9, 3, generator=g), torch.randn(31, 3, generator=g)
    labels = torch.randint(0, 3, (31,), generator=g)
    counts = radius_label_counts(q, r, labels, [0.5, 1.0, 2.0], 3, query_chunk=2,
                                 reference_chunk=5)
    dist = torch.cdist(q, r)
    for a in range(9):
        for j, radius in enumerate([0.5, 1.0, 2.0]):
            for c in range(3):
                assert counts[a, j, c] == int(((dist[a] <= radius) & (labels == c)).sum())


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_pair_distances_match_a_loop_whatever_the_chunk(chunk):
    points = torch.rand(12, 2, 3, dtype=torch.float64)
    others = torch.rand(5, 2, 3, dtype=torch.float64)
    a, b = torch.randint(0, 12, (6, 5)), torch.randint(0, 5, (6, 5))
    ours = pair_distances(points, others, a, b, chunk=chunk)
    assert ours.shape == (6, 5)
    expected = [[float((points[i] - others[j]).norm()) for i, j in zip(ra, rb, strict=True)]
                for ra, rb in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-12)


def test_pair_distances_are_bit_identical_to_the_distance_matrix():
    """One pair's distance does not depend on the other pairs asked for nor on the chunking:
    the same bits as cdist's direct (no ‖a‖² + ‖b‖² − 2a·b) distance matrix."""
    points = torch.rand(40, 37)
    matrix = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    a, b = torch.randint(0, 40, (500,)), torch.randint(0, 40, (500,))
    for chunk in (3, 64, 500):
        assert torch.equal(pair_distances(points, points, a, b, chunk=chunk), matrix[a, b])


@pytest.mark.parametrize("reference", ["separate", "same tensors", "same split name"])
def test_itw_n_and_itw_r_equal_brute_force(reference: str) -> None:
    x, y, xr, yr = small_case()
    model = random_net(4, seed=1)
    if reference == "separate":
        ctx = make_context(model, x, y, reference=(xr, yr), batch_size=8)
    else:  # the audit split is its own reference: each sample is left out of its neighbours
        ctx = make_context(model, x, y, batch_size=8)  # "train" holds the audit tensors
        if reference == "same split name":
            ctx.reference = "test"
        xr, yr = x, y
    leave_one_out = reference != "separate"
    radii, feature_radii = [0.8, 1.5, 3.0], [0.05, 0.2, 0.6]
    result = run_metric(Intertwinedness(), ctx, n=3, ns=[1, 3, 7, 20], radius_units="absolute",
                        radii=radii, feature_radii=feature_radii)
    assert result.details["leave_one_out"] is leave_one_out
    feats = ctx.model.features(x).detach().double().numpy()
    ref_feats = ctx.model.features(xr).detach().double().numpy()
    xq, xrn = x.double().numpy(), xr.double().numpy()
    yq, yrn = y.numpy(), yr.numpy()
    expected = brute_itw_n(feats, yq, ref_feats, yrn, 3, leave_one_out)
    np.testing.assert_allclose(result.samples, expected)
    assert result.value == pytest.approx(np.mean(expected))
    for row in result.details["itw_n_curve"]:
        m = row["n"]
        assert row["input"] == pytest.approx(np.mean(brute_itw_n(xq, yq, xrn, yrn, m,
                                                                 leave_one_out)))
        assert row["feature"] == pytest.approx(np.mean(brute_itw_n(feats, yq, ref_feats, yrn,
                                                                   m, leave_one_out)))
    curve = result.details["itw_r_curve"]
    for space, q, r, space_radii in (("input", xq, xrn, radii),
                                     ("feature", feats, ref_feats, feature_radii)):
        for row, radius in zip(curve, space_radii, strict=True):
            mean, empty = brute_itw_r(q, yq, r, yrn, radius, leave_one_out)
            assert row[f"{space}_no_neighbour"] == empty
            if empty < len(x):
                assert row[space] == pytest.approx(mean)
            else:
                assert np.isnan(row[space])
    if leave_one_out:  # without leave-one-out every sample has itself within any radius
        assert curve[0]["input_no_neighbour"] > 0


@pytest.mark.parametrize("pairs", ["all", "random"])
def test_default_radii_leave_out_the_self_pairs(pairs: str, monkeypatch) -> None:
    """Reference = audit split: the quantile radii come from the distances between distinct
    samples. Each sample's zero distance to itself would make up 1/25 of the pairs here and
    turn every quantile below 0.04 into a radius of 0."""
    x, y, _, _ = small_case()
    model = random_net(4, seed=1)
    if pairs == "random":  # fewer pairs allowed than the 25 × 25 there are: random pairs
        monkeypatch.setattr(
            "robaudit.plugins.metrics.deformation.intertwinedness.QUANTILE_PAIRS", 400)
    ctx = make_context(model, x, y, reference=(x, y))
    quantiles = [0.001, 0.02, 0.5, 1.0]
    result = run_metric(Intertwinedness(), ctx, n=3, radii=quantiles)
    assert result.details["leave_one_out"] is True
    feats = ctx.model.features(x).detach().double()
    for space, points in (("input", x.double()), ("feature", feats)):
        dist = torch.cdist(points, points)
        distinct = dist[~torch.eye(len(x), dtype=torch.bool)]
        rows = result.details["itw_r_curve"]
        found = [row[f"{space}_radius"] for row in rows]
        if pairs == "all":
            expected = torch.quantile(distinct, torch.tensor(quantiles, dtype=torch.float64))
            np.testing.assert_allclose(found, expected.numpy(), rtol=1e-5)
        else:
            assert found == sorted(found)
            assert found[0] >= float(distinct.min()) * (1 - 1e-5) > 0
            assert found[-1] <= float(distinct.max()) * (1 + 1e-5)


def test_far_apart_clusters_are_not_intertwined_in_either_space() -> None:
    splits = mixture_splits(MixtureOptions(clusters=6, points=40, test_points=10, sigma=0.002,
                                           dim=5, labels=3, seed=2))
    train, test = splits["train"], splits["test"]
    model = random_net(5, seed=0)
    ctx = make_context(model, test.x, test.y, reference=(train.x, train.y))
    result = run_metric(Intertwinedness(), ctx, n=20, ns=[1, 10, 40],
                        radii=[0.01, 0.05, 0.1])
    assert result.value == 1.0
    assert result.details["input_itw_n"] == 1.0
    for row in result.details["itw_n_curve"] + result.details["itw_r_curve"]:
        assert row["input"] == 1.0 and row["feature"] == 1.0, row
    assert len(result.figures) == 2


def test_intertwined_classes_score_lower_in_input_space() -> None:
    # the same clusters with their means pulled together: neighbours of other classes appear
    def input_itw(separation: float) -> float:
        splits = mixture_splits(MixtureOptions(clusters=10, points=40, test_points=10,
                                               sigma=0.05, dim=5, labels=2,
                                               separation=separation, seed=5))
        ctx = make_context(random_net(5, 0, classes=2), splits["test"].x, splits["test"].y,
                           reference=(splits["train"].x, splits["train"].y))
        return run_metric(Intertwinedness(), ctx, n=10).details["input_itw_n"]

    assert input_itw(0.05) < input_itw(0.3) < input_itw(1.0)


def test_too_many_neighbours_is_a_param_error_and_params_are_checked() -> None:
    x, y, xr, yr = small_case()
    ctx = make_context(random_net(4, 0), x, y, reference=(xr, yr))
    with pytest.raises(ParamError, match="only 40") as info:
        run_metric(Intertwinedness(), ctx, n=41)
    assert info.value.key == "n"
    with pytest.raises(ParamError) as info:
        run_metric(Intertwinedness(), ctx, n=5, ns=[1, 100])
    assert info.value.key == "ns"
    result = run_metric(Intertwinedness(), ctx, n=5)  # the default curve stops at 40
    assert result.details["itw_n_curve"][-1]["n"] == 40
    for bad in ({"n": 0}, {"ns": [0, 1]}, {"radii": [0.5, 2.0]}, {"radii": [-1.0]},
                {"feature_radii": [1.0]}, {"radius_units": "pixels"},
                {"radius_units": "absolute", "radii": [1.0, 2.0], "feature_radii": [1.0]}):
        with pytest.raises(ValidationError):
            Intertwinedness.Params.model_validate(bad)


def test_knn_is_exact_for_data_far_from_the_origin() -> None:
    # ‖a‖² + ‖b‖² − 2a·b loses the small distances of points near (100, …, 100) in float32;
    # centring on the reference mean keeps the order of the float64 distances
    g = torch.Generator().manual_seed(6)
    r = 100.0 + 0.01 * torch.randn(200, 30, generator=g, dtype=torch.float64)
    q = 100.0 + 0.01 * torch.randn(20, 30, generator=g, dtype=torch.float64)
    _, index = knn(q.float(), r.float(), 5)
    expected = torch.cdist(q, r, compute_mode="donot_use_mm_for_euclid_dist").argsort(dim=1)
    assert torch.equal(index, expected[:, :5])


def test_reference_copies_of_audit_samples_are_counted() -> None:
    x, y, xr, yr = small_case()
    ctx = make_context(random_net(4, 0), x, y,
                       reference=(torch.cat([xr, x[:7]]), torch.cat([yr, y[:7]])))
    result = run_metric(Intertwinedness(), ctx, n=1, ns=[1])
    assert result.details["duplicates"] == 7
    assert result.details["leave_one_out"] is False


def test_default_curve_stops_at_the_papers_n_of_1000() -> None:
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(5, 2, generator=g), torch.randint(0, 2, (5,), generator=g)
    xr, yr = torch.randn(1200, 2, generator=g), torch.randint(0, 2, (1200,), generator=g)
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    result = run_metric(Intertwinedness(), make_context(model, x, y, reference=(xr, yr)), n=3)
    assert [row["n"] for row in result.details["itw_n_curve"]][-3:] == [200, 500, 1000]


def test_result_does_not_depend_on_the_batch_size(monkeypatch) -> None:
    """Random pairs for the radii are drawn once per check; the batch size only sets the
    chunks of the distance computations (with one row per batch entry: 7 and 64 split the
    splits and the pairs, 450 holds them)."""
    monkeypatch.setattr(
        "robaudit.plugins.metrics.deformation.intertwinedness.QUANTILE_PAIRS", 300)
    monkeypatch.setattr("robaudit.ops.neighbors.CHUNK_VALUES", 1)
    x, y, xr, yr = small_case()
    model = random_net(4, seed=2)
    results = [run_metric(Intertwinedness(),
                          make_context(model, x, y, reference=(xr, yr), batch_size=size), n=3)
               for size in (7, 64, 450)]
    for other in results[1:]:
        assert np.array_equal(other.samples, results[0].samples)
        assert other.details == results[0].details


def test_a_nearest_neighbour_tied_across_labels_is_left_out():
    """The reference holds one point twice, labelled 0 and 1: for an audit sample on it, its
    nearest (n = 1) is whichever copy comes first, so ITW_1 is the order's choice."""
    from robaudit.errors import MetricError

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(10, 3, generator=g) * 10
    ref[1] = ref[0]
    ref_y = torch.tensor([0, 1, 0, 1, 2, 0, 1, 2, 0, 1])
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    far = ref[2:] + 0.01  # each next to its own reference point
    for copies, code in ((1, None), (2, "error")):
        x = torch.cat([ref[:1].repeat(copies, 1), far[:4]])
        y = torch.cat([torch.zeros(copies, dtype=torch.long), ref_y[2:6]])
        ctx = make_context(model, x, y, reference=(ref, ref_y))
        if code == "error":
            with pytest.raises(MetricError, match=r"only 4 of 6 samples \(the others' 1-th"):
                run_metric(Intertwinedness(), ctx, n=1, ns=[1, 2])
            continue
        result = run_metric(Intertwinedness(), ctx, n=1, ns=[1, 2])
        assert result.details["ties"] == {"input": 1, "feature": 1}
        assert result.details["included"]["used"] == 4
        assert result.value == 1.0  # the four others sit on a point of their own label
