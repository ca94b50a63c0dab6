"""Lipschitz constants of the functions and tensor methods a traced forward pass calls
(``torch.flatten``, ``F.relu``, ``x + shortcut``, ``torch.cat``, …), for ``lipschitz_bound``.

Each is an :class:`OpBound`: how the op's L2 Lipschitz constant (with respect to the network's
input) follows from those of its input-dependent arguments. Szegedy et al. (2014, §4.3) bound
a network layer by layer; a residual sum a(x) + b(x) is L(a) + L(b) by the triangle
inequality, a concatenation [a(x); b(x)] is √(L(a)² + L(b)²), and element-wise activations are
their largest slope. A product of two input-dependent tensors (attention's softmax(QKᵀ)V,
gating) has no global Lipschitz constant (Kim, Papamakarios & Mnih 2021, "The Lipschitz
constant of self-attention", Theorem 3.1): that is an error, never a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robaudit.errors import MetricError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.fx import Node

#: The largest slope of GELU, Φ(x) + xφ(x), attained where φ(x)(2 − x²) = 0, i.e. x = √2.
GELU_MAX_SLOPE = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)

def _silu_max_slope() -> float:
    """The largest slope of SiLU x·σ(x): its derivative σ(1 + x(1 − σ)) peaks where
    2 + x(1 − 2σ(x)) = 0, found by bisection on [0, 5] (where that changes sign)."""
    def sigmoid(t: float) -> float:
        return 1.0 / (1.0 + math.exp(-t))

    low, high = 0.0, 5.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if 2 + mid * (1 - 2 * sigmoid(mid)) > 0 else (low, mid)
    s = sigmoid(high)
    return s * (1 + high * (1 - s))


#: The largest slope of SiLU (swish), about 1.0998.
SILU_MAX_SLOPE = _silu_max_slope()

#: Ops that only move, select or retype entries (norm 1, exact): reshapes and indexing.
MOVES = frozenset({"flatten", "view", "reshape", "contiguous", "permute", "transpose", "t",
                   "squeeze", "unsqueeze", "getitem", "clone", "float", "to", "type_as",
                   "chunk", "split", "unbind", "narrow", "movedim", "swapaxes", "pos",
                   "identity"})

#: Element-wise activations and their largest slope (exact constants).
SLOPES: dict[str, float] = {"relu": 1.0, "relu_": 1.0, "relu6": 1.0, "tanh": 1.0,
                            "hardtanh": 1.0, "softplus": 1.0, "sigmoid": 0.25,
                            "gelu": GELU_MAX_SLOPE, "silu": SILU_MAX_SLOPE, "hardswish": 1.5,
                            "hardsigmoid": 1.0 / 6.0, "neg": 1.0, "abs": 1.0}

#: Ops whose result does not depend on the input's values (shapes): constants.
SHAPE_QUERIES = frozenset({"size", "dim", "numel", "getattr", "shape"})

#: Products of tensors: with two input-dependent factors, no global bound exists.
PRODUCTS = frozenset({"matmul", "bmm", "mm", "einsum", "baddbmm", "scaled_dot_product_attention",
                      "mul", "mul_", "imul"})

SUMS = frozenset({"add", "add_", "iadd", "sub", "sub_", "isub"})
CONCATS = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack"})


@dataclass(frozen=True)
class OpBound:
    """An op's Lipschitz rule: ``combine`` maps the constants of its input-dependent arguments
    (in ``node.all_input_nodes`` order) to the op's; ``factor`` is the constant of a one-input
    op (for the per-layer table), None for ops that combine several inputs."""

    name: str
    combine: Callable[[Sequence[float]], float]
    factor: float | None
    exact: bool = True


def op_name(node: Node) -> str:
    """``"flatten"`` for ``torch.flatten``, ``x.flatten`` and ``aten.flatten.using_ints`` (the
    ops of an exported program), ``"add"`` for ``operator.add``: the method's, the function's
    or the aten op's name."""
    target = node.target
    if isinstance(target, str):
        return target
    return getattr(target, "_opname", None) or getattr(target, "__name__", str(target))


