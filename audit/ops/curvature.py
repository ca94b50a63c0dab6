"""Curvature of decision boundaries (Fawzi, Moosavi-Dezfooli, Frossard & Soatto, CVPR 2018,
section 3 "Curvature of the decision boundaries" and section 4, Algorithm 2).

At a boundary point z between the point's own class k̂ and the class j it crossed into,
F = f_j − f_k̂ (negative inside the own class), n = ∇F/‖∇F‖, P = I − n nᵀ and the shape operator
is G = P H_F P / ‖∇F‖. The normal curvature along a tangent v is κ(z, v) = vᵀ G v / ‖v‖²; the
principal curvatures are the d − 1 eigenvalues of G on the tangent space. With this orientation
a convex own-class region has positive curvature: a ball of radius ρ gives +1/ρ everywhere.

Hessian-vector products (all batched over points × directions, rows processed in chunks of
``chunk`` so that memory is bounded by the chunk, never by the number of points; the callers
below pass at most ``chunk`` rows of points × directions at once, never all directions × all
points):

- ``finite_difference``: H v ≈ (∇F(z + h v̂) − ∇F(z − h v̂)) / (2h) · ‖v‖, central differences
  of input gradients (exact for a quadratic F). The evaluation points are not clipped to the
  input box: curvature is a property of the function. The authors' step is
  :func:`default_step`, since a ReLU network's exact Hessian is zero almost everywhere.
- ``exact``: double backpropagation (∇ of ⟨∇F, v⟩).
- ``softplus``: ``exact`` on :func:`softplus_logits`, the network with every ReLU evaluated
  as Softplus(β).

Principal curvatures: :func:`principal_curvatures_dense` (the whole spectrum from d − 1 HVPs on an
orthonormal tangent basis, B × d × d numbers for B points: small d only) and
:func:`principal_curvatures_lanczos` (the ``k`` largest and smallest, batched Lanczos with full
re-orthogonalisation, on groups of points whose Krylov bases hold at most
:data:`KRYLOV_CHUNKS` × ``chunk`` vectors; large d); :func:`quadratic_forms` gives vᵀ G v for
given directions (the random-direction estimate of trace(G)/(d − 1), the ρ_i ratios of
section 3 and Algorithm 2), ``chunk`` // B directions of the B points at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as nnf
from torch.overrides import TorchFunctionMode

from robaudit.ops.lanczos import lanczos_extremes

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
HvpMethod = Literal["finite_difference", "exact", "softplus"]

#: Lanczos keeps every Krylov vector of every point it runs on: it runs on groups of points
#: whose bases hold at most this many × ``chunk`` vectors of dimension d.
KRYLOV_CHUNKS = 16


def default_step(dim: int, input_range: tuple[float, float]) -> float:
    """The authors' finite-difference step h = 10·√d·(max − min)/512 of the input box."""
    low, high = input_range
    return 10.0 * math.sqrt(dim) * (high - low) / 512.0


