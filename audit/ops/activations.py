"""Layer activations of a whole split, captured with forward hooks and reduced as streams.

The statistics behind the activation-pattern metrics of Khaitan (2024), §2.1–2.5: which units
fire (§3.1), which weight·activation interactions of an ``nn.Linear`` are significant (§2.1),
the per-class Bernoulli distributions of those interactions (§2.2, §2.4), and the per-class
Gram matrices whose ranks measure the class manifolds (§2.5).

A *site* is where a layer is read: the output of a named module, or the input of an
``nn.Linear`` (the default sites, so that a model needs no names). Every requested site is read
with hooks in the same batched forward pass, and each statistic is accumulated batch by batch:
memory depends on the layer widths and the number of classes, never on the split size.
Statistics are cached per run under ``("activations", model, split, site, kind, options)``, so
checks that read the same layers share one pass. A check that shards (design §8) reads its work
units instead (:func:`unit_statistics`): the counts of the units sum to the split's.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from robaudit.errors import MetricError, ParamError

if TYPE_CHECKING:
    from robaudit.context import AuditContext, ProgressTask
    from robaudit.metric import Unit
    from robaudit.model import ModelUnderAudit

Kind = Literal["units", "gram", "interactions"]
#: Elements of one chunk of the B × n_out × (n_in + 1) interaction tensor.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Site:
    """Where a layer is read: the output of ``module`` (``from_input`` False), or its input."""

    name: str
    module: nn.Module = field(compare=False, repr=False)
    from_input: bool

    @property
    def label(self) -> str:
        """How reports name the site: ``fc1`` or ``input of fc2``."""
        return f"input of {self.name}" if self.from_input else self.name


# -- naming layers ------------------------------------------------------------------------------
def check_layer_names(model: ModelUnderAudit, names: Sequence[str] | None, key: str = "layers",
                      linear: bool = False) -> None:
    """Raise :class:`ParamError` for a name that is not a submodule of the model (listing the
    closest names by :mod:`difflib`, with their types, and the modules whose type is close to
    the name: ``fc`` or ``Flaten`` find ``3 (Flatten)``), or, with ``linear``, for one that is
    not an nn.Linear."""
    if names is None:
        return
    modules = dict(model.module.named_modules())
    known = [name for name in modules if name]
    for name in names:
        if name not in modules or not name:
            types = {type(m).__name__.lower(): n for n, m in modules.items() if n}
            by_type = [types[t] for t in difflib.get_close_matches(name.lower(), types, n=3)]
            close = list(dict.fromkeys(
                difflib.get_close_matches(name, known, n=5, cutoff=0.3) + by_type)) or known[:5]
            shown = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in close)
            raise ParamError(key, f"no module named {name!r}; closest: "
                                  f"{shown or '(the model has no submodules)'}")
        if linear and not isinstance(modules[name], nn.Linear):
            linears = [n for n in known if isinstance(modules[n], nn.Linear)]
            raise ParamError(key, f"{name!r} is a {type(modules[name]).__name__}, not an "
                                  f"nn.Linear; the model's nn.Linear: {', '.join(linears)}")


def _linears(model: ModelUnderAudit) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.module.named_modules() if isinstance(m, nn.Linear)]


def output_sites(model: ModelUnderAudit, names: Sequence[str] | None) -> list[Site]:
    """The outputs of the named modules, or by default the inputs of the last two nn.Linear
    (design §6). Raises MetricError when the default finds no nn.Linear."""
    if names is not None:
        modules = dict(model.module.named_modules())
        return _unique([Site(n, modules[n], False) for n in names])
    linears = _linears(model)
    if not linears:
        raise MetricError("the model has no nn.Linear, whose inputs are the default layers; "
                          "name modules with the `layers` param")
    return [Site(n, m, True) for n, m in linears[-2:]]


def linear_sites(model: ModelUnderAudit, names: Sequence[str] | None) -> list[Site]:
    """The inputs of the named nn.Linear modules, or by default of the last nn.Linear."""
    linears = _linears(model)
    if names is not None:
        chosen = dict(linears)
        return _unique([Site(n, chosen[n], True) for n in names])
    if not linears:
        raise MetricError("the model has no nn.Linear: significant interactions (Khaitan 2024, "
                          "§2.1) are defined on the weights of a linear layer")
    return [Site(linears[-1][0], linears[-1][1], True)]


def _unique(sites: list[Site]) -> list[Site]:
    return list(dict.fromkeys(sites))


# -- capture ------------------------------------------------------------------------------------
@contextmanager
def capture(model: ModelUnderAudit, sites: Sequence[Site],
            out: dict[Site, torch.Tensor]) -> Iterator[None]:
    """While inside, every forward pass of ``model.network`` stores each site's tensor in
    ``out``, flattened to (batch, units). A site whose tensor is not a tensor is a MetricError."""
    if isinstance(model.module, torch.jit.ScriptModule):
        raise MetricError("reading layers takes forward hooks, which TorchScript models do not "
                          "take; audit the nn.Module through `model.factory`")

    def store(site: Site, value: object) -> None:
        if not isinstance(value, torch.Tensor):
            raise MetricError(f"layer {site.label!r} gives a {type(value).__name__}, not a "
                              "tensor; name a module whose output is one tensor")
        out[site] = value.flatten(1) if value.dim() > 1 else value[:, None]

    handles = []
    for site in sites:
        if site.from_input:
            def pre(_m: nn.Module, args: tuple[object, ...], site: Site = site) -> None:
                store(site, args[0] if args else None)
            handles.append(site.module.register_forward_pre_hook(pre))
        else:
            def post(_m: nn.Module, _a: object, output: object, site: Site = site) -> None:
                store(site, output)
            handles.append(site.module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def read_layers(model: ModelUnderAudit, sites: Sequence[Site], x: torch.Tensor
                ) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
    """The sites' tensors and the logits of the batch ``x``, from one forward pass."""
    out: dict[Site, torch.Tensor] = {}
    with capture(model, sites, out):
        logits = model.logits(x)
    missing = [s.label for s in sites if s not in out]
    if missing:
        raise MetricError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
    return out, logits