def _arg(node: Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def equivalent_layer(node: Node, constant: Callable[[Node], torch.Tensor | None]
                     ) -> nn.Module | None:
    """The layer that a convolution, batch-norm or pooling op computes (as exported programs
    call them, ``aten.conv2d`` …), so that the layer's rule bounds the op; None for other ops
    and for ops whose weights are not constants of the graph."""
    from torch import nn
    from torch.fx import Node

    name = op_name(node)

    def tensor(index: int, key: str) -> torch.Tensor | None:
        value = _arg(node, index, key, None)
        return constant(value) if isinstance(value, Node) else None

    if name == "conv2d":
        weight = tensor(1, "weight")
        if weight is None:
            return None
        conv = nn.Conv2d(weight.shape[1] * int(_arg(node, 6, "groups", 1)), weight.shape[0],
                         tuple(weight.shape[2:]), stride=_arg(node, 3, "stride", 1),
                         padding=_arg(node, 4, "padding", 0),
                         dilation=_arg(node, 5, "dilation", 1),
                         groups=int(_arg(node, 6, "groups", 1)), bias=False)
        conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
        return conv
    if name in ("batch_norm", "_native_batch_norm_legit_no_training"):
        offset = 0 if name == "_native_batch_norm_legit_no_training" else 1
        weight, var = tensor(1, "weight"), tensor(4, "running_var")
        training = name == "batch_norm" and _arg(node, 5, "training", True)
        if var is None or training:
            return None
        norm = nn.BatchNorm2d(len(var), eps=float(_arg(node, 6 + offset, "eps", 1e-5)),
                              affine=weight is not None).eval()
        norm.running_var.copy_(var.detach())
        if weight is not None:
            norm.weight.data.copy_(weight.detach())
        return norm
    if name == "max_pool2d":
        kernel = _arg(node, 1, "kernel_size", None)
        return nn.MaxPool2d(kernel, _arg(node, 2, "stride", None) or kernel,
                            _arg(node, 3, "padding", 0), _arg(node, 4, "dilation", 1),
                            ceil_mode=bool(_arg(node, 5, "ceil_mode", False)))
    if name == "avg_pool2d":
        kernel = _arg(node, 1, "kernel_size", None)
        return nn.AvgPool2d(kernel, _arg(node, 2, "stride", None) or kernel,
                            _arg(node, 3, "padding", 0), bool(_arg(node, 4, "ceil_mode", False)),
                            bool(_arg(node, 5, "count_include_pad", True)),
                            _arg(node, 6, "divisor_override", None))
    if name == "adaptive_avg_pool2d" and _arg(node, 1, "output_size", None) not in (1, (1, 1),
                                                                                    [1, 1]):
        return nn.AdaptiveAvgPool2d(_arg(node, 1, "output_size", None))
    return None


def live_args(node: Node, live: Callable[[Node], bool]) -> list[Node]:
    """The input-dependent nodes among ``node``'s arguments, in order, each as often as it
    occurs (``x + x`` has two)."""
    import torch

    found: list[Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs),
                          lambda a: found.append(a) if live(a) else None)
    return found


def _scale(factor: float, exact: bool = True, name: str = "") -> OpBound:
    return OpBound(name, lambda ls: factor * ls[0], factor, exact)


