"""Spectral primitives against dense singular values (an independent computation).

The dense matrix of a layer is its Jacobian (``torch.func.jacrev``, the layer is affine), and
its largest singular value comes from ``torch.linalg.svdvals`` in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robaudit.ops.spectral import (
    conv2d_fourier_bound,
    conv2d_operator,
    padding_copy_count,
    power_iteration_norm,
    strided_circular_conv_norm,
)


def dense_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """Largest singular value of the Jacobian of ``layer`` at 0 on one input of ``shape``."""
    x = torch.zeros(1, *shape, dtype=torch.float64)
    jac = torch.func.jacrev(layer)(x)
    inputs = math.prod(shape)
    return float(torch.linalg.svdvals(jac.detach().reshape(-1, inputs))[0])


def make_conv(seed: int, cin: int, cout: int, kernel: int | tuple[int, int], **kw) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, kernel, **kw).double()


def fourier(conv: nn.Conv2d, size: tuple[int, int]):
    pads = tuple((p, p) for p in conv.padding)
    return conv2d_fourier_bound(
        conv.weight.detach(), size, stride=conv.stride, padding=pads, dilation=conv.dilation,
        groups=conv.groups, padding_mode=conv.padding_mode,
    )


def power(conv: nn.Conv2d, shape: tuple[int, int, int], tol: float = 1e-9):
    pads = tuple((p, p) for p in conv.padding)
    operator = conv2d_operator(
        conv.weight.detach(), stride=conv.stride, padding=pads, dilation=conv.dilation,
        groups=conv.groups, padding_mode=conv.padding_mode,
    )
    return power_iteration_norm(operator, shape, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64, iterations=3000, tol=tol)


CIRCULAR = [
    # cin, cout, kernel, stride, padding, dilation, groups, input size
    (3, 5, 3, 1, 1, 1, 1, (8, 8)),
    (3, 5, 3, 2, 1, 1, 1, (8, 8)),
    (4, 6, 5, 2, 2, 1, 2, (8, 6)),
    (2, 3, 3, (2, 1), 1, 1, 1, (6, 5)),
    (3, 4, 3, 1, 2, 2, 1, (7, 7)),
    (2, 4, 4, 4, (1, 0), 1, 1, (8, 8)),
    (2, 2, 5, 1, 2, 1, 1, (3, 3)),  # kernel larger than the grid: it wraps around
]


@pytest.mark.parametrize(("cin", "cout", "k", "s", "p", "d", "g", "size"), CIRCULAR)
def test_fourier_equals_dense_norm_for_circular_padding(cin, cout, k, s, p, d, g, size):
    conv = make_conv(1, cin, cout, k, stride=s, padding=p, dilation=d, groups=g,
                     padding_mode="circular")
    expected = dense_norm(conv, (cin, *size))
    estimate = fourier(conv, size)
    assert estimate.exact
    assert estimate.value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("k", "s", "p", "n"), [(3, 2, 1, 7), (4, 4, 2, 8), (3, 1, 0, 6)])
def test_circular_outputs_off_the_stride_lattice_give_an_upper_bound(k, s, p, n):
    # 7 is not divisible by 2; padding 2 with stride 4 on 8 samples one position twice;
    # padding 0 keeps 4 of the 6 positions of the circle
    conv = make_conv(2, 3, 4, k, stride=s, padding=p, padding_mode="circular")
    estimate = fourier(conv, (n, n))
    assert not estimate.exact
    assert estimate.value >= dense_norm(conv, (3, n, n)) * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("stride", [1, 2])
def test_fourier_bounds_zero_padded_conv_tightly(seed, stride):
    conv = make_conv(seed, 4, 6, 3, stride=stride, padding=1)
    expected = dense_norm(conv, (4, 8, 8))
    estimate = fourier(conv, (8, 8))
    assert not estimate.exact
    assert expected * (1 - 1e-9) <= estimate.value <= 1.10 * expected


@pytest.mark.parametrize(("k", "s", "p", "size"), [(4, 2, 1, (9, 9)), (3, 3, 0, (8, 7)),
                                                   (5, 1, 0, (7, 9))])
def test_fourier_bounds_zero_padding_with_sizes_off_the_stride(k, s, p, size):
    conv = make_conv(5, 3, 4, k, stride=s, padding=p)
    assert fourier(conv, size).value >= dense_norm(conv, (3, *size)) * (1 - 1e-9)


@pytest.mark.parametrize(("k", "s", "size"),
                         [(1, 2, (8, 8)), (2, 2, (6, 4)), ((2, 1), (3, 1), (9, 5))])
def test_fourier_is_exact_for_unpadded_windows_that_tile_the_input(k, s, size):
    conv = make_conv(7, 3, 5, k, stride=s)
    estimate = fourier(conv, size)
    assert estimate.exact
    assert estimate.value == pytest.approx(dense_norm(conv, (3, *size)), rel=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_fourier_bounds_reflect_and_replicate_padding(mode):
    conv = make_conv(6, 3, 4, 3, padding=1, padding_mode=mode)
    assert fourier(conv, (6, 6)).value >= dense_norm(conv, (3, 6, 6))


@pytest.mark.parametrize(
    ("kw", "size"),
    [
        ({"padding": 1}, (8, 8)),
        ({"padding": 1, "stride": 2}, (8, 8)),
        ({"padding": 2, "dilation": 2, "groups": 2}, (7, 6)),
        ({"padding": 1, "padding_mode": "reflect"}, (6, 6)),
        ({"padding": 1, "stride": 2, "padding_mode": "circular"}, (7, 7)),
    ],
)
def test_power_iteration_equals_dense_norm(kw, size):
    conv = make_conv(3, 4, 6, 3, **kw)
    expected = dense_norm(conv, (4, *size))
    estimate = power(conv, (4, *size))
    assert estimate.converged and estimate.exact
    assert estimate.value == pytest.approx(expected, rel=1e-5)


def test_power_iteration_on_a_matrix_and_its_unconverged_estimate_is_below():
    generator = torch.Generator().manual_seed(4)
    matrix = torch.randn(30, 40, generator=generator, dtype=torch.float64)
    expected = float(torch.linalg.svdvals(matrix)[0])
    estimate = power_iteration_norm(lambda x: x @ matrix.T, (40,), dtype=torch.float64,
                                    generator=generator, tol=1e-12, iterations=5000)
    assert estimate.value == pytest.approx(expected, rel=1e-8)
    short = power_iteration_norm(lambda x: x @ matrix.T, (40,), dtype=torch.float64,
                                 generator=generator, iterations=1, block=1)
    assert not short.converged
    assert short.value < expected


def test_strided_norm_of_pure_subsampling_is_one():
    # a 1×1 identity kernel with stride 2 keeps every other pixel: a coordinate selection
    weight = torch.ones(1, 1, 1, 1)
    assert strided_circular_conv_norm(weight, (8, 8), (2, 2)) == pytest.approx(1.0)
    # a 2×2 box sum with stride 2 sums disjoint 4-pixel windows: norm √4 = 2
    assert strided_circular_conv_norm(torch.ones(1, 1, 2, 2), (8, 8), (2, 2)) == (
        pytest.approx(2.0))


def test_strided_norm_refuses_a_grid_off_the_stride():
    with pytest.raises(ValueError, match="divisible"):
        strided_circular_conv_norm(torch.ones(1, 1, 3, 3), (7, 8), (2, 2))


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
@pytest.mark.parametrize(("size", "pad"), [(5, (1, 1)), (4, (3, 2)), (6, (0, 2))])
def test_padding_copy_count_matches_padding_an_index_signal(mode, size, pad):
    index = torch.arange(1.0, size + 1).view(1, 1, size)
    padded = F.pad(index, pad, mode="constant" if mode == "zeros" else mode)
    counts = torch.bincount(padded.flatten().long(), minlength=size + 1)[1:]
    assert padding_copy_count(size, pad, mode) == int(counts.max())
