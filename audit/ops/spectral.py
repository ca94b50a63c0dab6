"""Spectral norms of linear layers: the Fourier formula for convolutions, power iteration.

Szegedy et al. (2014), section 4.3, bound the Lipschitz constant of a network by the product of
the operator norms (largest singular values) of its layers, and give the norm of a strided
convolution in closed form through Parseval's formula, their equation (1)::

    ‖W‖ = sup_ξ ‖A(ξ)‖,   A(ξ) the D × (C·Δ²) matrix of the kernels' 2-D Fourier transforms at
                           the Δ² frequencies ξ + l·N/Δ that stride Δ aliases onto ξ.

:func:`strided_circular_conv_norm` evaluates (1) exactly for a circular convolution on an
N₁ × N₂ grid: the discrete transform of every kernel at every grid frequency, the Δ₁Δ₂ aliased
blocks gathered into one matrix per output frequency, and all of them reduced by one batched
``matrix_norm(ord=2)``. With the unnormalised DFT ŵ(ξ) = Σ_u w(u) e^{-2πi u·ξ/N} the scale
factor that makes (1) the operator norm is (Δ₁Δ₂)^{-1/2}, not the paper's Δ^{-2} (which goes
with its own normalisation of the transform); subsampling by Δ alone has norm 1, and the tests
check the scale against dense singular values.

:func:`conv2d_fourier_bound` turns a ``torch.nn.functional.conv2d`` configuration into that
formula: exactly for circular padding whose outputs tile the input grid, and as an upper bound
otherwise (zero padding embeds the input isometrically in the padded grid and keeps a subset
of the circular outputs, both contractions; reflect/replicate padding is a linear map of norm
√(largest number of copies of one pixel)). :func:`power_iteration_norm` gives the exact
largest singular value of any linear map from its forward function alone (the adjoint comes
from ``torch.func.vjp``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

PaddingMode = Literal["zeros", "circular", "reflect", "replicate"]
Pair = tuple[int, int]

_ELEMENT_BUDGET = 1 << 23
"""Complex entries of the aliased-frequency matrices held at once (64 MiB in complex64)."""


@dataclass(frozen=True)
class NormEstimate:
    """A spectral norm: ``value``; ``exact`` when it is the norm itself rather than an upper
    bound of it; ``iterations`` that power iteration used (0 for the closed form) and whether
    it ``converged`` (an unconverged power-iteration value is a lower estimate, not a bound)."""

    value: float
    exact: bool
    iterations: int = 0
    converged: bool = True


def dilate_kernel(weight: torch.Tensor, dilation: Pair) -> torch.Tensor:
    """The kernel of a dilated convolution as an ordinary kernel (zeros between the taps)."""
    d1, d2 = dilation
    if d1 == 1 and d2 == 1:
        return weight
    out, cin, k1, k2 = weight.shape
    dense = weight.new_zeros(out, cin, d1 * (k1 - 1) + 1, d2 * (k2 - 1) + 1)
    dense[:, :, ::d1, ::d2] = weight
    return dense


def strided_circular_conv_norm(
    weight: torch.Tensor, grid: Pair, stride: Pair = (1, 1), groups: int = 1
) -> float:
    """Exact operator norm of the circular convolution (cross-correlation) of ``weight``
    (D × C/groups × k₁ × k₂, taps at their offsets) on an N₁ × N₂ grid, sampled every
    Δ₁, Δ₂ positions: the formula (1) of Szegedy et al. (2014, section 4.3).

    ``grid`` must be divisible by ``stride``. A kernel larger than the grid wraps around it.
    The work is batched: the kernels' DFT is taken at all frequencies of a block of rows (two
    small matrix products), the Δ₁Δ₂ aliased frequencies are gathered into one
    (D/groups) × (C/groups·Δ₁Δ₂) matrix per output frequency and group, and the largest
    singular values of all of them come from one ``torch.linalg.matrix_norm`` call per block
    (blocks bound the memory). Real kernels make A(−η) the conjugate of A(η) up to a column
    permutation, so only the frequencies η₁ ≤ m₁/2 are evaluated.
    """
    (n1, n2), (s1, s2) = grid, stride
    if n1 % s1 or n2 % s2:
        raise ValueError(f"grid {grid} is not divisible by the stride {stride}")
    out, cin, k1, k2 = weight.shape
    if out % groups:
        raise ValueError(f"{out} output channels do not split into {groups} groups")
    m1, m2 = n1 // s1, n2 // s2
    real = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(real)
    e1 = _dft_matrix(k1, n1, w.device, real)  # k1 × n1
    e2 = _dft_matrix(k2, n2, w.device, real)  # k2 × n2
    # columns ξ₂ = η₂ + l₂·m₂, done once for the whole layer: D × C × k1 × n2
    cols = torch.einsum("dcuv,vb->dcub", w.to(e2.dtype), e2)
    per_row = out * cin * s1 * s2 * m2
    rows_per_block = max(1, _ELEMENT_BUDGET // per_row)
    best = torch.zeros((), dtype=real, device=w.device)
    # A(−η) is A(η) conjugated with its columns permuted (real kernels): rows η₁ ≤ m₁/2 suffice
    half = m1 // 2 + 1
    for start in range(0, half, rows_per_block):
        eta1 = torch.arange(start, min(half, start + rows_per_block), device=w.device)
        xi1 = (eta1[None, :] + m1 * torch.arange(s1, device=w.device)[:, None]).reshape(-1)
        block = torch.einsum("dcub,ua->dcab", cols, e1[:, xi1])  # D × C × (s1·B) × n2
        block = block.reshape(groups, out // groups, cin, s1, eta1.numel(), s2, m2)
        # → (B, m2, groups, D/g, C/g·s1·s2): one aliased matrix per frequency and group
        block = block.permute(4, 6, 0, 1, 2, 3, 5).reshape(
            eta1.numel() * m2, groups, out // groups, cin * s1 * s2
        )
        best = torch.maximum(best, torch.linalg.matrix_norm(block, ord=2).max())
    return float(best) / math.sqrt(s1 * s2)


def _dft_matrix(taps: int, size: int, device: torch.device, real: torch.dtype) -> torch.Tensor:
    """``E[u, ξ] = exp(-2πi u ξ / size)`` for taps u < ``taps`` (wrapping when taps > size)."""
    u = torch.arange(taps, device=device, dtype=real)[:, None]
    xi = torch.arange(size, device=device, dtype=real)[None, :]
    phase = -2 * math.pi * torch.remainder(u * xi, size) / size
    return torch.polar(torch.ones_like(phase), phase)


def padding_copy_count(size: int, pad: Pair, mode: PaddingMode) -> int:
    """Largest number of positions of the padded 1-D signal that copy one input position
    (1 for zero padding); the padding map's norm is the square root of its product over
    the spatial dimensions."""
    if mode == "zeros":
        return 1
    positions = torch.arange(-pad[0], size + pad[1])
    if mode == "circular":
        source = torch.remainder(positions, size)
    elif mode == "replicate":
        source = positions.clamp(0, size - 1)
    else:  # reflect: -1 ↦ 1, size ↦ size - 2
        period = 2 * (size - 1)
        folded = torch.remainder(positions, period) if period else torch.zeros_like(positions)
        source = torch.where(folded < size, folded, period - folded)
    return int(torch.bincount(source, minlength=size).max())


def conv2d_fourier_bound(
    weight: torch.Tensor,
    input_size: Pair,
    *,
    stride: Pair = (1, 1),
    padding: tuple[Pair, Pair] = ((0, 0), (0, 0)),
    dilation: Pair = (1, 1),
    groups: int = 1,
    padding_mode: PaddingMode = "zeros",
) -> NormEstimate:
    """The Fourier bound (1) of the norm of ``conv2d`` with these settings on inputs of
    spatial size ``input_size``; ``padding`` is (before, after) per spatial dimension.

    Circular padding whose outputs sample every Δ-th position of the input grid exactly once
    (e.g. kernel 2p+1, padding p and Δ dividing the size) gives the exact norm on the input
    grid, and so does a layer without padding whose windows tile the grid (kernel ≤ Δ, e.g. a
    strided 1×1 shortcut or a patch embedding). In every other case the layer is written as
    (padding map) then (valid convolution on the padded grid of size n + p_before + p_after,
    rounded up to a multiple of Δ), whose outputs are a subset of the circular ones on that
    grid: the product of the padding map's norm (1 for zero padding) and the circular norm is
    an upper bound.
    """
    kernel = dilate_kernel(weight, dilation)
    sizes = tuple(int(n) for n in input_size)
    taps = kernel.shape[-2:]
    if padding_mode == "circular":
        exact = _circular_tiling(sizes, taps, stride, padding)
        if exact is not None:
            norm = strided_circular_conv_norm(kernel, sizes, stride, groups)  # type: ignore[arg-type]
            return NormEstimate(norm, exact=exact)
    grid = tuple(
        s * math.ceil((n + p[0] + p[1]) / s) for n, p, s in zip(sizes, padding, stride, strict=True)
    )
    copies = math.prod(
        padding_copy_count(n, p, padding_mode) for n, p in zip(sizes, padding, strict=True)
    )
    norm = strided_circular_conv_norm(kernel, grid, stride, groups)  # type: ignore[arg-type]
    # windows that neither overlap nor wrap and tile an unpadded grid: the circular layer itself
    tiling = all(
        p == (0, 0) and n % s == 0 and k <= s
        for n, k, s, p in zip(sizes, taps, stride, padding, strict=True)
    )
    return NormEstimate(math.sqrt(copies) * norm, exact=tiling)


def _circular_tiling(
    sizes: tuple[int, ...], taps: torch.Size, stride: Pair, padding: tuple[Pair, Pair]
) -> bool | None:
    """For circular padding: True when the outputs are exactly the stride lattice of the input
    grid, False when they are distinct points of it (so the lattice norm bounds), None when
    the lattice does not exist or outputs repeat (the generic bound applies)."""
    exact = True
    for n, k, s, (before, after) in zip(sizes, taps, stride, padding, strict=True):
        outputs = (n + before + after - k) // s + 1
        if n % s or outputs > n // s:
            return None
        exact = exact and outputs == n // s
    return exact


def conv2d_operator(
    weight: torch.Tensor,
    *,
    stride: Pair = (1, 1),
    padding: tuple[Pair, Pair] = ((0, 0), (0, 0)),
    dilation: Pair = (1, 1),
    groups: int = 1,
    padding_mode: PaddingMode = "zeros",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear part (no bias) of a 2-D convolution layer as a function of an N×C×H×W batch,
    for :func:`power_iteration_norm`."""
    (top, bottom), (left, right) = padding
    pads = (left, right, top, bottom)
    mode = "constant" if padding_mode == "zeros" else padding_mode

    def apply(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, pads, mode=mode), weight, None, stride, 0, dilation, groups)

    return apply


