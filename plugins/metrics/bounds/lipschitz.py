"""``lipschitz_bound``: an upper Lipschitz bound from the weights (Szegedy et al. 2014, §4.3).

The bound is composed module by module by **rules** looked up by module type (through the MRO,
so a subclass matches its base's rule unless it overrides ``forward``). Built-in rules cover
linear and convolution layers, batch norm, robaudit's ``Normalize``, pooling, the common
activations, LayerNorm, ``nn.Sequential`` (the product of its children), robaudit's zoo
``BasicBlock`` and torchvision's ``BasicBlock``, ``Bottleneck`` and ``ResNet``.

A module whose type has no rule is traced with torch.fx (modules with a rule are the leaves),
so custom modules built from known layers, and the functions and tensor methods they call
(``torch.flatten``, ``F.relu``, ``x + shortcut``, ``torch.cat``, a spatial ``mean``), need no
rule: :mod:`.functional` bounds the functions, and the graph is cut at the nodes that every path
to the logits passes through into factors and blocks (a residual sum is L(branch) + L(shortcut)
by the triangle inequality). An op without a rule, a module that cannot be traced, and
attention (no global Lipschitz bound exists) make the check error, naming the op or module.

Adding a rule (plugin authors)
------------------------------
A rule is a function ``rule(module, site) -> LayerBound``. ``site`` (a :class:`LayerSite`)
holds the module's ``path``, its recorded ``input_shape`` / ``output_shape`` (one sample,
no batch dimension, from a forward pass on zeros), the metric's options, and helpers:
``site.child(name)`` recurses into the sub-module ``module.<name>`` and returns its
:class:`LayerBound`; ``site.leaf(value, ...)`` makes the one-row result of a plain layer;
``site.chain(parts)`` multiplies parts applied one after the other; ``site.block(value,
parts)`` summarises parts combined otherwise (e.g. a residual sum); ``site.operator_norm(fn,
shape)`` runs power iteration on a linear function. Register it at import time of your plugin::

    from robaudit.plugins.metrics.bounds.lipschitz import LayerBound, LayerSite, register_rule

    def scaled_rule(module: Scaled, site: LayerSite) -> LayerBound:
        inner = site.child("inner")                       # L(inner), recursively
        return site.block(abs(module.scale) * inner.value, [inner])

    register_rule(Scaled, scaled_rule)                    # or "my_pkg.layers.Scaled"

A class may be named by its qualified name (``"package.module.Class"``), so that a rule for an
optional dependency is registered without importing it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.plugins.metrics.bounds.functional import (
    CONCATS,
    GELU_MAX_SLOPE,
    SHAPE_QUERIES,
    SILU_MAX_SLOPE,
    SUMS,
    equivalent_layer,
    live_args,
    op_bound,
    op_name,
)
from robaudit.plugins.metrics.bounds.local import local_lower_bound

if TYPE_CHECKING:
    import torch
    from torch import nn

    from robaudit.context import AuditContext
    from robaudit.model import Normalize
    from robaudit.ops.spectral import NormEstimate

Row = dict[str, Any]
"""One row of the per-layer table: layer, type, input, size, stride, bound, exact, in_product."""


@dataclass(frozen=True)
class LayerBound:
    """A module's Lipschitz bound ``value`` and its rows of the per-layer table.

    Rows with ``in_product`` true are the factors whose product is ``value``; the others
    (layers inside a residual block) are shown for information.
    """

    value: float
    rows: tuple[Row, ...] = ()


@dataclass(frozen=True)
class BoundOptions:
    """The metric's options that rules see: ``method`` for convolutions ("fourier" or
    "power_iteration"), power-iteration ``iterations`` and relative ``tol``."""

    method: Literal["fourier", "power_iteration"] = "fourier"
    iterations: int = 500
    tol: float = 1e-6


Rule = Callable[[Any, "LayerSite"], LayerBound]

_RULES: dict[type, Rule] = {}
_NAMED_RULES: dict[str, Rule] = {}
_builtins_registered = False


def _ensure_builtin_rules() -> None:
    """Register the built-in rules on the registry's first use: they name torch's module
    classes, and loading the plugins does not import torch (issue #24)."""
    global _builtins_registered
    if not _builtins_registered:
        _builtins_registered = True
        _register_builtin_rules()


def register_rule(module_type: type[nn.Module] | str, rule: Rule) -> None:
    """Bound modules of ``module_type`` (a class, or its qualified name ``"pkg.mod.Class"``)
    and of its subclasses that keep its ``forward`` with ``rule``; replaces an earlier rule."""
    _ensure_builtin_rules()
    if isinstance(module_type, str):
        _NAMED_RULES[module_type] = rule
    else:
        _RULES[module_type] = rule


def unregister_rule(module_type: type[nn.Module] | str) -> None:
    """Remove the rule registered for ``module_type`` (a no-op when there is none)."""
    _ensure_builtin_rules()
    if isinstance(module_type, str):
        _NAMED_RULES.pop(module_type, None)
    else:
        _RULES.pop(module_type, None)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def rule_for(module: nn.Module) -> Rule | None:
    """The rule of the nearest class in ``type(module).__mro__`` that has one; None when
    there is none, and when the module's class inherits a rule but overrides ``forward`` (the
    rule would describe a different computation, e.g. timm's ``LayerNorm2d``, which permutes to
    channels-last around ``F.layer_norm``): the module's forward is then traced."""
    _ensure_builtin_rules()
    cls = type(module)
    for base in cls.__mro__:
        rule = _RULES.get(base) or _NAMED_RULES.get(_qualified(base))
        if rule is None:
            continue
        if base is not cls and getattr(cls, "forward", None) is not getattr(base, "forward", None):
            return None
        return rule
    return None


def has_rule(module: nn.Module) -> bool:
    """Whether ``module`` is bounded by a rule (a leaf of the traced graph), not traced."""
    return rule_for(module) is not None


def _show(path: str) -> str:
    return repr(path) if path else "(the network itself)"


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(int(n)) for n in shape)


