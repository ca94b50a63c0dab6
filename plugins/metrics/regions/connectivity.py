"""``region_connectivity``: are classification regions connected? (Fawzi et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, Histogram, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import IncludedParams, included

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.ops.paths import PathResult

Scenario = Literal["data", "adversarial", "noise"]


class ConnectivityParams(IncludedParams):
    pairs: int = Field(100, ge=1, le=100_000,
                       description="pairs per scenario (the paper: 1000)")
    scenarios: list[Scenario] = Field(
        ["data", "adversarial", "noise"], min_length=1,
        description="data: two audit samples; adversarial: an audit sample and a sample of "
                    "another class moved into its class; noise: an audit sample and uniform "
                    "noise moved into its class",
    )
    step: float = Field(
        1e-2, gt=0, le=0.5,
        description="validity sampling spacing, as a fraction of ‖x₁ − x₂‖ (the paper: 1e-4; "
                    "1e-2 keeps a CI run short)",
    )
    max_depth: int = Field(12, ge=1, le=40, description="deepest recursion of FINDPATH")
    max_anchors: int = Field(128, ge=1, le=10_000, description="most anchor points per path")
    candidates: int = Field(
        4, ge=2,
        description="classes linearised by the targeted step: the target and the others with "
                    "the largest logits at the iterate (recomputed at every step)",
    )
    overshoot: float = Field(0.02, ge=0, le=1, description="the targeted step's overshoot")
    max_iter: int = Field(50, ge=1, le=10_000,
                          description="linearised steps of one targeted projection")


class RegionConnectivity(Metric):
    """Fraction of same-class pairs that FINDPATH joins by a path inside their class's region.

    Fawzi, Moosavi-Dezfooli, Frossard & Soatto (CVPR 2018), "Topology of classification
    regions", Algorithm 1 (FINDPATH; :mod:`robaudit.ops.paths`). For each scenario, ``pairs``
    pairs (x₁, x₂) of the same estimated class k̂ = k̂(x₁):

    - ``data``: x₁, x₂ two distinct audit samples predicted k̂;
    - ``adversarial``: x₂ an audit sample predicted as another class, moved into k̂'s region by
      the targeted DeepFool of :mod:`robaudit.ops.targeted`;
    - ``noise``: x₂ uniform noise in the input box, moved into k̂'s region the same way.

    value: the fraction of pairs connected, over all scenarios (higher is better; the paper
    finds 1). details, per scenario: the fraction, the mean number of anchors of the found paths
    (the paper: about 10), the mean path-length ratio D(p) = Σ‖p_i − p_{i+1}‖ / ‖p₀ − p_{n+1}‖
    (the paper: 1 + 10⁻⁴), the share of pairs whose straight segment is already valid, and
    the forward passes and projection steps per pair (``forwards_per_pair`` depends slightly
    on ``batch_size``: the validity points of a segment after its first point outside the
    region are skipped a chunk at a time; every other number does not).

    Choices: classes are the model's predictions on the audit split; x₁ is drawn uniformly
    from the samples of the classes with at least 2 samples (a class with fewer is listed in
    ``details.skipped_classes`` and never drawn). A pair whose x₂ the targeted step cannot
    move into k̂ within ``max_iter`` steps has no second point: it is counted in
    ``details`` (``unreached``; ``included``, the pairs used of those asked, per scenario
    and in all) and left out of the fraction (NaN in ``samples``). Those are the hard pairs,
    so a scenario whose included share is below ``min_included`` makes the check error
    (design §10). The ``adversarial`` scenario needs a sample of another predicted class:
    with a single predicted class it is an error. Validity is
    sampled at spacing ``step`` × ‖x₁ − x₂‖: the paper's 10⁻⁴ costs about 10⁴ forward passes
    per straight pair; the default 10⁻² misses only excursions out of the region shorter than
    1% of the pair's distance. The search is bounded by ``max_depth`` and ``max_anchors``;
    exhausting them is "not found" (on the digits ResNet, 64 anchors left about 5% of the
    adversarial and noise pairs not found, all of which 400 anchors connected with at most 124:
    hence the default 128). Projected midpoints and x₂ stay in the input box. The targeted
    step linearises ``candidates`` = 4 classes by default rather than DeepFool's 10: on the
    digits ResNet it gave the same connectivity and anchors, 1.8 times faster.
    Pairs and noise are drawn per pair from the check's generator, up front (the noise of all
    ``pairs`` noise pairs is held on the CPU); pairs are searched ``batch_size`` at a time.

    Runs whole on one process: its unit of work is a pair of samples drawn across the split
    (design §8).
    """

    name: ClassVar[str] = "region_connectivity"
    Params: ClassVar[type[MetricParams]] = ConnectivityParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = ("Fawzi et al. 2018, Empirical study of the topology and geometry "
                             "of deep networks, Algorithm 1 (FINDPATH)")
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def compute(self, ctx: AuditContext, params: ConnectivityParams) -> MetricResult:
        import numpy as np
        import torch

        from robaudit.ops.classgroups import ClassGroups
        from robaudit.ops.paths import PathResult
        from robaudit.ops.stats import wilson_interval

        data = ctx.data()
        logits = ctx.logits()
        groups = ClassGroups.of(logits.argmax(dim=1), num_classes=logits.shape[1])
        eligible = groups.eligible(2)
        if eligible.numel() == 0:
            raise MetricError("no predicted class has 2 audit samples: no pair to connect")
        if "adversarial" in params.scenarios and int((groups.counts > 0).sum()) < 2:
            only = int(groups.counts.argmax())
            raise MetricError(
                f"every audit sample is predicted as class {only}: the adversarial scenario "
                f"has no sample of another class to move into it (leave it out of scenarios)")
        lo, hi = ctx.model.input_range
        draws = []
        for scenario in params.scenarios:
            first = groups.draw_among(eligible, torch.rand(params.pairs, generator=ctx.generator))
            u = torch.rand(params.pairs, generator=ctx.generator)
            noise = (torch.rand((params.pairs, *data.x.shape[1:]), generator=ctx.generator,
                                dtype=data.x.dtype) if scenario == "noise" else None)
            draws.append((scenario, first, u, noise))
        task = ctx.progress(params.pairs * len(draws), "FINDPATH pairs")
        samples, rows, ratios, anchors = [], {}, [], []
        for scenario, first, u, noise in draws:
            cls = groups.labels[first]
            parts = []
            for start in range(0, params.pairs, ctx.batch_size):
                chunk = slice(start, start + ctx.batch_size)
                if scenario == "data":
                    second = data.x[groups.draw_partner(first[chunk], u[chunk])]
                elif scenario == "adversarial":
                    second = data.x[groups.draw_outside(cls[chunk], u[chunk])]
                else:
                    assert noise is not None
                    second = lo + (hi - lo) * noise[chunk]
                parts.append(self._chunk(ctx, params, data.x[first[chunk]], second,
                                         cls[chunk], scenario))
                task.advance(second.shape[0])
            connected = torch.cat([p[0] for p in parts])
            found = PathResult.concat([p[1] for p in parts])
            reached = torch.isfinite(connected)
            samples.append(connected)
            rows[scenario] = {**_summary(found, reached, connected), "included": included(
                int(reached.sum()), params.pairs, params.min_included,
                f"{scenario} pairs (second point moved into the class)")}
            ratios.append(found.ratio[found.found & reached])
            anchors.append(found.anchors[found.found & reached])
        per_pair = torch.cat(samples).numpy()
        usable = per_pair[np.isfinite(per_pair)]
        if usable.size == 0:
            raise MetricError("the targeted step moved no second point into its pair's class")
        successes = int(usable.sum())
        all_ratios = torch.cat(ratios).numpy()
        return MetricResult(
            value=successes / usable.size,
            samples=per_pair,
            ci=wilson_interval(successes, int(usable.size)),
            details={
                "scenarios": [{"scenario": k, **v} for k, v in rows.items()],
                "pairs": int(usable.size),
                "included": included(int(usable.size), per_pair.size, params.min_included,
                                     "pairs (second point moved into the class)"),
                "skipped_classes": (groups.counts == 1).nonzero().squeeze(1).tolist(),
                "mean_ratio_minus_1": (float(np.mean(all_ratios) - 1) if all_ratios.size
                                       else float("nan")),
            },
            figures=[
                Histogram(title="Anchor points per found path",
                          values=tuple(float(a) for a in torch.cat(anchors)),
                          xlabel="anchors n (the paper: about 10)"),
                Histogram(title="Path-length ratio D(p) − 1 of found paths",
                          values=tuple(float(r) - 1 for r in all_ratios),
                          xlabel="D(p) − 1 (the paper: about 1e-4)"),
            ],
        )

    def _chunk(self, ctx: AuditContext, params: ConnectivityParams, x1: torch.Tensor,
               source: torch.Tensor, cls: torch.Tensor, scenario: str
               ) -> tuple[torch.Tensor, PathResult]:
        """One chunk of pairs: make x₂ (moved into the class unless it is data), then search.
        Returns the per-pair connected flag (NaN where x₂ did not reach the class) and the
        search result of every pair (on the CPU; unreached pairs count as not found)."""
        import torch

        from robaudit.ops.paths import PathResult, find_paths
        from robaudit.ops.targeted import targeted_deepfool

        mua = ctx.model
        x1, source, cls = x1.to(ctx.device), source.to(ctx.device), cls.to(ctx.device)
        if scenario == "data":
            x2, reached = source, torch.ones_like(cls, dtype=torch.bool)
        else:
            moved = targeted_deepfool(
                mua.logits, source, cls, candidates=params.candidates,
                overshoot=params.overshoot, max_iter=params.max_iter,
                input_range=mua.input_range,
            )
            x2, reached = moved.point, moved.reached
        keep = reached.nonzero().squeeze(1)
        searched = find_paths(
            mua.logits, x1[keep], x2[keep], cls[keep], step=params.step,
            max_depth=params.max_depth, max_anchors=params.max_anchors,
            batch_size=ctx.batch_size, candidates=params.candidates,
            overshoot=params.overshoot, max_iter=params.max_iter, input_range=mua.input_range,
        )
        keep, reached = keep.cpu(), reached.cpu()
        found = PathResult(*(_spread(getattr(searched, f).cpu(), keep, reached.shape[0])
                             for f in PathResult.__dataclass_fields__))
        connected = torch.where(reached, found.found.double(), float("nan"))
        return connected, found

    def floor(self, ctx: AuditContext, params: ConnectivityParams) -> Floor:
        import numpy as np
        pairs = params.pairs * len(params.scenarios)
        per_pair = int(np.ceil(1 / params.step))
        return Floor(forward=pairs * per_pair,
                     note="a straight valid path: 1/step validity points per pair")


def _spread(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` of the searched pairs put back at ``index`` among ``size`` pairs; the others
    get "not found" (False, 0, or NaN for float fields)."""
    import torch

    fill = float("nan") if values.is_floating_point() else 0
    out = torch.full((size,), fill, dtype=values.dtype)
    out[index] = values
    return out


def _summary(found: PathResult, reached: torch.Tensor, connected: torch.Tensor
             ) -> dict[str, float | int]:
    """A scenario's row of details."""
    ok = found.found & reached
    usable = connected[reached]

    def mean(v: torch.Tensor) -> float:
        return float(v.double().mean()) if v.numel() else float("nan")

    return {
        "fraction": mean(usable),
        "pairs": int(reached.sum()),
        "unreached": int((~reached).sum()),
        "mean_anchors": mean(found.anchors[ok]),
        "max_anchors": int(found.anchors[ok].max()) if bool(ok.any()) else 0,
        "mean_ratio": mean(found.ratio[ok]),
        "max_ratio": float(found.ratio[ok].max()) if bool(ok.any()) else float("nan"),
        "straight": mean(found.straight[reached]),
        "budget_exhausted": int((~found.found & reached).sum()),
        "max_depth_reached": int(found.depth[reached].max()) if bool(reached.any()) else 0,
        "forwards_per_pair": mean(found.forwards[reached]),
        "projection_steps_per_pair": mean(found.projections[reached]),
    }


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(RegionConnectivity())