def power_iteration_norm(
    operator: Callable[[torch.Tensor], torch.Tensor],
    input_shape: tuple[int, ...],
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    iterations: int = 500,
    tol: float = 1e-6,
    block: int = 8,
) -> NormEstimate:
    """Largest singular value of a linear ``operator`` (a function of a batch of inputs of
    shape ``input_shape``), by block power iteration on AᵀA with Rayleigh–Ritz.

    The adjoint is the vector-Jacobian product of ``operator`` (``torch.func.vjp``; exact
    since the map is linear). Each step maps a block of ``block`` orthonormal vectors as one
    batch, takes the largest singular value of the images as the estimate (a lower bound that
    increases to the norm), and re-orthonormalises AᵀA applied to the block. It stops when the
    estimate changes by less than ``tol`` relatively, or after ``iterations`` steps; the block
    makes convergence depend on the gap between the first and the ``block+1``-th singular
    values, not the first two. Start vectors come from ``generator`` (on the CPU).
    """
    dim = math.prod(input_shape)
    width = min(block, dim)
    start = torch.randn(width, dim, generator=generator, dtype=dtype).to(device)
    basis = torch.linalg.qr(start.T).Q.T  # width × dim, orthonormal rows
    _, adjoint = torch.func.vjp(operator, torch.zeros(width, *input_shape, dtype=dtype,
                                                      device=device))
    estimate = 0.0
    for step in range(1, iterations + 1):
        images = operator(basis.view(width, *input_shape))
        previous, estimate = estimate, float(torch.linalg.svdvals(images.flatten(1))[0])
        if estimate == 0.0 or abs(estimate - previous) <= tol * estimate:
            return NormEstimate(estimate, exact=True, iterations=step)
        back = adjoint(images)[0].reshape(width, dim)
        basis = torch.linalg.qr(back.T).Q.T
    return NormEstimate(estimate, exact=True, iterations=iterations, converged=False)