# -- significant interactions (§2.1) -----------------------------------------------------------
def significance(h: torch.Tensor, layer: nn.Linear, count_bias: bool = True) -> torch.Tensor:
    """Khaitan (2024), §2.1: the B × n_out × (n_in + 1) matrix of significant interactions of
    ``layer`` at its inputs ``h`` (B × n_in): 1 where significant, else 0 (in h's dtype).

    Row i of a sample's matrix holds the products w_ij·h_j and, as one more column, the bias
    b_i (zero for a layer without bias); entry (i, j) is significant when its share of the
    row's sum exceeds 1/n: (x_ij / Σ_j x_ij) > 1/n. Choices where the paper is ambiguous: with
    ``count_bias`` n = n_in + 1, the number of columns of the matrix (the paper's "number of
    columns", and the average share of a column); without it n = n_in (its "number of input
    features"). The share is the signed ratio as written, so with a negative row sum a
    negative product can be significant; a row whose sum is exactly 0 has no significant entry.
    """
    weight = layer.weight
    bias = layer.bias if layer.bias is not None else torch.zeros_like(weight[:, 0])
    n_out, n_in = weight.shape
    threshold = 1.0 / (n_in + 1 if count_bias else n_in)
    # x_ij / s_i > t  ⇔  sign(s_i)·x_ij > t·|s_i|  (s_i ≠ 0), without dividing; s_i = 0 never
    # passes since then both sides are 0. s_i is the row sum, i.e. the layer's own output.
    total = (h @ weight.T + bias).detach()
    sign, bound = total.sign(), threshold * total.abs()
    with torch.no_grad():
        out = torch.empty(h.shape[0], n_out, n_in + 1, dtype=h.dtype, device=h.device)
        torch.mul(h[:, None, :], weight[None], out=out[:, :, :n_in])
        out[:, :, n_in] = bias
        return out.mul_(sign[:, :, None]).gt_(bound[:, :, None])


