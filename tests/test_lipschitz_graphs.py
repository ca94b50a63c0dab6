"""``lipschitz_bound`` on any architecture (issue #22): modules without a rule are traced, so
functional calls and custom modules of known layers need no registration. Each bound is checked
against the product of dense singular values computed here, layer by layer, from each layer's
Jacobian matrix; the local lower bound must lie below it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robaudit.errors import MetricError
from robaudit.plugins.metrics.bounds.lipschitz import BoundOptions, LipschitzBound, network_bound
from robaudit.testing import make_context, run_metric

EXACT = BoundOptions(method="power_iteration", iterations=5000, tol=1e-9)


def dense_norm(layer, shape: tuple[int, ...]) -> float:
    """Largest singular value of the Jacobian matrix of ``layer`` (affine) on one input of
    ``shape``: the dense matrix, from autograd, and its SVD."""
    jac = torch.func.jacrev(lambda v: layer(v.unsqueeze(0)).flatten())(
        torch.zeros(shape, dtype=torch.float64))
    return float(torch.linalg.svdvals(jac.detach().reshape(-1, math.prod(shape)))[0])


def randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
    return module.double().eval()


def local_jacobian_norm(module: nn.Module, x: torch.Tensor) -> float:
    jac = torch.func.jacrev(lambda v: module(v.unsqueeze(0)).flatten())(x)
    return float(torch.linalg.svdvals(jac.detach().reshape(-1, x.numel()))[0])


def audit_bound(net: nn.Module, shape: tuple[int, ...]) -> tuple[float, dict]:
    """The metric's value and details on 6 random points, with exact convolution norms."""
    x = torch.rand(6, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ctx = make_context(net, x, torch.zeros(6, dtype=torch.long))
    result = run_metric(LipschitzBound(), ctx, method="power_iteration", iterations=5000,
                        tol=1e-9)
    details = result.details
    assert details["lower_bound"] <= result.value
    lower_line = result.figures[0].series["local lower bound (whole network)"]
    assert lower_line[0] == pytest.approx(math.log10(details["lower_bound"]))
    assert details["bound_over_lower"] == pytest.approx(result.value / details["lower_bound"])
    # the lower bound finds at least the local Jacobian norm at the audit points
    local = max(local_jacobian_norm(net, point) for point in x)
    assert details["lower_bound"] >= 0.95 * local
    return result.value, details


class CustomCNN(nn.Module):
    """A Sequential body, ``torch.flatten`` in forward, a Linear head: no rule of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                                  nn.ReLU())
        self.head = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


def test_custom_cnn_with_functional_flatten():
    torch.manual_seed(0)
    net = randomize(CustomCNN(), 1)
    value, details = audit_bound(net, (1, 8, 8))
    body = net.body
    expected = (dense_norm(body[0], (1, 8, 8)) * dense_norm(body[1], (4, 8, 8))
                * dense_norm(body[4], (4, 4, 4)) * dense_norm(net.head, (24,)))
    assert value == pytest.approx(expected, rel=1e-5)
    factors = [row["layer"] for row in details["layers"] if row["in_product"]]
    assert factors == ["body.0", "body.1", "body.2", "body.3", "body.4", "body.5", "flatten",
                       "head"]


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class FunctionalResNet(nn.Module):
    """Residuals added in forward, F.relu, a spatial mean: all functional."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_resnet_with_functional_residuals():
    torch.manual_seed(1)
    net = randomize(FunctionalResNet(), 2)
    value, details = audit_bound(net, (1, 6, 6))
    shape = (4, 6, 6)
    blocks = [1 + dense_norm(b.conv1, shape) * dense_norm(b.bn1, shape)
              * dense_norm(b.conv2, shape) * dense_norm(b.bn2, shape) for b in net.blocks]
    expected = (dense_norm(net.stem, (1, 6, 6)) * dense_norm(net.bn, shape) * math.prod(blocks)
                * dense_norm(lambda v: v.mean((2, 3)), shape) * dense_norm(net.head, (4,)))
    assert value == pytest.approx(expected, rel=1e-5)
    residuals = [row for row in details["layers"] if row["type"] == "residual"]
    assert [row["layer"] for row in residuals] == ["blocks.0", "blocks.1"]
    assert [row["bound"] for row in residuals] == pytest.approx(blocks, rel=1e-5)


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(5 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), torch.tanh(self.b(x))], dim=1).flatten(1))


def test_concatenation_is_the_root_sum_of_squares():
    torch.manual_seed(2)
    net = Inception().double().eval()
    result = network_bound(net, (2, 4, 4), options=EXACT, dtype=torch.float64)
    a, b = dense_norm(net.a, (2, 4, 4)), dense_norm(net.b, (2, 4, 4))
    expected = math.hypot(a, b) * dense_norm(net.head, (80,))
    assert result.value == pytest.approx(expected, rel=1e-5)
    assert local_jacobian_norm(net, torch.rand(2, 4, 4, dtype=torch.float64)) <= result.value


