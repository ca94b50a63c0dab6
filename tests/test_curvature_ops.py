"""Curvature numerics of ``robaudit.ops.curvature`` / ``robaudit.ops.lanczos`` against closed
forms (a ball, a linear classifier, a quadratic F) and numpy's dense eigendecomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic_models import Ball
from torch import nn

from robaudit.ops.curvature import (
    MarginHessian,
    default_step,
    mean_curvature,
    principal_curvatures_dense,
    principal_curvatures_lanczos,
    quadratic_forms,
    softplus_logits,
    tangent_basis,
)
from robaudit.ops.lanczos import lanczos_extremes


class Quadratic(nn.Module):
    """f = (0, ½xᵀAx + bᵀx + c): F = f₁ − f₀ is the quadratic."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, c: float) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        f1 = 0.5 * ((x @ self.a) * x).sum(1) + x @ self.b + self.c
        return torch.stack([torch.zeros_like(f1), f1], dim=1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sphere_points(n: int, d: int, centre: torch.Tensor, radius: float) -> torch.Tensor:
    g = torch.randn(n, d, generator=gen(3), dtype=torch.float64)
    return centre + radius * g / g.norm(dim=1, keepdim=True)


def op_for(model: nn.Module, z: torch.Tensor, method: str, h: float = 1e-3, chunk: int = 256
           ) -> MarginHessian:
    n = z.shape[0]
    return MarginHessian(model, z, torch.ones(n, dtype=torch.long),
                         torch.zeros(n, dtype=torch.long), method=method, h=h, chunk=chunk)


@pytest.mark.parametrize("method", ["finite_difference", "exact"])
def test_every_principal_curvature_of_a_ball_is_one_over_its_radius(method: str) -> None:
    d, radius = 12, 2.5
    centre = torch.randn(d, generator=gen(1), dtype=torch.float64)
    z = sphere_points(7, d, centre, radius)
    op = op_for(Ball(centre, radius), z, method, h=1e-4)
    curv = principal_curvatures_dense(op)
    assert curv.values.shape == (7, d - 1)
    np.testing.assert_allclose(curv.values.numpy(), 1 / radius, rtol=1e-6)
    # The principal directions are tangent: orthogonal to the radius.
    radial = (z - centre) / radius
    assert float((radial[:, None, :] @ curv.vectors).abs().max()) < 1e-8
    np.testing.assert_allclose(mean_curvature(op, torch.randn(5, d, generator=gen(2),
                                                             dtype=torch.float64)).numpy(),
                               1 / radius, rtol=1e-6)


def test_a_linear_classifier_has_zero_curvature() -> None:
    torch.manual_seed(0)
    model = nn.Linear(9, 4).double()
    z = torch.randn(6, 9, generator=gen(4), dtype=torch.float64)
    for method in ("finite_difference", "exact"):
        op = MarginHessian(model, z, torch.tensor([1, 2, 3, 0, 1, 2]),
                           torch.tensor([0, 0, 1, 2, 3, 3]), method=method, h=0.3)
        assert float(principal_curvatures_dense(op).values.abs().max()) < 1e-10


def quadratic_case(d: int, seed: int = 5) -> tuple[Quadratic, torch.Tensor, np.ndarray]:
    g = gen(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = (m + m.T) / 2
    b = torch.randn(d, generator=g, dtype=torch.float64)
    z = torch.randn(5, d, generator=g, dtype=torch.float64)
    return Quadratic(a, b, 0.0), z, a.numpy()


def numpy_shape_operator(a: np.ndarray, b: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per point (a plain loop): the d − 1 tangent eigenvalues of PAP/‖∇F‖."""
    out = []
    for point in z:
        grad = a @ point + b
        n = grad / np.linalg.norm(grad)
        p = np.eye(len(n)) - np.outer(n, n)
        values, vectors = np.linalg.eigh(p @ a @ p / np.linalg.norm(grad))
        # drop the eigenvalue of the normal direction (PAP n = 0)
        normal_index = int(np.argmax(np.abs(vectors.T @ n)))
        out.append(np.delete(values, normal_index))
    return np.array(out)


@pytest.mark.parametrize("method", ["finite_difference", "exact"])
def test_principal_curvatures_of_a_quadratic_are_the_eigenvalues_of_pap(method: str) -> None:
    model, z, a = quadratic_case(10)
    expected = numpy_shape_operator(a, model.b.numpy(), z.numpy())
    op = op_for(model, z, method, h=0.7)  # central differences are exact on a quadratic
    np.testing.assert_allclose(principal_curvatures_dense(op).values.numpy(), expected,
                               atol=1e-9)


@pytest.mark.parametrize("d", [40, 256])
def test_lanczos_extremes_equal_dense_eigh(d: int) -> None:
    model, z, _ = quadratic_case(d, seed=d)
    k = 5
    op = op_for(model, z[:3], "exact")
    dense = principal_curvatures_dense(op)
    start = torch.randn(d, generator=gen(9), dtype=torch.float64)
    lanczos = principal_curvatures_lanczos(op, k, start, iterations=min(d - 1, 120))
    want = torch.cat([dense.values[:, :k], dense.values[:, -k:]], dim=1)
    np.testing.assert_allclose(lanczos.values.numpy(), want.numpy(), rtol=1e-7, atol=1e-9)
    # Ritz vectors: the same directions up to sign (the extreme eigenvalues are simple here).
    want_vectors = torch.cat([dense.vectors[:, :, :k], dense.vectors[:, :, -k:]], dim=2)
    overlap = (lanczos.vectors * want_vectors).sum(1).abs()
    np.testing.assert_allclose(overlap.numpy(), 1.0, atol=1e-6)


def test_lanczos_with_as_many_steps_as_dimensions_is_exact_and_survives_breakdown() -> None:
    """A rank-2 operator exhausts its Krylov space after 3 steps: the restart keeps T exact."""
    d = 8
    u = torch.linalg.qr(torch.randn(d, 2, generator=gen(6), dtype=torch.float64))[0]
    mat = 3.0 * u[:, :1] @ u[:, :1].T - 2.0 * u[:, 1:] @ u[:, 1:].T
    start = torch.randn(2, d, generator=gen(7), dtype=torch.float64)
    values, vectors = lanczos_extremes(lambda v: v @ mat, start, 2, d)
    np.testing.assert_allclose(values.numpy(), [[-2, 0, 0, 3]] * 2, atol=1e-10)
    assert vectors.shape == (2, d, 4)


def test_tangent_basis_is_orthonormal_and_orthogonal_to_the_normal() -> None:
    n = torch.randn(4, 6, generator=gen(8), dtype=torch.float64)
    n[1] = -n[1].abs()  # a negative first coordinate takes the other reflection
    n = n / n.norm(dim=1, keepdim=True)
    q = tangent_basis(n)
    eye = torch.eye(5, dtype=torch.float64).expand(4, 5, 5)
    torch.testing.assert_close(q.transpose(1, 2) @ q, eye)
    assert float((n[:, None, :] @ q).abs().max()) < 1e-12


def test_hvps_do_not_depend_on_the_chunk_size() -> None:
    model, z, _ = quadratic_case(12)
    ball = Ball(torch.zeros(12, dtype=torch.float64), 1.0)
    v = torch.randn(5, 6, 12, generator=gen(10), dtype=torch.float64)
    for m in (model, ball):
        whole = op_for(m, z, "finite_difference", h=1e-3, chunk=1000).hvp(v)
        pieces = op_for(m, z, "finite_difference", h=1e-3, chunk=7).hvp(v)
        torch.testing.assert_close(whole, pieces)
    forms = quadratic_forms(op_for(ball, z, "exact"), v[0])
    assert forms.shape == (5, 6)


def test_default_step_is_the_authors_rule() -> None:
    assert default_step(3072, (0.0, 1.0)) == pytest.approx(10 * np.sqrt(3072) / 512)
    assert default_step(64, (0.0, 255.0)) == pytest.approx(10 * 8 * 255 / 512)


def test_softplus_replaces_every_relu_and_is_smooth() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(5, 7), nn.Linear(7, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)) + self.act(self.a(x)) + (2 * self.a(x)).relu_())

    torch.manual_seed(0)
    net = Net().double()
    x = torch.randn(4, 5, generator=gen(11), dtype=torch.float64)
    beta = 3.0
    soft = softplus_logits(net, beta)
    sp = torch.nn.functional.softplus(net.a(x), beta=beta)
    sp2 = torch.nn.functional.softplus(2 * net.a(x), beta=beta)
    torch.testing.assert_close(soft(x), net.b(2 * sp + sp2))
    relu_op = op_for(net, x, "exact")
    soft_op = op_for(soft, x, "exact")
    v = torch.randn(4, 2, 5, generator=gen(12), dtype=torch.float64)
    assert float(relu_op.hvp(v).abs().max()) == 0.0
    assert float(soft_op.hvp(v).abs().max()) > 1e-3
    with pytest.raises(ValueError):
        softplus_logits(net, 0.0)


def test_a_restart_after_breakdown_does_not_depend_on_the_batch() -> None:
    """Two rows break down at the same step; the first coordinate vector lies in row 0's
    Krylov space but not in row 1's. Each row's Ritz pairs are those it gets alone."""
    d = 6
    eye = torch.eye(d, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(d, 2, generator=gen(11), dtype=torch.float64))[0]
    mats = torch.stack([3.0 * eye[:, :1] @ eye[:1] - 2.0 * eye[:, 1:2] @ eye[1:2],
                        3.0 * u[:, :1] @ u[:, :1].T - 2.0 * u[:, 1:] @ u[:, 1:].T])
    start = torch.stack([eye[0] + eye[1], u[:, 0] + u[:, 1]])

    def run(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return lanczos_extremes(lambda v: torch.einsum("bij,bj->bi", mats[rows], v),
                                start[rows], 2, d)

    values, vectors = run([0, 1])
    for row in (0, 1):
        alone_values, alone_vectors = run([row])
        torch.testing.assert_close(values[row], alone_values[0])
        torch.testing.assert_close(vectors[row], alone_vectors[0])