def _selects(index: Any) -> bool:
    """Whether an index takes each entry at most once: integers, slices, None, ``...``."""
    if isinstance(index, tuple):
        return all(_selects(part) for part in index)
    return index is None or index is Ellipsis or isinstance(index, (int, slice))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def op_bound(node: Node, live: Callable[[Node], bool], shape: Callable[[Node], tuple[int, ...]],
             constant: Callable[[Node], torch.Tensor | None]) -> OpBound | None:
    """The rule of a ``call_function`` / ``call_method`` node that depends on the input, or
    None when there is none; ``combine`` takes the constants of :func:`live_args`.
    ``live(arg)``: whether an argument depends on the input;
    ``shape(node)``: a node's output shape (batch of one); ``constant(node)``: the tensor a
    ``get_attr`` node holds."""
    import torch
    from torch.fx import Node

    name = op_name(node)
    args = [*node.args, *node.kwargs.values()]
    inputs = live_args(node, live)
    if name == "getitem" and not _selects(node.args[1]):
        return None  # an index list or tensor may repeat entries: √(repeats), not 1
    if name in MOVES:
        return _scale(1.0, name=name)
    if name in ("dropout", "dropout1d", "dropout2d", "alpha_dropout", "feature_alpha_dropout"):
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
        if training is not False:
            raise MetricError(
                f"lipschitz_bound: {name} at fx node {node.name!r} may drop units "
                f"(training={training!r}); pass training=self.training so that eval mode "
                "turns it off")
        return _scale(1.0, name=name)
    if name in SLOPES:
        return _scale(SLOPES[name], name=name)
    if name in ("leaky_relu", "leaky_relu_"):
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return _scale(max(1.0, abs(float(slope))), name=name)
    if name == "elu":
        alpha = node.kwargs.get("alpha", node.args[1] if len(node.args) > 1 else 1.0)
        return _scale(max(1.0, abs(float(alpha))), name=name)
    if name == "softmax":
        # softmax's Jacobian diag(p) − ppᵀ has norm ≤ 1 (Gao & Pavel 2017, Proposition 4)
        return _scale(1.0, exact=False, name=name)
    if name in SUMS:
        second = abs(float(node.kwargs.get("alpha", 1.0)))  # torch.add(a, b, alpha=2)
        weights = [1.0 if a is node.args[0] else second for a in inputs]
        return OpBound(name, lambda ls: sum(w * v for w, v in zip(weights, ls, strict=True)),
                       1.0 if len(inputs) == 1 else None)
    if name in CONCATS:
        return OpBound(name, lambda ls: math.sqrt(sum(v * v for v in ls)),
                       1.0 if len(inputs) == 1 else None)
    if name in PRODUCTS or name in ("truediv", "div", "div_", "itruediv"):
        if len(inputs) > 1 or name == "scaled_dot_product_attention":
            raise MetricError(
                f"lipschitz_bound: {name} at fx node {node.name!r} multiplies two tensors that "
                "both depend on the input (as attention's softmax(QKᵀ)V or a gate does); such a"
                " product has no global Lipschitz bound (its slope grows with its inputs; for "
                "attention, Kim et al. 2021, Theorem 3.1), so no upper bound of the network "
                "exists to report")
        numbers = [a for a in args if _number(a)]
        tensors = [a for a in node.args if isinstance(a, Node) and a not in inputs]
        scale = constant(tensors[0]) if len(tensors) == 1 and not numbers else None
        if scale is not None and shape(node) == shape(inputs[0]):
            # x ↦ c ⊙ x (or x / c), c broadcast over x's entries: a diagonal map, whose norm is
            # max |c| (1 / min |c|); a c that repeated x's entries would not be diagonal
            if name in ("mul", "mul_", "imul"):
                return _scale(float(scale.detach().abs().max()), name=name)
            if node.args[0] in inputs and bool((scale != 0).all()):
                return _scale(1.0 / float(scale.detach().abs().min()), name=name)
        if len(numbers) == 1 and name in ("mul", "mul_", "imul"):
            return _scale(abs(float(numbers[0])), name=name)
        if len(numbers) == 1 and node.args[0] in inputs and numbers[0] != 0:
            return _scale(1.0 / abs(float(numbers[0])), name=name)
        return None
    if name == "layer_norm" and node.args[0] in inputs:
        # γ(x − μ)/√(var + ε) + β: at most max|γ|/√ε, as the LayerNorm module's rule says
        weight = _arg(node, 2, "weight", None)
        gamma = constant(weight) if isinstance(weight, Node) else None
        if weight is not None and gamma is None:
            return None
        top = 1.0 if gamma is None else float(gamma.detach().abs().max())
        return _scale(top / math.sqrt(float(_arg(node, 4, "eps", 1e-5))), exact=False,
                      name=name)
    if name == "mean":
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if dims is None:
            return None
        size = shape(node.args[0])
        dims = [dims] if isinstance(dims, int) else list(dims)
        if any(d % len(size) == 0 for d in dims):
            return None  # a mean over the batch mixes samples
        count = math.prod(size[d] for d in dims)
        return _scale(1.0 / math.sqrt(count), name=name)
    if name == "adaptive_avg_pool2d":
        out = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        if out not in (1, (1, 1), [1, 1]):
            return None
        height, width = shape(node.args[0])[-2:]
        return _scale(1.0 / math.sqrt(height * width), name=name)
    if name == "linear" and node.args[0] in inputs:
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        tensor = constant(weight) if isinstance(weight, Node) else None
        if tensor is None:
            return None
        return _scale(float(torch.linalg.matrix_norm(tensor.detach().double(), ord=2)),
                      name=name)
    return None