class ViTBlock(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(x.mean(1))


class FunctionalAttention(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return self.head((weights @ v).mean(1))


def test_attention_has_no_global_bound():
    x = torch.rand(2, 5, 8)
    for net, message in ((ViTBlock(), r"attention 'attn' \(MultiheadAttention\) has no global "
                                      r"Lipschitz bound"),
                         (FunctionalAttention(), r"matmul at fx node .* multiplies two tensors "
                                                 r"that both depend on the input")):
        ctx = make_context(net.eval(), x, torch.zeros(2, dtype=torch.long))
        with pytest.raises(MetricError, match=message):
            run_metric(LipschitzBound(), ctx)


def test_mlp_half_of_a_vit_block_is_bounded():
    """LayerNorm max|γ|/√ε, GELU's largest slope, the residual sum: no registration."""
    torch.manual_seed(3)
    block = ViTBlock().double().eval()

    class MLPHalf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln2, self.mlp = block.ln2, block.mlp

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.mlp(self.ln2(x))

    half = MLPHalf()
    result = network_bound(half, (5, 8), options=EXACT, dtype=torch.float64)
    gelu = max(float(torch.func.grad(F.gelu)(t)) for t in torch.linspace(0, 3, 3001,
                                                                           dtype=torch.float64))
    layer_norm = float(block.ln2.weight.detach().abs().max()) / math.sqrt(block.ln2.eps)
    expected = 1 + layer_norm * dense_norm(block.mlp[0], (5, 8)) * gelu * dense_norm(
        block.mlp[2], (5, 16))
    assert result.value == pytest.approx(expected, rel=1e-5)


def test_an_op_without_a_rule_names_it_and_how_to_register():
    class Cumulative(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.cumsum(1))

    with pytest.raises(MetricError, match=r"no Lipschitz rule for operation 'cumsum'.*"
                                          r"register_rule\(Cumulative, rule\)"):
        network_bound(Cumulative().eval(), (4,))


def test_an_exported_program_has_the_bound_of_its_module():
    """``export: PATH`` models: the aten ops of the program are bounded by the same rules."""
    from robaudit.plugins.loaders._wrappers import ExportedClassifier

    torch.manual_seed(4)
    net = randomize(FunctionalResNet(), 5).float()
    program = torch.export.export(net, (torch.rand(2, 1, 6, 6),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    exported = network_bound(ExportedClassifier(program.module()), (1, 6, 6), options=EXACT)
    assert exported.value == pytest.approx(network_bound(net, (1, 6, 6), options=EXACT).value,
                                           rel=1e-5)
    assert [r["type"] for r in exported.rows if r["in_product"]][:3] == ["Conv2d", "BatchNorm2d",
                                                                         "relu"]


@pytest.mark.parametrize(("layer", "function"), [(nn.GELU(), F.gelu), (nn.SiLU(), F.silu),
                                                 (nn.Hardswish(), F.hardswish)])
def test_smooth_activations_are_bounded_by_their_largest_slope(layer, function):
    x = torch.linspace(-8, 8, 160_001, dtype=torch.float64, requires_grad=True)
    function(x).sum().backward()
    slope = float(x.grad.max())
    value = network_bound(layer, (3,), dtype=torch.float64).value
    assert slope <= value <= slope * (1 + 1e-6)


def test_indexing_that_may_repeat_entries_has_no_rule():
    class Repeat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, [0, 0, 1]]

    class Slice(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 1:, None]

    assert network_bound(Slice(), (4,)).value == 1.0
    with pytest.raises(MetricError, match="no Lipschitz rule for operation 'getitem'"):
        network_bound(Repeat(), (4,))


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over channels of N×C×H×W inputs, by permuting."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScaled(nn.Module):
    """A ConvNeXt-like stem: conv, channels-first LayerNorm, a layer scale γ ⊙ x, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = ChannelsFirstLayerNorm(3, eps=1e-2)
        self.gamma = nn.Parameter(torch.tensor([0.5, -2.0, 1.5]))
        self.head = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.head(torch.flatten(x, 1))


def test_forward_overriding_norms_and_layer_scales_are_traced():
    torch.manual_seed(21)
    net = LayerScaled().double().eval()
    with torch.no_grad():
        net.norm.weight.copy_(torch.tensor([0.3, -1.2, 0.8]))
    value, details = audit_bound(net, (2, 4, 4))
    # LayerNorm: max|γ|/√ε (an upper bound, as the nn.LayerNorm rule); γ ⊙ x: max|γ| exactly
    expected = (dense_norm(net.conv, (2, 4, 4)) * 1.2 / math.sqrt(1e-2) * 2.0
                * dense_norm(net.head, (48,)))
    assert value == pytest.approx(expected, rel=1e-6)
    rows = {row["type"]: row for row in details["layers"] if row["in_product"]}
    assert rows["layer_norm"]["exact"] is False and rows["mul"]["bound"] == pytest.approx(2.0)


def test_a_scale_that_repeats_entries_is_not_a_diagonal_map():
    class Spread(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Parameter(torch.ones(3, 4))
            self.head = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×1×4 → N×3×4
            return self.head(torch.flatten(x * self.c, 1))

    with pytest.raises(MetricError, match="no Lipschitz rule for operation 'mul'"):
        network_bound(Spread().double().eval(), (1, 4), options=EXACT)
