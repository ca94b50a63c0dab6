"""Batched Lanczos for the extreme eigenpairs of B symmetric operators at once.

The textbook three-term recurrence (Golub & Van Loan, Matrix Computations, §10.1) with full
re-orthogonalisation against every previous Lanczos vector (twice, "twice is enough"), so the
Ritz values of the extreme eigenvalues are accurate to working precision once the Krylov space
holds them; with ``steps`` = the dimension of the space it is an exact eigendecomposition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]


def lanczos_extremes(
    apply: Operator,
    start: torch.Tensor,
    k: int,
    steps: int,
    project: Operator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest and ``k`` largest Ritz pairs of B operators.

    apply    maps (B, d) to (B, d): one matrix-vector product per row's own operator.
    start    (B, d) start vectors (nonzero).
    steps    Lanczos steps (Krylov dimension), at least 1.
    project  optional map onto the invariant subspace the operator lives on (e.g. a tangent
             space); applied to restart vectors after a breakdown.

    Returns values (B, 2k) ascending (fewer when steps < 2k: all ``steps`` values) and the unit
    Ritz vectors (B, d, 2k). A row whose Krylov space is exhausted early (β ≈ 0) restarts from a
    vector orthogonal to its previous ones, so T stays block tridiagonal and exact.
    """
    b, d = start.shape
    basis = torch.zeros(b, steps, d, dtype=start.dtype, device=start.device)
    alpha = torch.zeros(b, steps, dtype=start.dtype, device=start.device)
    beta = torch.zeros(b, steps, dtype=start.dtype, device=start.device)
    q = start / start.norm(dim=1, keepdim=True).clamp_min(1e-30)
    scale = torch.zeros(b, dtype=start.dtype, device=start.device)
    for i in range(steps):
        basis[:, i] = q
        w = apply(q)
        alpha[:, i] = (w * q).sum(1)
        w = _orthogonalise(w, basis[:, : i + 1])
        if i + 1 == steps:
            break
        norm = w.norm(dim=1)
        scale = torch.maximum(scale, alpha[:, i].abs() + norm)
        broken = norm <= 1e-10 * scale.clamp_min(1e-30)
        beta[:, i] = torch.where(broken, torch.zeros_like(norm), norm)
        if bool(broken.any()):
            fresh = _restart_vectors(basis[:, : i + 1], i, project)
            w = torch.where(broken[:, None], fresh, w)
            norm = w.norm(dim=1)
        q = w / norm[:, None].clamp_min(1e-30)
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(
        beta[:, :-1], -1)
    values, vectors = torch.linalg.eigh(tri)
    if steps > 2 * k:
        keep = torch.cat([torch.arange(k), torch.arange(steps - k, steps)]).to(values.device)
        values, vectors = values[:, keep], vectors[:, :, keep]
    ritz = basis.transpose(1, 2) @ vectors
    return values, ritz


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w (B, d) minus its components on each row's basis (B, s, d), applied twice."""
    for _ in range(2):
        w = w - torch.einsum("bs,bsd->bd", torch.einsum("bsd,bd->bs", basis, w), basis)
    return w


def _restart_vectors(basis: torch.Tensor, step: int, project: Operator | None) -> torch.Tensor:
    """A vector orthogonal to each row's basis: deterministic coordinate vectors tried in turn,
    each row taking the first that leaves it a nonzero component (no random numbers, and no
    row's choice depends on the others', so a restart does not depend on the batch); zero for
    a row whose space is exhausted."""
    b, _, d = basis.shape
    chosen = torch.zeros(b, d, dtype=basis.dtype, device=basis.device)
    found = torch.zeros(b, dtype=torch.bool, device=basis.device)
    for offset in range(d):
        e = torch.zeros(b, d, dtype=basis.dtype, device=basis.device)
        e[:, (step + offset) % d] = 1.0
        if project is not None:
            e = project(e)
        e = _orthogonalise(e, basis)
        usable = ~found & (e.norm(dim=1) > 1e-6)
        chosen = torch.where(usable[:, None], e, chosen)
        found |= usable
        if bool(found.all()):
            break
    return chosen