def _dims_text(values: Sequence[int]) -> str:
    """``"2"`` for equal values in every dimension, else ``"2×1"``."""
    return str(values[0]) if len(set(values)) == 1 else "×".join(map(str, values))


@dataclass
class _Walk:
    """State shared by the sites of one bound computation."""

    shapes: dict[int, set[tuple[tuple[int, ...], tuple[int, ...] | None]]]
    options: BoundOptions
    generator: torch.Generator
    dtype: torch.dtype


@dataclass
class LayerSite:
    """Where a rule is applied: the module's ``path`` in the network, its recorded shapes, the
    options, and helpers to recurse into sub-modules and to build results (module docstring)."""

    module: nn.Module
    path: str
    _walk: _Walk = field(repr=False)

    @property
    def options(self) -> BoundOptions:
        return self._walk.options

    def _recorded(self) -> tuple[tuple[int, ...], tuple[int, ...] | None] | None:
        seen = self._walk.shapes.get(id(self.module), set())
        if len(seen) > 1:
            raise MetricError(
                f"lipschitz_bound: module {_show(self.path)} is called with several input shapes"
                f" ({', '.join(_shape_text(s[0]) for s in sorted(seen))}); its bound depends on "
                f"the shape, so use a separate module for each call"
            )
        return next(iter(seen)) if seen else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The module's input shape for one sample (MetricError if it never ran)."""
        recorded = self._recorded()
        if recorded is None:
            raise MetricError(
                f"lipschitz_bound: module {_show(self.path)} ({type(self.module).__name__}) did "
                f"not run in the forward pass, so its input shape is unknown"
            )
        return recorded[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The module's output shape for one sample (MetricError if unknown)."""
        recorded = self._recorded()
        if recorded is None or recorded[1] is None:
            raise MetricError(
                f"lipschitz_bound: the output shape of module {_show(self.path)} is unknown"
            )
        return recorded[1]

    def child(self, name: str) -> LayerBound:
        """The bound of the sub-module ``module.<name>`` (by its rule), with its rows."""
        return self.recurse(getattr(self.module, name), name)

    def recurse(self, module: nn.Module, name: str) -> LayerBound:
        """The bound of ``module``, a sub-module reached under ``name``."""
        return module_bound(module, _join(self.path, name), self._walk)

    def leaf(self, value: float, *, size: str = "", stride: str = "", exact: bool = True
             ) -> LayerBound:
        """The result of a plain layer: one table row. ``exact``: ``value`` is the layer's
        Lipschitz constant itself, not only an upper bound of it."""
        seen = sorted({shapes[0] for shapes in self._walk.shapes.get(id(self.module), ())})
        row: Row = {
            "layer": self.path or "(network)",
            "type": type(self.module).__name__,
            "input": " / ".join(_shape_text(shape) for shape in seen),
            "size": size,
            "stride": stride,
            "bound": float(value),
            "exact": bool(exact),
            "in_product": True,
        }
        return LayerBound(float(value), (row,))

    def chain(self, parts: Sequence[LayerBound]) -> LayerBound:
        """Parts applied one after the other: the product of their bounds, their rows."""
        value = math.prod(part.value for part in parts)
        return LayerBound(value, tuple(row for part in parts for row in part.rows))

    def block(self, value: float, parts: Sequence[LayerBound], *, exact: bool = False
              ) -> LayerBound:
        """Parts combined otherwise than in sequence (e.g. a residual sum) into ``value``: the
        parts' rows are kept for information (``in_product`` false), then the block's row."""
        rows = tuple({**row, "in_product": False} for part in parts for row in part.rows)
        own = self.leaf(value, exact=exact)
        return LayerBound(own.value, rows + own.rows)

    def operator_norm(self, operator: Callable[[torch.Tensor], torch.Tensor],
                      input_shape: tuple[int, ...], like: torch.Tensor) -> NormEstimate:
        """The largest singular value of a linear ``operator`` of a batch of inputs of shape
        ``input_shape`` by power iteration (device and dtype of ``like``; MetricError if it
        does not converge within the options' iterations)."""
        from robaudit.ops.spectral import power_iteration_norm

        estimate = power_iteration_norm(
            operator, input_shape, generator=self._walk.generator, device=like.device,
            dtype=like.dtype, iterations=self.options.iterations, tol=self.options.tol,
        )
        if not estimate.converged:
            raise MetricError(
                f"lipschitz_bound: power iteration on module {_show(self.path)} did not reach "
                f"tol={self.options.tol} in {self.options.iterations} iterations; raise "
                f"`iterations` or use method: fourier"
            )
        return estimate


@contextmanager
def _recording(network: nn.Module, shapes: dict[int, set[Any]]) -> Iterator[None]:
    import torch

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            out = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            shapes.setdefault(id(module), set()).add((tuple(args[0].shape[1:]), out))

    handles = [m.register_forward_hook(hook) for m in network.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def network_bound(
    network: nn.Module,
    input_shape: Sequence[int],
    *,
    options: BoundOptions | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> LayerBound:
    """The upper L2 Lipschitz bound of ``network`` (in eval mode) on inputs of one sample's
    shape ``input_shape`` (in ``dtype``, float32 when None), with its per-layer rows: one
    forward pass of a zero input records every module's shapes, then the rules compose the
    bound from the root."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    shapes: dict[int, set[Any]] = {}
    tensors = itertools.chain(network.parameters(), network.buffers())
    device = next((t.device for t in tensors), torch.device("cpu"))
    with _recording(network, shapes), torch.no_grad():
        network(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    walk = _Walk(shapes, options or BoundOptions(), generator or torch.Generator().manual_seed(0),
                 dtype)
    return module_bound(network, "", walk)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def module_bound(module: nn.Module, path: str, walk: _Walk) -> LayerBound:
    """The bound of ``module`` at ``path``: by its rule when it has one, else from the graph
    of its traced forward pass (:func:`traced_bound`)."""
    site = LayerSite(module, path, walk)
    rule = rule_for(module)
    return traced_bound(site) if rule is None else rule(module, site)


# -- modules without a rule: the traced graph ------------------------------------------------


@functools.cache
def _rule_tracer() -> type[torch.fx.Tracer]:
    """The torch.fx tracer class that stops at the modules with a rule and traces through all
    others (made on first use: loading the plugins does not import torch)."""
    import torch

    class _RuleTracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return has_rule(m)

    return _RuleTracer


@dataclass(frozen=True)
class _Op:
    """A node of the traced graph: its bound's rows (``parts``), how its constant follows from
    those of its input-dependent arguments (``combine``), and its own factor when it has one
    input-dependent argument (None for sums and concatenations)."""

    parts: LayerBound
    combine: Callable[[Sequence[float]], float]
    factor: float | None
    name: str


def _trace(site: LayerSite) -> torch.fx.GraphModule:
    import torch

    module = site.module
    try:
        graph = _rule_tracer()().trace(module)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MetricError(
            f"lipschitz_bound: module {_show(site.path)} of type {_qualified(type(module))} has "
            f"no Lipschitz rule and torch.fx cannot trace its forward ({type(exc).__name__}: "
            f"{first}); register a rule for it with robaudit.plugins.metrics.bounds.lipschitz."
            f"register_rule({type(module).__name__}, rule) (see that module's docstring)"
        ) from None
    return torch.fx.GraphModule(module, graph)


def _logits_node(site: LayerSite, output: torch.fx.Node) -> torch.fx.Node:
    """The node of the logits among the traced outputs: the output, a tuple's first element,
    a dict's ``logits`` (as :func:`robaudit.model.as_logits` unwraps them)."""
    import torch

    value = output.args[0]
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    elif isinstance(value, dict):
        value = value.get("logits")
    if not isinstance(value, torch.fx.Node):
        raise MetricError(f"lipschitz_bound: the traced output of module {_show(site.path)} is "
                          "not a tensor, a tuple of them, nor a dict with `logits`")
    return value


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _shape_of(node: torch.fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise MetricError(f"lipschitz_bound: the shape at fx node {node.name!r} is unknown")
    return tuple(int(n) for n in meta.shape)


def _output_shape(node: torch.fx.Node) -> tuple[int, ...]:
    """A node's output shape; the first tensor's for an op returning several (batch norm's
    ``_native_batch_norm_legit_no_training``)."""
    meta = node.meta.get("tensor_meta")
    if not hasattr(meta, "shape") and isinstance(meta, (tuple, list)) and meta:
        meta = meta[0]
    if not hasattr(meta, "shape"):
        raise MetricError(f"lipschitz_bound: the shape at fx node {node.name!r} is unknown")
    return tuple(int(n) for n in meta.shape)


def _input_text(node: torch.fx.Node) -> str:
    """A node's shape for the table (one sample), or "" for a tuple of tensors."""
    meta = node.meta.get("tensor_meta")
    return _shape_text(meta.shape[1:]) if hasattr(meta, "shape") else ""


def _node_op(site: LayerSite, graph_module: torch.fx.GraphModule, node: torch.fx.Node,
             live: set[torch.fx.Node]) -> _Op | None:
    """The :class:`_Op` of a node that depends on the input; None for a shape query."""

    inputs = live_args(node, live.__contains__)
    if node.op == "call_module":
        sub = graph_module.get_submodule(str(node.target))
        bound = site.recurse(sub, str(node.target))
        if len(inputs) != 1 or node.args[:1] != (inputs[0],):
            raise MetricError(
                f"lipschitz_bound: module {_show(_join(site.path, str(node.target)))} takes "
                f"{len(inputs)} input-dependent arguments; rules bound one-input modules")
        return _Op(bound, lambda ls, v=bound.value: v * ls[0], bound.value, str(node.target))
    name = op_name(node)
    if name in SHAPE_QUERIES:
        return None

    def constant(other: torch.fx.Node) -> torch.Tensor | None:
        return None if other in live else _constant_value(graph_module, other)

    layer = equivalent_layer(node, constant)
    if layer is not None:
        shapes = (_shape_of(inputs[0])[1:], _output_shape(node)[1:])
        site._walk.shapes[id(layer)] = {shapes}
        bound = site.recurse(layer, node.name)
        return _Op(bound, lambda ls, v=bound.value: v * ls[0], bound.value, name)
    rule = op_bound(node, live.__contains__, _shape_of, constant)
    if rule is None:
        raise MetricError(
            f"lipschitz_bound: no Lipschitz rule for operation {name!r} (fx node "
            f"{node.name!r}: {node.format_node()}) in module {_show(site.path)} of type "
            f"{_qualified(type(site.module))}; register a rule for that module with "
            f"robaudit.plugins.metrics.bounds.lipschitz.register_rule("
            f"{type(site.module).__name__}, rule) (see that module's docstring)")
    rows: tuple[Row, ...] = ()
    if rule.factor is not None:
        rows = ({"layer": _join(site.path, node.name), "type": name,
                 "input": _input_text(inputs[0]), "size": "", "stride": "",
                 "bound": rule.factor, "exact": rule.exact, "in_product": True},)
    return _Op(LayerBound(rule.factor or 0.0, rows), rule.combine, rule.factor, name)


class _NotConstant(Exception):
    """A node's value depends on the input (or cannot be computed without it)."""


def _constant_value(graph_module: torch.fx.GraphModule, node: torch.fx.Node
                    ) -> torch.Tensor | None:
    """The tensor that a node which does not depend on the input holds: a parameter or buffer
    (``get_attr``), or an op on such tensors (``self.gamma.reshape(1, -1, 1, 1)``, a layer
    scale); None when it is not such a tensor."""
    import torch

    def value(arg: torch.fx.Node) -> Any:
        if arg.op == "get_attr":
            found: Any = graph_module
            for part in str(arg.target).split("."):
                found = getattr(found, part)
            return found
        if arg.op not in ("call_function", "call_method"):
            raise _NotConstant
        args = torch.fx.node.map_arg(arg.args, value)
        kwargs = torch.fx.node.map_arg(arg.kwargs, value)
        if arg.op == "call_method":
            return getattr(args[0], str(arg.target))(*args[1:], **kwargs)
        return arg.target(*args, **kwargs)  # type: ignore[operator]

    try:
        with torch.no_grad():
            result = value(node)
    except Exception:  # an input-dependent argument, or an op that needs one
        return None
    return result if isinstance(result, torch.Tensor) else None


def _common_prefix(names: Sequence[str]) -> str:
    parts = [name.split(".") for name in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _is_block(members: list[torch.fx.Node], ops: dict[torch.fx.Node, _Op]) -> bool:
    return len(members) > 1 or ops[members[0]].factor is None


def _segment(site: LayerSite, start: torch.fx.Node, members: list[torch.fx.Node],
             ops: dict[torch.fx.Node, _Op], live: set[torch.fx.Node], alone: bool
             ) -> LayerBound:
    """The factor of the graph between two cut nodes: a single one-input op's bound, or a
    block (several paths from ``start`` to the last member, e.g. a residual sum) whose constant
    is propagated from L(start) = 1 through the members. A block is named by the modules in
    it, or by the traced module when it is that module's only block (``alone``)."""
    last = members[-1]
    if not _is_block(members, ops):
        return ops[last].parts
    local = {start: 1.0}
    for node in members:
        local[node] = ops[node].combine([local[a] for a in live_args(node, live.__contains__)])
    names = [ops[n].name for n in members]
    modules = [str(n.target) for n in members if n.op == "call_module"]
    prefix = _common_prefix(modules) if len(modules) > 1 else ""
    kind = ("residual" if set(names) & SUMS else "concatenation" if set(names) & CONCATS
            else "block")
    name = (_join(site.path, prefix) if prefix else site.path or "(network)" if alone
            else _join(site.path, f"{members[0].name}…{last.name}"))
    row: Row = {"layer": name,
                "type": kind, "input": _input_text(start), "size": "",
                "stride": "", "bound": local[last], "exact": False, "in_product": True}
    inner = tuple({**r, "in_product": False} for n in members for r in ops[n].parts.rows)
    return LayerBound(local[last], (*inner, row))


def traced_bound(site: LayerSite) -> LayerBound:
    """The bound of a module without a rule, from its forward pass traced by torch.fx: the
    modules with a rule are leaves, functions and tensor methods are bounded by
    :mod:`.functional`. The graph is cut at the nodes that every path from the input to the
    logits passes through; each piece is a factor (a layer, an op, or a block such as a
    residual sum bounded by propagation through it), and the bound is their product."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    graph_module = _trace(site)
    module = site.module
    tensors = itertools.chain(module.parameters(), module.buffers())
    device = next((t.device for t in tensors), torch.device("cpu"))
    with torch.no_grad():
        ShapeProp(graph_module).propagate(
            torch.zeros(1, *site.input_shape, dtype=site._walk.dtype, device=device))
    nodes = list(graph_module.graph.nodes)
    source = next(n for n in nodes if n.op == "placeholder")
    logits = _logits_node(site, nodes[-1])
    needed = _ancestors(logits)
    live, ops = {source}, {}
    for node in nodes:
        if (node in needed and node.op in ("call_module", "call_function", "call_method")
                and any(a in live for a in node.all_input_nodes)):
            op = _node_op(site, graph_module, node, live)
            if op is not None:
                live.add(node)
                ops[node] = op
    if logits not in live:
        raise MetricError(f"lipschitz_bound: the logits of module {_show(site.path)} do not "
                          "depend on its input")
    order = [n for n in nodes if n in ops]
    pending = {n: sum(1 for u in n.users if u in ops) for n in [source, *order]}
    open_nodes, start, members = {source}, source, []
    segments: list[tuple[torch.fx.Node, list[torch.fx.Node]]] = []
    for node in order:
        members.append(node)
        for arg in set(live_args(node, live.__contains__)):
            pending[arg] -= 1
            if pending[arg] == 0:
                open_nodes.discard(arg)
        if pending[node] > 0:
            open_nodes.add(node)
        if node is logits or open_nodes == {node}:
            segments.append((start, members))
            start, members = node, []
        if node is logits:
            break
    alone = sum(_is_block(members, ops) for _, members in segments) == 1
    return site.chain([_segment(site, start, members, ops, live, alone)
                       for start, members in segments])


# -- rules: layers with weights ------------------------------------------------------------


def _linear_rule(module: nn.Linear, site: LayerSite) -> LayerBound:
    import torch

    norm = torch.linalg.matrix_norm(module.weight.detach(), ord=2)
    return site.leaf(float(norm), size=f"{module.in_features}×{module.out_features}")


def _conv_padding(module: nn.Conv1d | nn.Conv2d, kernel: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [(0, 0)] * len(kernel)
        totals = [d * (k - 1) for d, k in zip(module.dilation, kernel, strict=True)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in module.padding]


def _conv_rule(module: nn.Conv1d | nn.Conv2d, site: LayerSite) -> LayerBound:
    """Conv1d/Conv2d (as a 2-D convolution with a unit second dimension): formula (1) on the
    layer's input grid (``fourier``), or power iteration on the layer (``power_iteration``)."""
    from robaudit.ops.spectral import conv2d_fourier_bound, conv2d_operator

    weight = module.weight.detach()
    kernel = tuple(weight.shape[2:])
    padding = _conv_padding(module, kernel)
    stride, dilation = tuple(module.stride), tuple(module.dilation)
    shape = site.input_shape
    if weight.dim() == 3:
        weight, shape = weight.unsqueeze(-1), (*shape, 1)
        padding, stride, dilation = [*padding, (0, 0)], (*stride, 1), (*dilation, 1)
    settings: dict[str, Any] = {
        "stride": stride, "padding": tuple(padding), "dilation": dilation,
        "groups": module.groups, "padding_mode": module.padding_mode,
    }
    if site.options.method == "fourier":
        estimate = conv2d_fourier_bound(weight, shape[1:], **settings)
    else:
        estimate = site.operator_norm(conv2d_operator(weight, **settings), shape, weight)
    size = "×".join(str(n) for n in (module.in_channels, *kernel, module.out_channels))
    return site.leaf(estimate.value, size=size, stride=_dims_text(module.stride),
                     exact=estimate.exact)


def _batchnorm_rule(module: nn.modules.batchnorm._BatchNorm, site: LayerSite) -> LayerBound:
    """Batch norm in eval mode is the diagonal map x ↦ γ(x − μ)/√(σ² + ε) + β."""
    import torch

    if module.running_var is None or module.training:
        raise MetricError(
            f"lipschitz_bound: batch norm {_show(site.path)} normalises with batch statistics "
            f"(training mode or track_running_stats=False), so it is not a fixed map"
        )
    scale = torch.rsqrt(module.running_var.detach() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach()
    return site.leaf(float(scale.abs().max()), size=str(module.num_features))


def _normalize_rule(module: Normalize, site: LayerSite) -> LayerBound:
    return site.leaf(float(module.std.abs().reciprocal().max()))


# -- rules: pooling -------------------------------------------------------------------------


def _pool_matrix(pool: Callable[[torch.Tensor], torch.Tensor], size: int) -> torch.Tensor:
    """The matrix of a 1-D pooling: ``pool`` applied to the basis of length-``size`` signals
    laid out as a batch of size × 1 images."""
    import torch

    basis = torch.eye(size, dtype=torch.float64).view(size, 1, size, 1)
    return pool(basis).reshape(size, -1).T


def _avgpool_rule(module: nn.AvgPool2d | nn.AdaptiveAvgPool2d, site: LayerSite) -> LayerBound:
    """Average pooling acts on each channel as P_h ⊗ P_w (every window's weight and divisor is a
    product of a row and a column factor, also with padding, ``count_include_pad`` and
    ``ceil_mode``), so its exact norm is ‖P_h‖·‖P_w‖, each from a small dense matrix."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    height, width = site.input_shape[-2:]
    out_h, out_w = site.output_shape[-2:]
    if isinstance(module, nn.AdaptiveAvgPool2d):
        factors = [_pool_matrix(lambda x, o=out_h: F.adaptive_avg_pool2d(x, (o, 1)), height),
                   _pool_matrix(lambda x, o=out_w: F.adaptive_avg_pool2d(x, (o, 1)), width)]
        size, stride, scale = f"→{out_h}×{out_w}", "", 1.0
    else:
        kernel, steps, pads = (_pair(v) for v in (module.kernel_size,
                                                   module.stride or module.kernel_size,
                                                   module.padding))
        divisor = module.divisor_override
        factors = [
            _pool_matrix(
                lambda x, k=k, s=s, p=p: F.avg_pool2d(
                    x, (k, 1), (s, 1), (p, 0), module.ceil_mode, module.count_include_pad,
                    1 if divisor else None),
                n)
            for n, k, s, p in zip((height, width), kernel, steps, pads, strict=True)
        ]
        scale = 1.0 / divisor if divisor else 1.0
        size, stride = _dims_text(kernel), _dims_text(steps)
    norm = scale * math.prod(float(torch.linalg.matrix_norm(f, ord=2)) for f in factors)
    return site.leaf(norm, size=size, stride=stride)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _max_cover(starts: torch.Tensor, ends: torch.Tensor, size: int) -> int:
    """Largest number of windows [start, end) ∩ [0, size) that contain one position."""
    import torch

    positions = torch.arange(size)
    inside = (positions[None, :] >= starts[:, None]) & (positions[None, :] < ends[:, None])
    return int(inside.sum(0).max())


def _maxpool_rule(module: nn.MaxPool2d | nn.AdaptiveMaxPool2d, site: LayerSite) -> LayerBound:
    """Max pooling: √(M_h·M_w), M the largest number of windows that share one input position.

    Szegedy et al. call max pooling contractive (its Jacobian selects coordinates); that holds
    for windows that do not overlap (M = 1). With overlapping windows one input can be the
    maximum of M windows at once, so a perturbation of it moves M outputs: the Lipschitz
    constant is exactly √M (Σ_windows (max Δ)² ≤ Σ_i M·Δ_i², attained by one dominant pixel).
    """
    import torch
    from torch import nn

    height, width = site.input_shape[-2:]
    outs = site.output_shape[-2:]
    covers = []
    if isinstance(module, nn.AdaptiveMaxPool2d):
        for n, o in zip((height, width), outs, strict=True):
            index = torch.arange(o)
            covers.append(_max_cover((index * n) // o, -((-(index + 1) * n) // o), n))
        size, stride = f"→{outs[0]}×{outs[1]}", ""
    else:
        kernel, steps = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        pads, dilation = _pair(module.padding), _pair(module.dilation)
        for n, o, k, s, p, d in zip((height, width), outs, kernel, steps, pads, dilation,
                                    strict=True):
            taps = (torch.arange(o)[:, None] * s - p + d * torch.arange(k)[None, :]).reshape(-1)
            covers.append(_max_cover(taps, taps + 1, n))
        size, stride = _dims_text(kernel), _dims_text(steps)
    return site.leaf(math.sqrt(math.prod(covers)), size=size, stride=stride)


# -- rules: element-wise and shape layers ---------------------------------------------------


def _constant_rule(value: float) -> Rule:
    def rule(module: nn.Module, site: LayerSite) -> LayerBound:
        return site.leaf(value)

    return rule


def _leaky_relu_rule(module: nn.LeakyReLU, site: LayerSite) -> LayerBound:
    return site.leaf(max(1.0, abs(module.negative_slope)))


def _elu_rule(module: nn.ELU, site: LayerSite) -> LayerBound:
    return site.leaf(max(1.0, abs(module.alpha)))


def _prelu_rule(module: nn.PReLU, site: LayerSite) -> LayerBound:
    return site.leaf(max(1.0, float(module.weight.detach().abs().max())))


def _layernorm_rule(module: nn.LayerNorm, site: LayerSite) -> LayerBound:
    """LayerNorm x ↦ γ(x − μ)/√(var + ε) + β: its Jacobian is (I − 11ᵀ/n − uuᵀ)/√(var + ε)
    scaled by γ, with the bracket a contraction, so the constant is at most max|γ|/√ε
    (approached by inputs of near-constant entries: LayerNorm is far from 1-Lipschitz)."""
    import torch

    gamma = (module.weight.detach().abs().max() if module.weight is not None
             else torch.tensor(1.0))
    return site.leaf(float(gamma) / math.sqrt(module.eps), size=_shape_text(
        module.normalized_shape), exact=False)


def _attention_rule(module: nn.Module, site: LayerSite) -> LayerBound:
    raise MetricError(
        f"lipschitz_bound: attention {_show(site.path)} ({type(module).__name__}) has no global "
        "Lipschitz bound: softmax(QKᵀ)V multiplies input-dependent tensors, and dot-product "
        "self-attention is not Lipschitz (Kim et al. 2021, Theorem 3.1); no upper bound of "
        "this network exists to report")


# -- rules: composition ---------------------------------------------------------------------


def _sequential_rule(module: nn.Sequential, site: LayerSite) -> LayerBound:
    return site.chain([site.child(name) for name, _ in module.named_children()])


def _residual(site: LayerSite, branch: Sequence[str], shortcut: str | None) -> LayerBound:
    """relu(branch(x) + shortcut(x)): L ≤ L(branch) + L(shortcut), L(identity) = 1."""
    parts = [site.child(name) for name in branch]
    value = math.prod(part.value for part in parts)
    if shortcut is not None and getattr(site.module, shortcut) is not None:
        short = site.child(shortcut)
        parts.append(short)
        value += short.value
    else:
        value += 1.0
    return site.block(value, parts)


def _zoo_block_rule(module: nn.Module, site: LayerSite) -> LayerBound:
    """robaudit.zoo.resnet.BasicBlock: relu(branch(x) + shortcut(x))."""
    return _residual(site, ["branch"], "shortcut")


def _torchvision_basic_rule(module: nn.Module, site: LayerSite) -> LayerBound:
    """torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x) or x)."""
    return _residual(site, ["conv1", "bn1", "relu", "conv2", "bn2"], "downsample")


def _torchvision_bottleneck_rule(module: nn.Module, site: LayerSite) -> LayerBound:
    """torchvision Bottleneck: three conv-bn stages with ReLUs, plus downsample(x) or x."""
    branch = ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"]
    return _residual(site, branch, "downsample")


def _torchvision_resnet_rule(module: nn.Module, site: LayerSite) -> LayerBound:
    """torchvision ResNet: its layers in forward order (torch.flatten is 1-Lipschitz)."""
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
             "avgpool", "fc"]
    return site.chain([site.child(name) for name in names])


def _register_builtin_rules() -> None:
    from torch import nn

    from robaudit.model import Normalize

    register_rule(nn.Linear, _linear_rule)
    register_rule(nn.Conv1d, _conv_rule)
    register_rule(nn.Conv2d, _conv_rule)
    register_rule(nn.modules.batchnorm._BatchNorm, _batchnorm_rule)
    register_rule(Normalize, _normalize_rule)
    register_rule(nn.AvgPool2d, _avgpool_rule)
    register_rule(nn.AdaptiveAvgPool2d, _avgpool_rule)
    register_rule(nn.MaxPool2d, _maxpool_rule)
    register_rule(nn.AdaptiveMaxPool2d, _maxpool_rule)
    one = _constant_rule(1.0)
    for module_type in (nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.ReLU6, nn.Tanh,
                        nn.Hardtanh, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                        nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
        register_rule(module_type, one)
    register_rule(nn.Sigmoid, _constant_rule(0.25))
    register_rule(nn.GELU, _constant_rule(GELU_MAX_SLOPE))
    register_rule(nn.SiLU, _constant_rule(SILU_MAX_SLOPE))
    register_rule(nn.Hardswish, _constant_rule(1.5))
    register_rule(nn.Hardsigmoid, _constant_rule(1.0 / 6.0))
    register_rule(nn.LayerNorm, _layernorm_rule)
    register_rule(nn.MultiheadAttention, _attention_rule)
    register_rule(nn.LeakyReLU, _leaky_relu_rule)
    register_rule(nn.ELU, _elu_rule)
    register_rule(nn.PReLU, _prelu_rule)
    register_rule(nn.Sequential, _sequential_rule)
    register_rule("robaudit.zoo.resnet.BasicBlock", _zoo_block_rule)
    register_rule("torchvision.models.resnet.BasicBlock", _torchvision_basic_rule)
    register_rule("torchvision.models.resnet.Bottleneck", _torchvision_bottleneck_rule)
    register_rule("torchvision.models.resnet.ResNet", _torchvision_resnet_rule)



# -- the metric -----------------------------------------------------------------------------


class LipschitzParams(MetricParams):
    method: Literal["fourier", "power_iteration"] = Field(
        "fourier",
        description="convolutions: 'fourier' = the paper's formula (1) on the layer's padded "
                    "input grid (exact for circular padding, an upper bound otherwise); "
                    "'power_iteration' = the exact norm of the layer as applied",
    )
    iterations: int = Field(500, ge=1, le=100_000,
                            description="power iteration: most steps per layer")
    tol: float = Field(1e-6, gt=0.0, lt=1.0,
                       description="power iteration: stop at this relative change")
    lower_points: int = Field(32, ge=0, description="local lower bound: audit points searched "
                                                     "(0: none)")
    lower_iterations: int = Field(20, ge=1, le=10_000,
                                  description="local lower bound: power iterations of JᵀJ "
                                              "per point")
    ascent_steps: int = Field(10, ge=0, le=10_000,
                              description="local lower bound: gradient-ascent steps on the "
                                          "difference quotient per point")


class LipschitzBound(Metric):
    """Upper L2 Lipschitz bound of the network: the product of per-layer operator norms.

    Szegedy et al. (2014), section 4.3 and Table 5: ‖φ(x) − φ(x + r)‖ ≤ L‖r‖ with L = Π_k L_k.
    value: L for the logits of ``ctx.model.network`` (lower is better); details["layers"]: the
    per-layer table (layer, type, input shape, size C×k×k×D or in×out, stride, bound, whether
    the bound is the layer's exact constant, whether it is a factor of the product).

    Choices where the paper is silent or too coarse:

    - Weights only. One forward pass of a zero input records each module's input shape, since
      the norm of a convolution depends on its input size.
    - Convolutions, ``method: fourier``: formula (1) with the DFT of the kernels on the input
      grid padded by the layer's padding and rounded up to a multiple of the stride, reduced
      by batched SVDs. The scale (Δ₁Δ₂)^{-1/2} with the unnormalised DFT replaces the paper's
      Δ^{-2} (checked against dense singular values). Exact for circular padding when the
      outputs tile the grid; for zero padding an upper bound (the input embeds isometrically,
      the outputs are a subset), tight within a few percent on 3×3 layers; reflect/replicate
      padding multiply it by the padding map's norm. ``method: power_iteration``: the exact
      norm of each convolution as applied (block power iteration with the autograd adjoint);
      it approaches the norm from below, to ``tol``. Linear layers use the exact largest
      singular value with either method.
    - Batch norm (eval): max |γ/√(σ²+ε)|; Normalize: max 1/std; ReLU, Tanh, Hardtanh, Softplus,
      ReLU6, dropout (eval) and reshapes: 1; LeakyReLU/ELU/PReLU: max(1, |slope|); Sigmoid: ¼.
    - Max pooling: 1 for non-overlapping windows as in the paper, √M in general (M the most
      windows sharing an input), its exact constant. Average pooling: its exact operator norm
      (separable, ‖P_h‖·‖P_w‖).
    - Residual blocks relu(branch(x) + shortcut(x)): L(branch) + L(shortcut), i.e.
      1 + L(branch) for an identity shortcut (the block's own row is the product factor).
    - Modules without a rule are traced (module docstring); an op without a rule and
      attention (softmax(QKᵀ)V is not globally Lipschitz, Kim et al. 2021) are errors naming
      it; rules are added with :func:`register_rule`. LayerNorm: max|γ|/√ε (an upper bound);
      GELU and SiLU: their largest slopes 1.1289 and 1.0998; softmax: 1.
    - Beside the bound, details give a local lower bound (:mod:`.local`): the largest
      ‖J(x)‖₂ (power iteration) or difference quotient (gradient ascent) found around the
      first ``lower_points`` audit points, and ``bound_over_lower``, the upper bound's ratio
      to it: how loose the product of layer norms is on this network.

    Runs whole on one process: it reads the weights and a few audit points (design §8).
    """

    name: ClassVar[str] = "lipschitz_bound"
    Params: ClassVar[type[MetricParams]] = LipschitzParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Szegedy et al. 2014, section 4.3, formula (1) and Table 5"
    uses_data: ClassVar[bool] = False
    has_interval: ClassVar[bool] = False

    def compute(self, ctx: AuditContext, params: LipschitzParams) -> MetricResult:
        import torch

        data = ctx.data()
        dtype = data.x.dtype if data.x.is_floating_point() else torch.float32
        options = BoundOptions(params.method, params.iterations, params.tol)
        bound = network_bound(ctx.model.network, tuple(data.x.shape[1:]), options=options,
                              generator=ctx.generator, dtype=dtype)
        factors = [row for row in bound.rows if row["in_product"]]
        logs = [math.log10(row["bound"]) if row["bound"] > 0 else -math.inf for row in factors]
        cumulative = [sum(logs[: i + 1]) for i in range(len(logs))]
        largest = max(factors, key=lambda row: row["bound"], default=None)
        details: dict[str, Any] = {
            "layers": [dict(row) for row in bound.rows],
            "factors": len(factors),
            "log10_bound": cumulative[-1] if cumulative else 0.0,
            "largest_factor": largest["bound"] if largest else 1.0,
            "largest_factor_layer": largest["layer"] if largest else "",
            "exact_factors": sum(bool(row["exact"]) for row in factors),
            "method": params.method,
            "input_shape": _shape_text(data.x.shape[1:]),
        }
        details.update(self.lower_details(ctx, params, bound.value))
        series = {"layer bound": tuple(logs), "product so far": tuple(cumulative)}
        if details.get("lower_bound"):
            series["local lower bound (whole network)"] = (
                (math.log10(details["lower_bound"]),) * len(factors))
        figure = LinePlot(
            title="Upper Lipschitz bound per layer (log10)",
            x=tuple(float(i) for i in range(1, len(factors) + 1)),
            series=series,
            xlabel="factor (layer or residual block, in forward order)",
            ylabel="log10 bound",
        )
        return MetricResult(value=bound.value, details=details, figures=[figure])

    def lower_details(self, ctx: AuditContext, params: LipschitzParams, upper: float
                      ) -> dict[str, Any]:
        """The local lower bound (:mod:`.local`) on the first ``lower_points`` audit samples
        and the upper bound's ratio to it (None when the logits do not move)."""
        if params.lower_points == 0:
            return {}
        x = ctx.data().x[: params.lower_points].to(ctx.device)
        low, high = ctx.model.input_range
        radius = 0.01 * (high - low) * math.sqrt(x[0].numel())
        lower = local_lower_bound(ctx.model.logits, x, iterations=params.lower_iterations,
                                  steps=params.ascent_steps, radius=radius,
                                  batch_size=ctx.batch_size, generator=ctx.generator)
        if not math.isfinite(lower.value):
            return {"lower_bound": None, "lower_bound_note": "the logits are not finite "
                                                             "around the audit points"}
        return {"lower_bound": lower.value, "lower_bound_points": lower.points,
                "lower_bound_sample": lower.sample,
                "bound_over_lower": upper / lower.value if lower.value > 0 else None}

    def floor(self, ctx: AuditContext, params: LipschitzParams) -> Floor:
        points = min(params.lower_points, len(ctx.data()))
        return Floor(forward=1, gradient=points * (2 * params.lower_iterations + 1
                                                   + params.ascent_steps + 1),
                     note="one forward of a zero input records the layers' input shapes; "
                          "the local lower bound differentiates around the audit points")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(LipschitzBound())
