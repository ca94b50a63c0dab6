"""``lipschitz_bound`` (Szegedy et al. 2014, section 4.3) against independent answers.

Independent answers: the spectral norm of a layer's dense Jacobian (``torch.func.jacrev`` +
``svdvals``), derivatives of activations on a fine grid, brute-force single-pixel perturbations
of max pooling, and empirical Lipschitz ratios (random pairs, local Jacobian norms) that every
upper bound must exceed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv

from robaudit import ModelUnderAudit
from robaudit.errors import MetricError
from robaudit.model import Normalize
from robaudit.plugins.metrics.bounds.lipschitz import (
    BoundOptions,
    LayerBound,
    LayerSite,
    LipschitzBound,
    network_bound,
    register_rule,
    unregister_rule,
)
from robaudit.testing import make_context, run_metric
from robaudit.zoo.resnet import BasicBlock, DigitsResNet


def bound(module: nn.Module, shape: tuple[int, ...], **options) -> LayerBound:
    module.eval()
    return network_bound(module, shape, options=BoundOptions(**options))


def jacobian_norm(module: nn.Module, x: torch.Tensor) -> float:
    """Spectral norm of the Jacobian of ``module`` at one input ``x`` (no batch dimension)."""
    jac = torch.func.jacrev(lambda v: module(v.unsqueeze(0)).squeeze(0))(x)
    return float(torch.linalg.svdvals(jac.detach().reshape(-1, x.numel()))[0])


def pair_ratios(module: nn.Module, shape: tuple[int, ...], pairs: int, scale: float
                ) -> torch.Tensor:
    """‖f(x) − f(x + r)‖ / ‖r‖ for random x and random r of norm about ``scale``."""
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(pairs, *shape, generator=generator)
    r = torch.randn(pairs, *shape, generator=generator)
    r = scale * r / r.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))
    with torch.no_grad():
        change = (module(x) - module(x + r)).flatten(1).norm(dim=1)
    return change / r.flatten(1).norm(dim=1)


def randomize_batchnorm(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=generator))
    return module.eval()


def product_of_factors(result: LayerBound) -> float:
    return math.prod(row["bound"] for row in result.rows if row["in_product"])


# -- single layers ----------------------------------------------------------------------------


def test_linear_bound_is_its_largest_singular_value():
    torch.manual_seed(0)
    layer = nn.Linear(12, 7)
    result = bound(layer, (12,))
    expected = float(torch.linalg.svdvals(layer.weight.detach())[0])
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert result.rows[0]["size"] == "12×7" and result.rows[0]["exact"]


@pytest.mark.parametrize("method", ["fourier", "power_iteration"])
def test_conv2d_rule_matches_dense_norm(method):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    expected = jacobian_norm(conv.eval(), torch.zeros(3, 8, 8))
    result = bound(conv, (3, 8, 8), method=method, tol=1e-8)
    if method == "fourier":
        assert expected * (1 - 1e-6) <= result.value <= 1.1 * expected
    else:
        assert result.value == pytest.approx(expected, rel=1e-4)
    assert result.rows[0]["size"] == "3×3×3×5" and result.rows[0]["stride"] == "2"


def test_conv1d_with_circular_padding_is_exact():
    torch.manual_seed(2)
    conv = nn.Conv1d(3, 4, 5, stride=2, padding=2, padding_mode="circular")
    expected = jacobian_norm(conv.eval(), torch.zeros(3, 12))
    result = bound(conv, (3, 12))
    assert result.rows[0]["exact"]
    assert result.value == pytest.approx(expected, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_string_is_resolved():
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 4, padding="same")
    expected = jacobian_norm(conv.eval(), torch.zeros(2, 7, 7))
    assert bound(conv, (2, 7, 7), method="power_iteration", tol=1e-8).value == (
        pytest.approx(expected, rel=1e-4))
    assert bound(conv, (2, 7, 7)).value >= expected * (1 - 1e-6)


@pytest.mark.parametrize(("layer", "shape"), [(nn.BatchNorm1d(6), (6,)),
                                              (nn.BatchNorm2d(4), (4, 3, 3))])
def test_batchnorm_bound_equals_its_jacobian_norm(layer, shape):
    randomize_batchnorm(layer, 4)
    expected = jacobian_norm(layer, torch.randn(shape))
    assert bound(layer, shape).value == pytest.approx(expected, rel=1e-6)


def test_batchnorm_with_batch_statistics_is_an_error():
    layer = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(MetricError, match="batch statistics"):
        bound(layer, (3, 4, 4))


def test_normalize_bound_equals_its_jacobian_norm():
    layer = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    assert bound(layer, (3, 2, 2)).value == pytest.approx(
        jacobian_norm(layer, torch.rand(3, 2, 2)), rel=1e-6)


AVERAGE_POOLS = [
    (nn.AvgPool2d(2), (2, 8, 8)),
    (nn.AvgPool2d(3, stride=1), (1, 6, 5)),
    (nn.AvgPool2d(3, stride=2, padding=1), (1, 7, 7)),
    (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 7, 6)),
    (nn.AvgPool2d((3, 2), stride=2, ceil_mode=True), (1, 8, 7)),
    (nn.AvgPool2d(2, padding=1, divisor_override=3), (1, 5, 5)),
    (nn.AdaptiveAvgPool2d(1), (2, 4, 6)),
    (nn.AdaptiveAvgPool2d((3, 2)), (1, 7, 5)),
]


@pytest.mark.parametrize(("pool", "shape"), AVERAGE_POOLS)
def test_average_pooling_bound_equals_its_jacobian_norm(pool, shape):
    result = bound(pool, shape)
    assert result.rows[0]["exact"]
    assert result.value == pytest.approx(jacobian_norm(pool, torch.rand(shape)), rel=1e-6)


def test_average_pooling_analytic_norms():
    assert bound(nn.AvgPool2d(2), (3, 8, 8)).value == pytest.approx(1 / 2)
    assert bound(nn.AdaptiveAvgPool2d(1), (3, 4, 6)).value == pytest.approx(1 / math.sqrt(24))


MAX_POOLS = [
    (nn.MaxPool2d(2), (1, 6, 6), 1.0),
    (nn.MaxPool2d(3, stride=1, padding=1), (1, 6, 6), 3.0),
    (nn.MaxPool2d(3, stride=2), (1, 7, 7), 2.0),
    (nn.MaxPool2d((2, 3), stride=(2, 1)), (1, 6, 6), math.sqrt(3)),
    (nn.AdaptiveMaxPool2d(3), (1, 5, 5), 2.0),
    (nn.AdaptiveMaxPool2d((2, 3)), (1, 4, 6), 1.0),
]


@pytest.mark.parametrize(("pool", "shape", "analytic"), MAX_POOLS)
def test_max_pooling_bound_is_attained_by_one_dominant_pixel(pool, shape, analytic):
    # brute force: make each pixel in turn the maximum of every window holding it and move it
    pixels = math.prod(shape)
    base = torch.eye(pixels).view(pixels, *shape)
    step = 0.1 * base
    with torch.no_grad():
        moved = (pool(base + step) - pool(base)).flatten(1).norm(dim=1) / 0.1
    result = bound(pool, shape)
    assert result.value == pytest.approx(float(moved.max()), rel=1e-6)
    assert result.value == pytest.approx(analytic)
    assert pair_ratios(pool, shape, 200, 0.5).max() <= result.value


@pytest.mark.parametrize(
    ("layer", "expected"),
    [(nn.ReLU(), 1.0), (nn.LeakyReLU(0.1), 1.0), (nn.LeakyReLU(2.5), 2.5), (nn.ELU(1.5), 1.5),
     (nn.Tanh(), 1.0), (nn.Sigmoid(), 0.25), (nn.Softplus(), 1.0), (nn.ReLU6(), 1.0),
     (nn.Hardtanh(), 1.0)],
)
def test_activation_constants_are_their_largest_slopes(layer, expected):
    x = torch.linspace(-8, 8, 16001, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(layer(x).sum(), x)
    result = bound(layer, (4,))
    assert result.value == expected
    assert float(slope.abs().max()) == pytest.approx(expected, rel=2e-3)


# -- residual blocks and networks --------------------------------------------------------------


def block_rows(result: LayerBound, prefix: str) -> list[float]:
    return [row["bound"] for row in result.rows
            if row["layer"].startswith(prefix) and not row["in_product"]]


def test_identity_residual_block_is_one_plus_its_branch():
    block = randomize_batchnorm(BasicBlock(4, 4), 5)
    torch.manual_seed(5)
    result = bound(block, (4, 6, 6))
    assert result.value == pytest.approx(1 + math.prod(block_rows(result, "branch.")))
    assert result.rows[-1]["layer"] == "(network)" and result.rows[-1]["in_product"]
    points = torch.rand(6, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    assert max(jacobian_norm(block, x) for x in points) <= result.value
    assert pair_ratios(block, (4, 6, 6), 100, 0.3).max() <= result.value


def test_projection_residual_block_is_branch_plus_shortcut():
    block = randomize_batchnorm(BasicBlock(3, 6, stride=2), 6)
    result = bound(block, (3, 8, 8))
    branch = math.prod(block_rows(result, "branch."))
    shortcut = math.prod(block_rows(result, "shortcut."))
    assert result.value == pytest.approx(branch + shortcut)
    assert jacobian_norm(block, torch.rand(3, 8, 8)) <= result.value


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: tv.BasicBlock(6, 6), (6, 5, 5)),
        (lambda: tv.Bottleneck(8, 4, stride=2, downsample=nn.Sequential(
            nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))), (8, 6, 6)),
    ],
)
def test_torchvision_residual_blocks(make, shape):
    torch.manual_seed(8)
    block = randomize_batchnorm(make(), 8)
    result = bound(block, shape)
    branch = math.prod(row["bound"] for row in result.rows
                       if not row["in_product"] and not row["layer"].startswith("downsample"))
    shortcut = block_rows(result, "downsample.")
    expected = branch + (math.prod(shortcut) if shortcut else 1.0)
    assert result.value == pytest.approx(expected)
    assert jacobian_norm(block, torch.rand(shape)) <= result.value


def test_torchvision_resnet_is_composed_in_forward_order():
    torch.manual_seed(9)
    net = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=3)
    # the wide stages are slow to bound on a CPU; narrow ones keep the structure
    net.layer2, net.layer3 = nn.Sequential(tv.BasicBlock(64, 64)), nn.Identity()
    net.layer4, net.fc = nn.Identity(), nn.Linear(64, 3)
    randomize_batchnorm(net, 9)
    result = bound(net, (3, 16, 16))
    factors = [row["layer"] for row in result.rows if row["in_product"]]
    assert factors == ["conv1", "bn1", "relu", "maxpool", "layer1.0", "layer2.0", "layer3",
                       "layer4", "avgpool", "fc"]
    assert result.value == pytest.approx(product_of_factors(result))
    assert jacobian_norm(net, torch.rand(3, 16, 16)) <= result.value


def small_cnn() -> nn.Sequential:
    torch.manual_seed(10)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 5),
    )


def small_resnet() -> DigitsResNet:
    torch.manual_seed(11)
    return DigitsResNet(widths=(4, 6), blocks=(1, 1), num_classes=5)


@pytest.mark.parametrize("make", [small_cnn, small_resnet])
def test_metric_bound_exceeds_empirical_lipschitz_ratios(make):
    net = randomize_batchnorm(make(), 12)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ctx = make_context(net, x, torch.zeros(16, dtype=torch.long))
    fourier = run_metric(LipschitzBound(), ctx)
    power = run_metric(LipschitzBound(), ctx, method="power_iteration", tol=1e-7)
    rows = fourier.details["layers"]
    assert fourier.value == pytest.approx(math.prod(r["bound"] for r in rows if r["in_product"]))
    # exact convolution norms can only lower the bound
    assert power.value <= fourier.value * (1 + 1e-6)
    empirical = max(float(pair_ratios(net, (1, 8, 8), 300, scale).max())
                    for scale in (0.01, 1.0))
    local = max(jacobian_norm(net, point) for point in x[:8])
    assert max(empirical, local) <= power.value
    assert fourier.details["factors"] == len(fourier.figures[0].x)
    assert fourier.details["input_shape"] == "1×8×8"


def test_normalize_in_front_multiplies_the_bound():
    net = randomize_batchnorm(small_cnn(), 13)
    x = torch.rand(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    plain = run_metric(LipschitzBound(), make_context(net, x, y))
    wrapped = ModelUnderAudit(net, normalize=((0.5,), (0.25,)))
    normalized = run_metric(LipschitzBound(), make_context(wrapped, x, y))
    assert normalized.details["layers"][0]["type"] == "Normalize"
    assert normalized.value == pytest.approx(4 * plain.value, rel=1e-6)


class Scale(nn.Module):
    """A layer without a built-in rule: reverses its input (``flip``, which has no rule, though
    a permutation of entries is an isometry) and multiplies it by a learnt scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(-3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x.flip(1)


def scale_rule(module: Scale, site: LayerSite) -> LayerBound:
    return site.leaf(abs(float(module.factor)))


@pytest.mark.parametrize("key", [Scale, f"{Scale.__module__}.{Scale.__qualname__}"])
def test_module_without_rule_errors_until_a_rule_is_registered(key):
    net = nn.Sequential(nn.Linear(4, 4), Scale())
    ctx = make_context(net, torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(MetricError, match=r"'1' of type .*Scale.*register_rule"):
        run_metric(LipschitzBound(), ctx)
    register_rule(key, scale_rule)
    try:
        result = run_metric(LipschitzBound(), ctx)
    finally:
        unregister_rule(key)
    linear = float(torch.linalg.svdvals(net[0].weight.detach())[0])
    assert result.value == pytest.approx(3 * linear, rel=1e-6)


def test_subclass_overriding_forward_does_not_inherit_the_rule():
    class Doubled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class Renamed(nn.Linear):
        pass

    torch.manual_seed(13)
    doubled = Doubled(3, 3)  # its forward is traced, not bounded by nn.Linear's rule
    sigma = float(torch.linalg.svdvals(doubled.weight.detach())[0])
    assert bound(doubled, (3,)).value == pytest.approx(2 * sigma, rel=1e-6)
    torch.manual_seed(14)
    renamed = Renamed(3, 2)
    expected = float(torch.linalg.svdvals(renamed.weight.detach())[0])
    assert bound(renamed, (3,)).value == pytest.approx(expected)


def test_unconverged_power_iteration_is_an_error():
    net = small_cnn()
    ctx = make_context(net, torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(MetricError, match="did not reach"):
        run_metric(LipschitzBound(), ctx, method="power_iteration", iterations=2)


def test_floor_is_one_forward_pass():
    ctx = make_context(small_cnn(), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    metric = LipschitzBound()
    assert metric.floor(ctx, metric.Params()).forward == 1
    assert not metric.higher_is_better
