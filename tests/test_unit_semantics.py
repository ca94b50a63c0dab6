"""``unit_semantics`` on class-indicator features (purity 1), with shuffled labels (chance,
against an independent numpy estimate), and its image grids."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.errors import ParamError
from robaudit.figures import ImageGrid
from robaudit.plotting import render_png
from robaudit.plugins.metrics.semantics.unit_semantics import UnitSemantics
from robaudit.testing import make_context, run_metric

CLASSES = 6


def indicator_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs 1×4×4 whose first CLASSES pixels are the one-hot label (times a random scale in
    [1, 2]) plus small noise: with g(x) = x, unit i is a class-i indicator."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = 0.05 * torch.rand(n, 16, generator=gen, dtype=torch.float64)
    x[torch.arange(n), y] += 1 + torch.rand(n, generator=gen, dtype=torch.float64)
    return x.view(n, 1, 4, 4), y


def model() -> nn.Module:
    """g(x) = the flattened input (the input of the last nn.Linear)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, CLASSES)).double()


def test_class_indicator_units_have_purity_one_and_noise_units_do_not() -> None:
    x, y = indicator_data(300, seed=1)
    ctx = make_context(model(), x, y)
    result = run_metric(UnitSemantics(), ctx, units=16, top=20)  # every unit
    rows = [r for r in result.details["directions"] if r["direction"].startswith("unit ")]
    assert sorted(int(r["direction"].split()[1]) for r in rows) == list(range(16))
    for row in rows:
        unit = int(row["direction"].split()[1])
        if unit < CLASSES:
            assert row["purity"] == 1.0 and row["label"] == unit
        else:  # a noise pixel
            assert row["purity"] < 0.6


def test_only_indicator_units_give_value_one() -> None:
    x, y = indicator_data(300, seed=2)
    x = x.view(300, 16)[:, :CLASSES].reshape(300, 1, 2, 3).contiguous()  # no noise units
    net = nn.Sequential(nn.Flatten(), nn.Linear(CLASSES, CLASSES)).double()
    result = run_metric(UnitSemantics(), make_context(net, x, y), units=CLASSES, top=20)
    assert result.value == 1.0
    # a random direction's top images are those of the class with its largest coordinate
    assert result.details["random_purity"] > 0.9


def test_shuffled_labels_give_chance_purity() -> None:
    x, y = indicator_data(600, seed=3)
    y = y[torch.randperm(600, generator=torch.Generator().manual_seed(4))]
    units, top = 16, 10
    result = run_metric(UnitSemantics(), make_context(model(), x, y), units=units, top=top)
    rng = np.random.default_rng(0)
    labels = y.numpy()
    draws = [np.bincount(labels[rng.choice(600, top, replace=False)]).max() / top
             for _ in range(20_000)]
    chance, spread = float(np.mean(draws)), float(np.std(draws))
    assert abs(result.value - chance) < 4 * spread / np.sqrt(units)
    assert abs(result.details["random_purity"] - chance) < 4 * spread / np.sqrt(units)
    assert abs(result.details["chance_purity"] - chance) < 4 * spread / np.sqrt(200)


def test_results_do_not_depend_on_the_batch_size() -> None:
    x, y = indicator_data(120, seed=5)
    results = [run_metric(UnitSemantics(), make_context(model(), x, y, batch_size=size),
                          units=8, top=6) for size in (7, 256)]
    assert results[0].value == results[1].value
    assert results[0].details == results[1].details


def test_image_grids_show_the_top_images_and_render() -> None:
    x, y = indicator_data(90, seed=6)
    result = run_metric(UnitSemantics(), make_context(model(), x, y), units=5, top=7, shown=3)
    grids = [f for f in result.figures if isinstance(f, ImageGrid)]
    assert len(grids) == 2
    unit_rows = [r for r in result.details["directions"] if r["direction"].startswith("unit")]
    for grid in grids:
        assert grid.images.shape == (3, 7, 1, 4, 4)
        assert len(grid.row_labels) == 3 and len(grid.captions[0]) == 7
        assert base64.b64decode(render_png(grid))[:4] == b"\x89PNG"
    # the first row of the unit grid holds the images with the largest value of that unit
    unit = int(unit_rows[0]["direction"].split()[1])
    flat = x.view(90, 16)[:, unit]
    expected = flat.topk(7).indices
    np.testing.assert_array_equal(grids[0].images[0], x[expected].numpy())


def test_units_or_top_beyond_the_data_are_param_errors() -> None:
    x, y = indicator_data(50, seed=7)
    ctx = make_context(model(), x, y)
    with pytest.raises(ParamError) as info:
        run_metric(UnitSemantics(), ctx, units=17)
    assert info.value.key == "units"
    with pytest.raises(ParamError) as info:
        run_metric(UnitSemantics(), ctx, top=51)
    assert info.value.key == "top"


def test_a_unit_whose_top_set_ties_across_labels_is_left_out():
    """Unit 0 is positive on one sample only: its top 3 hold that sample and two of the
    zeros, chosen by index among samples of both labels; unit 1 ranks every sample."""
    from robaudit.errors import MetricError

    n = 12
    x = torch.zeros(n, 2)
    x[0, 0] = 1.0
    x[:, 1] = torch.linspace(0, 1, n)
    y = (torch.arange(n) >= n // 2).long()
    model = nn.Sequential(nn.ReLU(), nn.Linear(2, 2))
    ctx = make_context(model, x, y)
    with pytest.raises(MetricError, match=r"only 1 of 2 unit directions \(the others tie at"):
        run_metric(UnitSemantics(), ctx, units=2, top=3)
    result = run_metric(UnitSemantics(), ctx, units=2, top=3, min_included=0.5)
    assert result.value == 1.0  # unit 1's top 3 are the last three samples, label 1
    tied = {row["direction"]: row["tied"] for row in result.details["directions"]}
    assert tied["unit 0"] and not tied["unit 1"]
