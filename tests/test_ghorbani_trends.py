"""The trends of Ghorbani & Zou (2017) on small, fast versions of its experiments: training and
depth increase deformation (Figure 4, Appendix D); a more intertwined data set gives a lower
rank-order Spearman (Figure 5) and a larger FGSM output change (Figure 6); the trained network's
feature space is less intertwined than the input space and than the untrained network's
(section 2, Figure 2), and more so for the deeper network (section 3).

Data: the gaussian_mixture source (Appendix E) as 1×8×8 images; models: the small 1- and 3-layer
CNNs of robaudit.zoo.ghorbani_cnn trained with the zoo recipe. Everything is seeded.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from robaudit.context import DataSplit
from robaudit.model import ModelUnderAudit
from robaudit.pluginmanager import load_plugins
from robaudit.plugins.loaders.gaussian_mixture import MixtureOptions, mixture_splits
from robaudit.plugins.metrics.deformation.fgsm_output_change import FgsmOutputChange
from robaudit.plugins.metrics.deformation.intertwinedness import Intertwinedness
from robaudit.plugins.metrics.deformation.spearman import RankOrderSpearman
from robaudit.plugins.metrics.deformation.sphere_deformation import SphereDeformation
from robaudit.spec import load_spec
from robaudit.testing import make_context, run_metric
from robaudit.zoo import ZOO
from robaudit.zoo.ghorbani_cnn import MIXTURE, RECIPE, SMALL, ghorbani_cnn
from robaudit.zoo.training import fit


@cache
def data(separation: float) -> dict[str, DataSplit]:
    return mixture_splits(MixtureOptions(**{**MIXTURE, "separation": separation}))


def metrics(model: torch.nn.Module, separation: float) -> dict[str, float]:
    splits = data(separation)
    test, train = splits["test"], splits["train"]
    ctx = make_context(model, test.x, test.y, reference=(train.x, train.y), batch_size=2048)
    try:
        itw = run_metric(Intertwinedness(), ctx, n=10, ns=[10], radii=[0.01])
        return {
            "spearman": run_metric(RankOrderSpearman(), ctx, pairs=100, trials=300).value,
            "k": run_metric(SphereDeformation(), ctx, points=40, samples=50).value,
            "fgsm": run_metric(FgsmOutputChange(), ctx, clip=False).value,
            "itw": itw.value,  # feature-space ITW_n, n = 10: the metric's value
            "itw_input": itw.details["input_itw_n"],
        }
    finally:
        ctx.model.__exit__(None, None, None)


@cache
def before_after(depth: int, separation: float) -> tuple[dict[str, float], dict[str, float]]:
    torch.manual_seed(0)
    model = ghorbani_cnn(depth, **SMALL)
    before = metrics(model, separation)
    splits = data(separation)
    fit(model, splits["train"].x, splits["train"].y, seed=0, **RECIPE)
    return before, metrics(model, separation)


def test_training_increases_deformation() -> None:
    before, after = before_after(3, MIXTURE["separation"])
    assert after["k"] > 1.5 * before["k"]
    assert after["spearman"] < before["spearman"] - 0.03


def test_deeper_network_deforms_more() -> None:
    _, shallow = before_after(1, MIXTURE["separation"])
    _, deep = before_after(3, MIXTURE["separation"])
    assert deep["k"] > 1.5 * shallow["k"]
    # section 3: the deeper network separates the classes better in its feature space
    assert deep["itw"] > shallow["itw"] + 0.02


@pytest.mark.parametrize("separation", [MIXTURE["separation"], 0.3])
def test_training_makes_the_feature_space_less_intertwined_than_the_input(
        separation: float) -> None:
    """Section 2, Figure 2: in the trained network's feature space more of a test sample's
    nearest training samples share its class than in the input space; section 2 ("g
    transforms a highly intertwined space ... to a less intertwined space"): training raises
    the feature-space ITW_n of the untrained network."""
    before, after = before_after(3, separation)
    assert after["itw"] > after["itw_input"] + 0.02
    assert after["itw"] > before["itw"] + 0.1


def test_separation_controls_the_data_intertwinedness() -> None:
    """A test of the data, not of a model: the mixture's separation (Appendix E) is the
    intertwinedness axis of Figures 5 and 6, so input-space ITW_n must rise with it; it does
    not depend on the network, trained or not."""
    separations = (0.05, 0.3, 1.0)
    runs = [before_after(3, s) for s in separations]
    assert all(before["itw_input"] == after["itw_input"] for before, after in runs)
    values = [after["itw_input"] for _, after in runs]
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize("key", ["spearman", "fgsm"])
def test_more_intertwined_data_means_lower_spearman_and_larger_fgsm_change(key: str) -> None:
    separations = (0.05, 0.3, 1.0)  # from intertwined to well separated
    trained = [before_after(3, s)[1][key] for s in separations]
    if key == "fgsm":  # the output moves more under FGSM as the data gets more intertwined
        assert trained[0] > trained[1] > trained[2]
    else:  # the trained map is less deformed as the means separate
        assert trained[0] < trained[1] < trained[2]


@pytest.mark.parametrize(("depth", "flat"), [(1, 64 * 2 * 2), (2, 128 * 2 * 2), (3, 256)])
def test_cnn_layout_follows_appendix_a_on_cifar_sized_inputs(depth: int, flat: int) -> None:
    model = ghorbani_cnn(depth, (3, 32, 32), 10)
    assert isinstance(model, nn.Sequential)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256][:depth]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    for index, layer in enumerate(model):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(model[index + 1], nn.BatchNorm2d)
            assert isinstance(model[index + 2], nn.ReLU)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(flat, 1024), (1024, 10)]
    mua = ModelUnderAudit(model)
    with mua:
        feats, logits = mua.features_and_logits(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 1024) and logits.shape == (2, 10)


def test_small_inputs_fit_and_zoo_entries_are_registered() -> None:
    for depth in (1, 2, 3):
        assert ghorbani_cnn(depth, (1, 5, 7), 3, 16, 0.25)(torch.rand(4, 1, 5, 7)).shape == (4, 3)
        assert f"ghorbani_cnn{depth}" in ZOO
    with pytest.raises(ValueError):
        ghorbani_cnn(4)


def test_shipped_spec_is_valid() -> None:
    spec = Path(__file__).parent.parent / "specs" / "ghorbani-cnn.yaml"
    loaded = load_spec(spec, load_plugins())
    assert {c.metric.name for c in loaded.checks} >= {
        "sphere_deformation", "intertwinedness", "fgsm_output_change", "rank_order_spearman"}