# -- streamed statistics ------------------------------------------------------------------------
@dataclass
class UnitStats:
    """Per-class sample counts (C) and per-class active counts of every unit (C × D)."""

    samples: torch.Tensor
    active: torch.Tensor

    @property
    def frequency(self) -> torch.Tensor:
        """Per unit, the fraction of all samples on which it is active (> 0)."""
        return self.active.sum(0).double() / max(1, int(self.samples.sum()))


@dataclass
class GramStats:
    """Per-class sample counts (C) and Gram matrices AᵀA of the class's rows (C × D × D)."""

    samples: torch.Tensor
    gram: torch.Tensor


@dataclass
class InteractionStats:
    """Per-class sample counts (C), per-class counts of each significant interaction
    (C × n_out × (n_in + 1)), and each sample's fraction of significant interactions (N)."""

    samples: torch.Tensor
    significant: torch.Tensor
    fraction: torch.Tensor


Stats = UnitStats | GramStats | InteractionStats


class _Accumulator:
    """One site's running statistic of one kind."""

    def __init__(self, site: Site, kind: Kind, classes: int, device: torch.device,
                 count_bias: bool) -> None:
        self.site, self.kind, self.classes, self.device = site, kind, classes, device
        self.count_bias = count_bias
        self.samples = torch.zeros(classes, dtype=torch.int64, device=device)
        self.total: torch.Tensor | None = None
        self.fractions: list[torch.Tensor] = []

    def update(self, h: torch.Tensor, y: torch.Tensor) -> None:
        self.samples += torch.bincount(y, minlength=self.classes)
        if self.kind == "units":
            self._add((h > 0).to(torch.float32), y)
        elif self.kind == "gram":
            h64 = h.to(torch.float64)
            if self.total is None:
                self.total = torch.zeros(self.classes, h.shape[1], h.shape[1],
                                         dtype=torch.float64, device=self.device)
            for c in torch.unique(y).tolist():
                rows = h64[y == c]
                self.total[c] += rows.T @ rows
        else:
            layer = self.site.module
            assert isinstance(layer, nn.Linear)
            if h.shape[1] != layer.in_features:
                raise MetricError(
                    f"nn.Linear {self.site.name!r} is applied to inputs of {h.shape[1]} values "
                    f"a sample, not {layer.in_features}: significant interactions need one "
                    "input vector a sample")
            per_sample = layer.weight.shape[0] * (layer.weight.shape[1] + 1)
            step = max(1, CHUNK_ELEMENTS // per_sample)
            for start in range(0, h.shape[0], step):
                part = h[start : start + step]
                sig = significance(part, layer, self.count_bias)
                self._add(sig, y[start : start + part.shape[0]])
                self.fractions.append(sig.flatten(1).mean(dim=1).cpu().double())

    def _add(self, values: torch.Tensor, y: torch.Tensor) -> None:
        """Per-class sums of 0/1 ``values`` by a one-hot product (exact in float32 for a batch
        of fewer than 2²⁴ samples), accumulated in int64."""
        onehot = torch.zeros(y.shape[0], self.classes, dtype=torch.float32, device=y.device)
        onehot[torch.arange(y.shape[0], device=y.device), y] = 1.0
        sums = (onehot.T @ values.flatten(1).to(torch.float32)).round().to(torch.int64)
        sums = sums.view(self.classes, *values.shape[1:])
        self.total = sums if self.total is None else self.total + sums

    def finish(self, dims: int) -> Stats:
        if self.kind == "units":
            active = self.total if self.total is not None else torch.zeros(
                self.classes, dims, dtype=torch.int64)
            return UnitStats(self.samples.cpu(), active.cpu())
        if self.kind == "gram":
            assert self.total is not None
            return GramStats(self.samples.cpu(), self.total.cpu())
        assert self.total is not None
        return InteractionStats(self.samples.cpu(), self.total.cpu(),
                                torch.cat(self.fractions))


def layer_statistics(ctx: AuditContext, sites: Sequence[Site], kind: Kind,
                     split: str | None = None, *, count_bias: bool = True,
                     max_dim: int | None = None) -> list[Stats]:
    """The statistic ``kind`` of each site over a split (default: the audit split), by class
    of the true labels; sites not in the run's cache are read together in one pass.

    units         :class:`UnitStats` (which units are > 0).
    gram          :class:`GramStats`; a site wider than ``max_dim`` units is a MetricError
                  (the per-class Gram matrices take C·D² float64 numbers).
    interactions  :class:`InteractionStats` of the nn.Linear whose input the site is.
    """
    name = split or ctx.split
    classes = split_classes(ctx, name)
    option = count_bias if kind == "interactions" else None

    def key(site: Site) -> tuple[object, ...]:
        return ("activations", ctx.model.name, name, site.name, site.from_input, kind, option)

    missing = [s for s in sites if key(s) not in ctx.cache]
    if missing:
        task = ctx.progress(len(ctx.data(name)), f"reading {len(missing)} layer(s)")
        computed = _pass(ctx, missing, kind, ctx.batches(name), classes, count_bias, max_dim,
                         task)
        for site in missing:
            ctx.cache.get_or_compute(key(site), lambda site=site: computed[site])
    return [ctx.cache.get_or_compute(key(s), lambda: None) for s in sites]


def split_classes(ctx: AuditContext, split: str | None = None) -> int:
    """The model's number of classes; MetricError when the split (default: the audit split)
    is empty or has labels outside them."""
    name = split or ctx.split
    data = ctx.data(name)
    if len(data) == 0:
        raise MetricError(f"split {name!r} is empty")
    classes = ctx.model.num_classes(data.x[:1])
    if int(data.y.max()) >= classes or int(data.y.min()) < 0:
        raise MetricError(f"labels of split {name!r} are outside the model's {classes} classes")
    return classes


def unit_statistics(ctx: AuditContext, sites: Sequence[Site], kind: Kind, unit: Unit,
                    classes: int, *, count_bias: bool = True) -> list[Stats]:
    """The statistic ``kind`` (``units`` or ``interactions``) of each site over one work unit
    (design §8) of the audit split, by class of the true labels (``classes`` from
    :func:`split_classes`): the accumulation of :func:`layer_statistics` on the unit's batch,
    so the units' counts sum to the split's and their per-sample fractions are the split's
    rows. Not cached: each unit is read once per check."""
    stats = _pass(ctx, sites, kind, [ctx.unit_batch(unit)], classes, count_bias, None)
    return [stats[s] for s in sites]


def _pass(ctx: AuditContext, sites: Sequence[Site], kind: Kind,
          batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: int,
          count_bias: bool, max_dim: int | None, task: ProgressTask | None = None
          ) -> dict[Site, Stats]:
    """Read the sites over ``batches`` (x, y on the device), advancing ``task`` if given."""
    accumulators = {s: _Accumulator(s, kind, classes, ctx.device, count_bias) for s in sites}
    dims: dict[Site, int] = {}
    with torch.no_grad():
        for x, y in batches:
            read, _ = read_layers(ctx.model, sites, x)
            for site, h in read.items():
                if site not in dims and kind == "gram" and max_dim and h.shape[1] > max_dim:
                    raise MetricError(
                        f"layer {site.label!r} has {h.shape[1]} units, more than max_dim = "
                        f"{max_dim}: its per-class Gram matrices would take {classes} × "
                        f"{h.shape[1]}² numbers; raise max_dim or name a narrower layer")
                dims[site] = h.shape[1]
                accumulators[site].update(h, y)
            if task is not None:
                task.advance(x.shape[0])
    return {s: accumulators[s].finish(dims[s]) for s in sites}


# -- numerics on the statistics -------------------------------------------------------------
def gram_rank(gram: torch.Tensor, tol: float) -> int:
    """The numerical rank of a matrix A from its Gram matrix AᵀA: the number of singular values
    σ_i = √λ_i(AᵀA) above ``tol`` × the largest (0 for a zero matrix). Float64 eigenvalues
    resolve σ down to about 1e-8 σ_max, so ``tol`` should stay above 1e-6."""
    eigen = torch.linalg.eigvalsh(gram.double()).clamp_min(0).sqrt()
    top = float(eigen.max()) if eigen.numel() else 0.0
    if top == 0.0:
        return 0
    return int((eigen > tol * top).sum())


def gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """A factor F (D × k) with F Fᵀ = the Gram matrix AᵀA, from its eigendecomposition, keeping
    the k eigenvalues above 1e-14 × the largest (the others are rounding noise, far below any
    ``tol``² that :func:`stacked_rank` accepts). k ≤ the rows of A, often far below D."""
    eigen, vectors = torch.linalg.eigh(gram.double())
    top = float(eigen.max()) if eigen.numel() else 0.0
    keep = eigen > 1e-14 * top if top > 0 else torch.zeros_like(eigen, dtype=torch.bool)
    return vectors[:, keep] * eigen[keep].sqrt()


def stacked_rank(factors: Sequence[torch.Tensor], tol: float) -> int:
    """rank([A; B; …]) from the factors of :func:`gram_factor`: the Gram matrix of the stack is
    Σ F Fᵀ = [F_a F_b …][F_a F_b …]ᵀ, whose nonzero eigenvalues are those of the small
    (Σ k) × (Σ k) matrix [F_a F_b …]ᵀ[F_a F_b …]; counted as :func:`gram_rank` counts."""
    joined = torch.cat(list(factors), dim=1)
    if joined.shape[1] == 0:
        return 0
    small = joined.T @ joined if joined.shape[1] <= joined.shape[0] else joined @ joined.T
    return gram_rank(small, tol)


def bernoulli_probabilities(counts: torch.Tensor, samples: torch.Tensor,
                            smoothing: float) -> torch.Tensor:
    """Per class, the probability of each interaction being significant, smoothed additively:
    p = (count + α) / (n + 2α). α > 0 keeps every p inside (0, 1), so that no log and no KL
    meets a zero probability (α = 0.5 is the Jeffreys / Krichevsky–Trofimov estimate).
    ``counts`` is C × ..., ``samples`` C; returns C × K in float64."""
    flat = counts.flatten(1).double()
    n = samples.double()[:, None]
    return (flat + smoothing) / (n + 2 * smoothing)


def _h(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log() + (1 - p) * (1 - p).log())


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of independent Bernoulli units, per unit: mean_k h(p_k), per row of p."""
    return _h(p).mean(dim=-1)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P_a ‖ Q_b) (nats per unit) between every row a of ``p`` and every row b of ``q`` for
    independent Bernoulli units: mean_k [p log(p/q) + (1−p) log((1−p)/(1−q))]. A × B, from
    one matrix product (−H(P_a) minus the cross-entropy), clamped at 0 against rounding."""
    negative_entropy = -_h(p).sum(dim=1)
    cross = p @ q.log().T + (1 - p) @ (1 - q).log().T
    return ((negative_entropy[:, None] - cross) / p.shape[1]).clamp_min(0.0)  # rounding


def bernoulli_log_likelihood(sig: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Log-likelihood (nats per unit) of each sample's 0/1 pattern ``sig`` (B × K) under the
    independent Bernoulli distribution of its own row of ``p`` (B × K)."""
    sig = sig.double()
    return (sig * p.log() + (1 - sig) * (1 - p).log()).mean(dim=1)

