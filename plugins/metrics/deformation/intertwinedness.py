"""``intertwinedness``: ITW_n and ITW_r of Ghorbani & Zou (2017, section 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError, ParamError
from robaudit.metric import IncludedParams, included

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.lazydata import Inputs

#: Default radii as quantiles of the audit-to-reference distances (see the docstring).
DEFAULT_QUANTILES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: The default ITW_n curve stops here (the paper's n = 1 … 1000) or at the reference size.
DEFAULT_MAX_N = 1000
#: Pairs drawn to estimate the distance quantiles that set the radii.
QUANTILE_PAIRS = 200_000


class IntertwinednessParams(IncludedParams):
    n: int = Field(10, ge=1, description="the n of ITW_n whose feature-space mean is the value")
    ns: list[int] | None = Field(
        None, min_length=1,
        description="the n of the ITW_n curves; default: 1, 2, 5, 10, 20, 50, ... up to 1000 "
                    "(the paper's range) or the reference size if smaller",
    )
    radii: list[float] = Field(
        list(DEFAULT_QUANTILES), min_length=1,
        description="the r of the ITW_r curves: quantiles in (0, 1] of the distances between "
                    "audit and reference samples in each space (radius_units: quantile), or "
                    "absolute input-space radii (radius_units: absolute)",
    )
    feature_radii: list[float] | None = Field(
        None, min_length=1,
        description="absolute feature-space radii, one per entry of radii (radius_units: "
                    "absolute only); default: radii",
    )
    radius_units: Literal["quantile", "absolute"] = "quantile"

    @model_validator(mode="after")
    def _consistent(self) -> IntertwinednessParams:
        if self.ns is not None and any(v < 1 for v in self.ns):
            raise ValueError("every entry of ns must be >= 1")
        if any(r <= 0 for r in self.radii) or any(r <= 0 for r in self.feature_radii or []):
            raise ValueError("radii must be > 0")
        if self.radius_units == "quantile":
            if any(r > 1 for r in self.radii):
                raise ValueError("with radius_units: quantile, radii are quantiles in (0, 1]")
            if self.feature_radii is not None:
                raise ValueError("feature_radii goes with radius_units: absolute")
        elif self.feature_radii is not None and len(self.feature_radii) != len(self.radii):
            raise ValueError("feature_radii needs one entry per entry of radii (paired rows)")
        return self


class Intertwinedness(Metric):
    """How many of a sample's nearest training samples share its class, in input and feature space.

    Ghorbani & Zou (2017), section 2 (Figure 2). For an audit sample x with label y:
    ITW_n(x) = the fraction of its n nearest reference (training) samples whose label is y;
    ITW_r(x) = the fraction of the reference samples within distance r of x whose label is y,
    defined only when there is at least one (samples with none are left out of the mean at that
    r, and their count is reported as ``no_neighbour`` in the curve table). Both are computed
    in the input space (flattened inputs, ℓ2) and in the feature space g (the model's feature
    layer). value: the mean feature-space ITW_n at ``n`` (higher = classes less intertwined in
    g); the per-sample values are the samples. ``details`` hold the mean input-space ITW_n at
    ``n``, both ITW_n curves and both ITW_r curves; two LinePlots draw input vs feature space.

    Choices where the paper is silent:
    - Radii. Input and feature distances live on unrelated scales, so one list of absolute radii
      cannot serve both spaces. By default (``radius_units: quantile``) each entry q of
      ``radii`` becomes, in each space separately, the q-quantile of the distances between
      audit and reference samples (over all pairs when there are at most 200,000, else
      estimated from 200,000 random pairs drawn from the check's generator): at quantile q
      about a fraction q of all reference samples lie within r of an average sample, so the
      two curves share a scale-free x axis. With
      ``radius_units: absolute``, ``radii`` are input-space radii and ``feature_radii``
      (default: the same list; else one per entry of ``radii``) feature-space radii.
    - The label of x is its true label; the n nearest use ℓ2 distance, ties broken arbitrarily.
    - When the reference split is the audit split itself (no separate training data: the
      same split name, or two splits holding the same input tensor), each sample is left out
      of its own neighbours (leave-one-out), in ITW_n, ITW_r and the distances that set the
      default radii (a sample and itself are no pair: their zero distance would pull the low
      quantiles down). ``duplicates`` in details counts audit samples with an exact copy in the
      reference split (input distance 0): a split that overlaps the reference inflates ITW,
      and this number shows it.
    - ``n`` (or an entry of ``ns``) larger than the reference set is a located spec error
      (:meth:`check_data`, exit 4, before anything runs); the default
      curve runs 1, 2, 5, 10, … up to n = 1000 as the paper's (or to the reference size when
      smaller).
    - Memory is tied to the batch, not to the splits: distances are computed block by block
      (queries × reference rows, each at most about batch_size × max(D, 4096) values, moved
      to the device one block at a time), the k nearest of a block of queries are reduced to
      their ITW_n before the next block, and the default radii keep only the sampled pairs'
      scalar distances. What grows with the audit size is the per-sample ITW_n (one value per
      entry of ``ns``) and ITW_r (one per radius).

    Undefined is an error, never a number (design §10): when every audit and reference
    sample has the same features (dead feature units, a model that ignores its input), every
    feature distance is 0, so the n nearest would be decided by the samples' order and the
    feature ITW_n would be the label share of the first reference samples: the check is
    error naming the cause. Likewise when every input is the same. A sample whose n-th and
    (n+1)-th nearest are at exactly the same distance, one of its own label and the other not
    (copies of one point under two labels), has an ITW_n set by the reference's order: it is
    left out of the value, counted in ``details.included`` (below ``min_included`` the check
    is error); ``details.ties`` counts such samples in each space.

    Runs whole on one process: each sample's value needs its neighbours among the whole
    split (design §8).
    """

    name: ClassVar[str] = "intertwinedness"
    Params: ClassVar[type[MetricParams]] = IntertwinednessParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Ghorbani & Zou 2017, section 2 (ITW_n, ITW_r, Figure 2)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def check_data(self, ctx: AuditContext, params: IntertwinednessParams) -> None:
        available = _candidates(ctx)
        for key, asked in (("n", params.n), ("ns", max(params.ns or [0]))):
            if asked > available:
                raise ParamError(key, f"{asked} nearest neighbours asked for, but the reference "
                                      f"split {ctx.reference!r} has only {available} candidates")

    def compute(self, ctx: AuditContext, params: IntertwinednessParams) -> MetricResult:
        import numpy as np
        import torch

        from robaudit.ops.neighbors import scan_neighbours

        data, ref = ctx.data(), ctx.data(ctx.reference)
        same_split = _same_split(ctx)
        available = _candidates(ctx)
        ns = (sorted(set(params.ns)) if params.ns is not None
              else _default_ns(min(available, DEFAULT_MAX_N)))
        largest = max([*ns, params.n])
        scanned = largest + 1 if available > largest else largest  # one more: boundary ties
        feats, _ = ctx.features()
        ref_feats, _ = ctx.features(ctx.reference)
        for space, (mine, theirs) in (("input", (data.x, ref.x)), ("feature", (feats, ref_feats))):
            _check_varies(space, mine, theirs, ctx.batch_size)
        device = ctx.device
        labels, ref_labels = data.y.to(device), ref.y.to(device)
        num_classes = int(max(labels.max(), ref_labels.max())) + 1
        exclude = torch.arange(len(data)) if same_split else None
        spaces = {"input": (data.x, ref.x), "feature": (feats, ref_feats)}
        columns = sorted({*ns, params.n})  # the ITW_n kept: ns and n
        divisor = torch.tensor(columns, device=device, dtype=torch.float64)
        task = ctx.progress(2, "intertwinedness (input and feature space)")
        per_n: dict[str, dict[int, torch.Tensor]] = {}
        ties: dict[str, torch.Tensor] = {}
        itw_r: dict[str, list[float]] = {}
        empty: dict[str, list[int]] = {}
        radii_used: dict[str, list[float]] = {}
        duplicates = 0
        for space, (queries, reference) in spaces.items():
            radii = self._radii(ctx, params, space, queries, reference, exclude)
            fractions, ratios, empties, tied = [], [], [], []
            query_chunk, reference_chunk = _chunks(ctx.batch_size, queries[0].numel(),
                                                   reference.shape[0], largest)
            for block in scan_neighbours(
                queries, reference, scanned, labels=ref_labels, radii=radii,
                num_classes=num_classes, exclude=exclude, device=device,
                query_chunk=query_chunk, reference_chunk=reference_chunk,
            ):
                own_labels = labels[block.start : block.stop]
                same = ref_labels[block.indices] == own_labels[:, None]
                tied.append(_boundary_tie(block.distances, same, params.n))
                same = same[:, :largest].double()
                fractions.append(same.cumsum(dim=1)[:, [m - 1 for m in columns]] / divisor)
                if space == "input":
                    nearest = reference[block.indices[:, 0].cpu()].flatten(1).to(device)
                    gap = (queries[block.start : block.stop].flatten(1).to(device) - nearest)
                    duplicates += int((gap.abs().amax(dim=1) == 0).sum())
                assert block.counts is not None
                counts = block.counts.double()
                total = counts.sum(dim=2)
                index = own_labels.view(-1, 1, 1).expand(-1, len(radii), 1)
                own = counts.gather(2, index).squeeze(2)
                ratios.append(torch.where(total > 0, own / total.clamp(min=1), torch.nan))
                empties.append((total == 0).sum(dim=0))
            table = torch.cat(fractions)
            per_n[space] = {m: table[:, i] for i, m in enumerate(columns)}
            ties[space] = torch.cat(tied).cpu()
            itw_r[space] = [float(v) for v in torch.cat(ratios).nanmean(dim=0).cpu()]
            empty[space] = [int(v) for v in torch.stack(empties).sum(dim=0).cpu()]
            radii_used[space] = radii
            task.advance(1)

        decided = ~ties["feature"]
        share = included(int(decided.sum()), decided.numel(), params.min_included,
                         f"samples (the others' {params.n}-th nearest in feature space ties "
                         "with the next across labels)")
        samples = per_n["feature"][params.n].cpu()[decided].numpy()
        curve_n = {s: [float(per_n[s][m].mean()) for m in ns] for s in spaces}
        n_table = [{"n": m, "input": curve_n["input"][i], "feature": curve_n["feature"][i]}
                   for i, m in enumerate(ns)]
        r_table = [
            {"r": params.radii[j], "input_radius": radii_used["input"][j],
             "feature_radius": radii_used["feature"][j],
             "input": itw_r["input"][j], "feature": itw_r["feature"][j],
             "input_no_neighbour": empty["input"][j], "feature_no_neighbour": empty["feature"][j]}
            for j in range(len(params.radii))
        ]
        return MetricResult(
            value=float(np.mean(samples)),
            samples=samples,
            details={
                "input_itw_n": float(per_n["input"][params.n].mean()),
                "n": params.n,
                "reference_samples": len(ref),
                "leave_one_out": same_split,
                "duplicates": duplicates,
                "included": share,
                "ties": {space: int(ties[space].sum()) for space in spaces},
                "itw_n_curve": n_table,
                "itw_r_curve": r_table,
            },
            figures=self._figures(params, ns, curve_n, itw_r, radii_used),
        )

    @staticmethod
    def _radii(ctx: AuditContext, params: IntertwinednessParams, space: str,
               queries: torch.Tensor, reference: torch.Tensor, exclude: torch.Tensor | None
               ) -> list[float]:
        import torch

        from robaudit.ops.neighbors import chunk_rows, pair_distances

        if params.radius_units == "absolute":
            chosen = params.feature_radii if space == "feature" else None
            return list(chosen or params.radii)
        rows, cols = queries.shape[0], reference.shape[0]
        if rows * cols <= QUANTILE_PAIRS:  # every pair
            a = torch.arange(rows).repeat_interleave(cols)
            b = torch.arange(cols).repeat(rows)
        else:
            a = torch.randint(0, rows, (QUANTILE_PAIRS,), generator=ctx.generator)
            b = torch.randint(0, cols, (QUANTILE_PAIRS,), generator=ctx.generator)
        if exclude is not None:  # leave-one-out: a sample is no neighbour of itself
            keep = b != exclude[a]
            a, b = a[keep], b[keep]
        dist = pair_distances(queries, reference, a, b, device=ctx.device,
                              chunk=chunk_rows(ctx.batch_size, queries[0].numel()))
        q = torch.as_tensor(params.radii, dtype=torch.float64)
        return [float(v) for v in torch.quantile(dist.double().cpu(), q)]

    @staticmethod
    def _figures(params: IntertwinednessParams, ns: list[int], curve_n: dict[str, list[float]],
                 itw_r: dict[str, list[float]], radii: dict[str, list[float]]) -> list[LinePlot]:
        figures = [LinePlot(
            title="ITW_n: same-class fraction of the n nearest training samples",
            x=tuple(float(m) for m in ns),
            series={"input space": tuple(curve_n["input"]),
                    "feature space": tuple(curve_n["feature"])},
            xlabel="n", ylabel="mean ITW_n", logx=True,
        )]
        if params.radius_units == "quantile" or radii["input"] == radii["feature"]:
            figures.append(LinePlot(
                title="ITW_r: same-class fraction of the training samples within r",
                x=tuple(float(r) for r in params.radii),
                series={"input space": tuple(itw_r["input"]),
                        "feature space": tuple(itw_r["feature"])},
                xlabel="r (quantile of the distances)" if params.radius_units == "quantile"
                else "r", ylabel="mean ITW_r", logx=True,
            ))
        else:
            for space in ("input", "feature"):
                figures.append(LinePlot(
                    title=f"ITW_r in {space} space", x=tuple(radii[space]),
                    series={f"{space} space": tuple(itw_r[space])},
                    xlabel="r", ylabel="mean ITW_r", logx=True,
                ))
        return figures

    def floor(self, ctx: AuditContext, params: IntertwinednessParams) -> Floor:
        extra = 0 if _same_split(ctx) else len(ctx.data(ctx.reference))
        return Floor(forward=len(ctx.data()) + extra,
                     note="features of the audit and reference splits, one forward pass each")


def _boundary_tie(distances: torch.Tensor, same: torch.Tensor, n: int) -> torch.Tensor:
    """Per query: whether its n-th and (n+1)-th nearest are at the same distance and the
    neighbours at that distance mix its own label and others (so ITW_n is the order's
    choice). ``distances`` and ``same`` (own label or not) are Q × k, nearest first; with
    k = n there is no (n+1)-th and no tie."""
    import torch

    if distances.shape[1] <= n:
        return torch.zeros(distances.shape[0], dtype=torch.bool, device=distances.device)
    boundary = distances[:, n - 1 : n]
    group = distances[:, : n + 1] == boundary
    own = same[:, : n + 1]
    return (group[:, n] & (group & own).any(dim=1) & (group & ~own).any(dim=1))


def _check_varies(space: str, audit: Inputs, reference: Inputs, chunk: int) -> None:
    """MetricError when every audit and reference row of a space is the same vector: every
    distance is 0 and the nearest neighbours would be decided by index (rows read ``chunk``
    at a time)."""
    from robaudit.lazydata import rows_equal

    first = audit[:1]
    if rows_equal(audit, first, chunk) and rows_equal(reference, first, chunk):
        cause = (" (g(x) is constant: dead units, or a model that ignores its input)"
                 if space == "feature" else "")
        raise MetricError(f"every audit and reference sample has the same {space} vector"
                          f"{cause}: every {space}-space distance is 0, so the nearest "
                          "neighbours would be decided by the samples' order")


def _same_split(ctx: AuditContext) -> bool:
    """Whether the reference split is the audit split: the same name, the same
    :class:`DataSplit`, or two splits holding the same input tensor."""
    data, ref = ctx.data(), ctx.data(ctx.reference)
    return ctx.reference == ctx.split or ref is data or ref.x is data.x


def _candidates(ctx: AuditContext) -> int:
    """Reference samples that can be a neighbour (the sample itself is left out when the
    reference split is the audit split)."""
    return len(ctx.data(ctx.reference)) - (1 if _same_split(ctx) else 0)


def _default_ns(available: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, … up to ``available`` (which ends the list)."""
    values, decade = [], 1
    while decade <= available:
        values.extend(m * decade for m in (1, 2, 5) if m * decade <= available)
        decade *= 10
    if values[-1] != available:
        values.append(available)
    return values


def _chunks(batch_size: int, dim: int, reference_size: int, k: int) -> tuple[int, int]:
    """Queries and reference rows per distance block: at most 4 × :func:`chunk_rows` of each
    (blocks large enough to keep the k-nearest merges few), and about batch_size × 4096
    candidate distances (the block and the k best so far)."""
    from robaudit.ops.neighbors import chunk_rows

    rows = 4 * chunk_rows(batch_size, dim)
    reference_chunk = min(reference_size, rows)
    return max(1, min(rows, batch_size * 4096 // (reference_chunk + k))), reference_chunk


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(Intertwinedness())
