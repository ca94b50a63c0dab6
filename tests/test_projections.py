"""ℓp norms and ball projections against numpy loops and the projection's optimality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robaudit.ops.projections import lp_norm, project_lp


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_lp_norm_matches_a_numpy_loop(batch: torch.Tensor) -> None:
    l2 = [np.sqrt((v.numpy() ** 2).sum()) for v in batch]
    linf = [np.abs(v.numpy()).max() for v in batch]
    np.testing.assert_allclose(lp_norm(batch, "l2").numpy(), l2, rtol=1e-12)
    np.testing.assert_allclose(lp_norm(batch, "linf").numpy(), linf, rtol=1e-12)
    single = batch[0]
    assert float(lp_norm(single, "l2", batched=False)) == pytest.approx(l2[0], rel=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_lands_in_the_ball_and_is_idempotent(batch: torch.Tensor, norm: str) -> None:
    eps = 1.5
    projected = project_lp(batch, eps, norm)
    assert torch.all(lp_norm(projected, norm) <= eps * (1 + 1e-12))
    torch.testing.assert_close(project_lp(projected, eps, norm), projected)


def test_l2_projection_rescales_only_outside_points(batch: torch.Tensor) -> None:
    norms = lp_norm(batch, "l2")
    eps = float(norms.median())
    projected = project_lp(batch, eps, "l2")
    inside = norms <= eps
    torch.testing.assert_close(projected[inside], batch[inside])
    out_norms = lp_norm(projected[~inside], "l2")
    torch.testing.assert_close(out_norms, torch.full_like(out_norms, eps))
    cosine = torch.nn.functional.cosine_similarity(
        projected[~inside].flatten(1), batch[~inside].flatten(1)
    )
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_linf_projection_is_the_clip(batch: torch.Tensor) -> None:
    torch.testing.assert_close(project_lp(batch, 0.3, "linf"), batch.clamp(-0.3, 0.3))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_is_the_nearest_point_of_the_ball(norm: str) -> None:
    """No random point of the ball is closer to v than its projection (Euclidean projection)."""
    gen = torch.Generator().manual_seed(1)
    v = 3 * torch.randn(1, 8, generator=gen, dtype=torch.float64)
    eps = 1.0
    p = project_lp(v, eps, norm)
    candidates = project_lp(2 * torch.rand(5000, 8, generator=gen, dtype=torch.float64) - 1,
                            eps, norm)
    assert float((v - p).norm()) <= float((v - candidates).norm(dim=1).min())


def test_per_sample_radii_and_a_single_perturbation() -> None:
    v = torch.ones(3, 4, dtype=torch.float64)
    radii = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    np.testing.assert_allclose(lp_norm(project_lp(v, radii, "l2"), "l2").numpy(), [0.5, 1, 2])
    # One (C, H, W) perturbation: the norm is taken over all of its entries, not per channel.
    single = torch.ones(3, 2, 2, dtype=torch.float64)
    projected = project_lp(single, 1.0, "l2", batched=False)
    assert float(projected.norm()) == pytest.approx(1.0)
    torch.testing.assert_close(projected, single / np.sqrt(12))