class _SoftplusMode(TorchFunctionMode):
    """Evaluates every ReLU call (module, functional, tensor method, in-place) as Softplus(β)."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta
        self.relus = {torch.relu, nnf.relu, torch.Tensor.relu}
        self.inplace = {torch.relu_, nnf.relu_, torch.Tensor.relu_}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        if func in self.relus and not kwargs.get("inplace", False):
            return nnf.softplus(args[0], beta=self.beta)
        if func in self.inplace or (func in self.relus and kwargs.get("inplace", False)):
            return args[0].copy_(nnf.softplus(args[0].clone(), beta=self.beta))
        return func(*args, **kwargs)


def softplus_logits(logits_fn: LogitsFn, beta: float) -> LogitsFn:
    """``logits_fn`` with every ReLU replaced by Softplus(β) = log(1 + e^{βx})/β (a smooth copy
    of the network sharing its weights; ReLU calls are intercepted with a torch function mode,
    so functional ``torch.relu`` in a ``forward`` is caught as well as ``nn.ReLU``). Other
    piecewise-linear operations (max-pool) stay as they are."""
    if beta <= 0:
        raise ValueError("softplus needs β > 0")

    def smooth(x: torch.Tensor) -> torch.Tensor:
        with _SoftplusMode(beta):
            return logits_fn(x)

    return smooth


def margin_gradient(logits_fn: LogitsFn, z: torch.Tensor, target: torch.Tensor,
                    own: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """∇F(z) for F = f_target − f_own, row by row: (B, d) flattened."""
    with torch.enable_grad():
        zz = z if z.requires_grad else z.detach().requires_grad_(True)
        logits = logits_fn(zz)
        margin = logits.gather(1, target[:, None]) - logits.gather(1, own[:, None])
        (grad,) = torch.autograd.grad(margin.sum(), zz, create_graph=create_graph)
    return grad.flatten(1)


@dataclass
class MarginHessian:
    """H_F and ∇F of F = f_target − f_own at a batch of B points ``z`` (any input shape).

    ``method`` is ``finite_difference`` (step ``h``) or ``exact`` (double backpropagation);
    for ``softplus`` pass :func:`softplus_logits` as ``logits_fn`` with ``exact``. ``chunk``
    bounds the rows (points × directions) sent through the network at once (twice as many
    inputs with finite differences). ``known_gradient``: ∇F at ``z`` when already known
    (else computed).
    """

    logits_fn: LogitsFn
    z: torch.Tensor
    target: torch.Tensor
    own: torch.Tensor
    method: Literal["finite_difference", "exact"] = "finite_difference"
    h: float = 1e-2
    chunk: int = 256
    known_gradient: InitVar[torch.Tensor | None] = None
    gradient: torch.Tensor = field(init=False)

    def __post_init__(self, known_gradient: torch.Tensor | None) -> None:
        if self.method not in ("finite_difference", "exact"):
            raise ValueError(f"unknown HVP method {self.method!r}")
        if self.h <= 0:
            raise ValueError("the finite-difference step h must be positive")
        if self.chunk < 1:
            raise ValueError("the chunk of HVP rows must be at least 1")
        self.z = self.z.detach()
        self.gradient = (margin_gradient(self.logits_fn, self.z, self.target, self.own)
                         if known_gradient is None else known_gradient)
        self.grad_norm = self.gradient.norm(dim=1)
        self.normal = self.gradient / self.grad_norm.clamp_min(1e-30)[:, None]

    @property
    def dim(self) -> int:
        return int(self.gradient.shape[1])

    @property
    def points(self) -> int:
        return int(self.gradient.shape[0])

    def rows(self, sl: slice) -> MarginHessian:
        """The operator of the points ``sl`` only (∇F reused, not recomputed)."""
        return replace(self, z=self.z[sl], target=self.target[sl], own=self.own[sl],
                       known_gradient=self.gradient[sl])

    def direction_chunk(self) -> int:
        """Directions per point in one call of :meth:`hvp` whose B × m rows stay within
        ``chunk`` (at least one)."""
        return max(1, self.chunk // max(1, self.points))

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """P v for v of shape (B, m, d): the component tangent to the boundary."""
        return v - self.normal[:, None, :] * (v * self.normal[:, None, :]).sum(-1, keepdim=True)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H_F(z_b) v_bm for v of shape (B, m, d); returns (B, m, d)."""
        b, m, d = v.shape
        rows = v.reshape(b * m, d)
        index = torch.arange(b, device=v.device).repeat_interleave(m)
        out = torch.empty_like(rows)
        for start in range(0, b * m, self.chunk):
            sl = slice(start, start + self.chunk)
            out[sl] = self._rows(index[sl], rows[sl])
        return out.reshape(b, m, d)

    def shape_operator(self, v: torch.Tensor) -> torch.Tensor:
        """G v = P H P v / ‖∇F‖ for v of shape (B, m, d)."""
        return self.project(self.hvp(self.project(v))) / self.grad_norm.clamp_min(1e-30)[
            :, None, None]

    def _rows(self, index: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        shape = self.z.shape[1:]
        z = self.z[index]
        target, own = self.target[index], self.own[index]
        if self.method == "exact":
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                grad = margin_gradient(self.logits_fn, zz, target, own, create_graph=True)
                if not grad.requires_grad:  # the graph of ∇F does not depend on z: H = 0
                    return torch.zeros_like(v)
                (hv,) = torch.autograd.grad((grad * v).sum(), zz, allow_unused=True)
            return torch.zeros_like(v) if hv is None else hv.flatten(1).detach()
        length = v.norm(dim=1, keepdim=True)
        unit = v / length.clamp_min(1e-30)
        step = (self.h * unit).view(-1, *shape)
        both = torch.cat([z + step, z - step])
        grads = margin_gradient(self.logits_fn, both, target.repeat(2), own.repeat(2))
        plus, minus = grads.chunk(2)
        return (plus - minus) / (2 * self.h) * length


def tangent_basis(normal: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of each normal's orthogonal complement, (B, d, d − 1): the columns
    2..d of the Householder reflection that maps n to e₁ (or −e₁, whichever is stabler)."""
    b, d = normal.shape
    e1 = torch.zeros_like(normal)
    e1[:, 0] = 1.0
    sign = torch.where(normal[:, :1] >= 0, 1.0, -1.0).to(normal.dtype)
    u = normal + sign * e1
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    eye = torch.eye(d, dtype=normal.dtype, device=normal.device).expand(b, d, d)
    reflection = eye - 2 * u[:, :, None] * u[:, None, :]
    return reflection[:, :, 1:]


@dataclass(frozen=True)
class Curvatures:
    """Principal curvatures of B points: ``values`` (B, q) ascending, ``vectors`` (B, d, q) the
    unit principal directions (columns), ``hvps`` the HVPs it took per point."""

    values: torch.Tensor
    vectors: torch.Tensor
    hvps: int


def principal_curvatures_dense(op: MarginHessian) -> Curvatures:
    """All d − 1 principal curvatures: eigenvalues of Qᵀ H Q / ‖∇F‖ with Q an orthonormal tangent
    basis (d − 1 HVPs per point, sent ``chunk`` rows at a time); the finite-difference matrix
    is symmetrised first. Holds B × d × d numbers (Q, H Q and the directions), so the callers
    take it only for small d (``dense_max``, 256 by default)."""
    q = tangent_basis(op.normal)
    hq = op.hvp(q.transpose(1, 2))  # (B, d−1, d): rows H q_i
    small = q.transpose(1, 2) @ hq.transpose(1, 2)
    small = (small + small.transpose(1, 2)) / 2 / op.grad_norm.clamp_min(1e-30)[:, None, None]
    values, vectors = torch.linalg.eigh(small)
    return Curvatures(values, q @ vectors, op.dim - 1)


def principal_curvatures_lanczos(op: MarginHessian, k: int, start: torch.Tensor,
                                 iterations: int | None = None) -> Curvatures:
    """The ``k`` smallest and ``k`` largest principal curvatures (2k values, ascending) by
    batched Lanczos on G restricted to the tangent space, from the common ``start`` vector (d,)
    projected on each point's tangent space. ``iterations`` defaults to min(d − 1, 2k + 40).
    Each point keeps its ``iterations`` Krylov vectors, so Lanczos runs on groups of at most
    :data:`KRYLOV_CHUNKS` × ``chunk`` / ``iterations`` points (at least one, at most B): each
    step sends one HVP row per point of the group."""
    steps = min(op.dim - 1, iterations or 2 * k + 40)
    group = max(1, KRYLOV_CHUNKS * op.chunk // steps)
    parts = [_lanczos(op.rows(slice(s, s + group)), k, start, steps)
             for s in range(0, max(1, op.points), group)]
    return Curvatures(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                      steps)


def _lanczos(op: MarginHessian, k: int, start: torch.Tensor, steps: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values and vectors of :func:`principal_curvatures_lanczos` at all points of ``op``."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        return op.shape_operator(v[:, None, :])[:, 0, :]

    first = op.project(start.to(op.gradient)[None, None, :].expand(op.points, 1, -1))[:, 0]
    return lanczos_extremes(apply, first, k, steps, project=lambda v: op.project(
        v[:, None, :])[:, 0])


def quadratic_forms(op: MarginHessian, directions: torch.Tensor, *, unit: bool = False
                    ) -> torch.Tensor:
    """(P v)ᵀ H (P v) / ‖∇F‖ for each point and each direction: (B, m) from directions (B, m, d)
    or (m, d) shared by all points; with ``unit``, P v is first made a unit vector. With unit
    directions uniform on the sphere its mean is trace(G)/d; with unit *tangent* directions,
    trace(G)/(d − 1) (the mean curvature). The directions are projected and sent through the
    HVPs :meth:`MarginHessian.direction_chunk` at a time, so at most ``chunk`` rows of
    points × directions are held at once."""
    shared = directions.dim() == 2
    m = directions.shape[-2]
    forms = torch.empty(op.points, m, dtype=op.gradient.dtype, device=op.gradient.device)
    step = op.direction_chunk()
    for s in range(0, m, step):
        v = directions[..., s:s + step, :].to(op.gradient)
        w = op.project(v[None].expand(op.points, -1, -1) if shared else v)
        if unit:
            w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        forms[:, s:s + step] = (w * op.hvp(w)).sum(-1)
    return forms / op.grad_norm.clamp_min(1e-30)[:, None]


def mean_curvature(op: MarginHessian, gaussian: torch.Tensor) -> torch.Tensor:
    """The random-direction estimate of the mean curvature trace(G)/(d − 1) at each point (B,):
    the mean of vᵀ G v over the tangent unit vectors v made from ``gaussian`` (m, d) (projected
    on each point's tangent space and normalised: uniform on its unit sphere)."""
    return quadratic_forms(op, gaussian, unit=True).mean(dim=1)
