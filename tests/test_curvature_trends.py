"""The trends of Fawzi et al. (2018, section 3) that reproduce on the shipped digits ResNet
(docs/fawzi/digits.md, bench/reproduce_fawzi.py), on fewer points so the file stays fast."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT

from robaudit.context import AuditContext
from robaudit.plugins.loaders.data import digits_splits
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.curvature.curvature_ratio import CurvatureRatio
from robaudit.plugins.metrics.curvature.curvature_subspace_vulnerability import (
    CurvatureSubspaceVulnerability,
)
from robaudit.testing import make_context, run_metric
from robaudit.zoo import digits_resnet

FIT = {"fit": 40, "directions": 20}


@pytest.fixture(scope="module")
def ctx() -> AuditContext:
    torch.set_num_threads(1)
    model = digits_resnet()
    model.load_state_dict(torch.load(ROOT / "specs/models/digits_resnet.pt", weights_only=True))
    splits = digits_splits()
    return make_context(model, splits["test"].x, splits["test"].y,
                        reference=(splits["train"].x, splits["train"].y))


def test_the_boundary_near_the_data_is_concave_on_average_at_the_authors_step(ctx) -> None:
    result = run_metric(BoundaryCurvature(), ctx, points=60, k=5)
    assert result.value < 0
    assert result.details["negative_fraction"] > 0.6
    # a few large curvatures at each end, most near 0: the averaged spectrum's extremes are
    # several times the mean curvature's size, negative ones larger than positive ones
    low, high = result.details["smallest_curvatures"], result.details["largest_curvatures"]
    assert -low[0] > high[-1] > 10 * abs(result.value)


def test_curvature_is_shared_along_a_few_directions_and_noise_there_misclassifies_more(ctx
                                                                                      ) -> None:
    ratio = run_metric(CurvatureRatio(), ctx, points=40, subspace=20, samples=32, **FIT)
    rho = ratio.details["rho"]
    assert ratio.value > 2.5 and rho[0] > 2 * rho[-1]
    vul = run_metric(CurvatureSubspaceVulnerability(), ctx, subspace=8, points=450, **FIT)
    at = {row["noise"]: row for row in vul.details["misclassification"]}
    assert at[0.3]["in_S"] > 3 * at[0.3]["in_S_perp"]
    table = {row["perturbation"]: row["projection_on_S"]
             for row in vul.details["projection_table"]}
    assert table["adversarial (DeepFool r(x))"] > table["random"] + 0.1
