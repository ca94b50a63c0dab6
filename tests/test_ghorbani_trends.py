"""The trends of Ghorbani & Zou (2017) on small, fast versions of its experiments: training and
depth increase deformation (Figure 4, Appendix D); a more intertwined data set gives a lower
rank-order Spearman (Figure 5) and a larger FGSM output change (Figure 6).

Data: the gaussian_mixture source (Appendix E) as 1×8×8 images; models: the small 1- and 3-layer
CNNs of robaudit.zoo.ghorbani_cnn trained with the zoo recipe. Everything is seeded.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from robaudit.context import DataSplit
from robaudit.plugins.loaders.gaussian_mixture import MixtureOptions, mixture_splits
from robaudit.plugins.metrics.fgsm_output_change import FgsmOutputChange
from robaudit.plugins.metrics.intertwinedness import Intertwinedness
from robaudit.plugins.metrics.spearman import RankOrderSpearman
from robaudit.plugins.metrics.sphere_deformation import SphereDeformation
from robaudit.testing import make_context, run_metric
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
        return {
            "spearman": run_metric(RankOrderSpearman(), ctx, pairs=100, trials=300).value,
            "k": run_metric(SphereDeformation(), ctx, points=40, samples=50).value,
            "fgsm": run_metric(FgsmOutputChange(), ctx, clip=False).value,
            "itw_input": run_metric(Intertwinedness(), ctx, n=10, ns=[10],
                                    radii=[0.01]).details["input_itw_n"],
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


@pytest.mark.parametrize("key", ["spearman", "fgsm", "itw_input"])
def test_more_intertwined_data_means_lower_spearman_and_larger_fgsm_change(key: str) -> None:
    separations = (0.05, 0.3, 1.0)  # from intertwined to well separated
    trained = [before_after(3, s)[1][key] for s in separations]
    if key == "fgsm":  # the output moves more under FGSM as the data gets more intertwined
        assert trained[0] > trained[1] > trained[2]
    else:  # the data is less intertwined, and the trained map less deformed, as means separate
        assert trained[0] < trained[1] < trained[2]
