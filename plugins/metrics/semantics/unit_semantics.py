"""``unit_semantics``: are single feature units more meaningful than random directions?
(Szegedy et al. 2014, section 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError, ParamError
from robaudit.figures import ImageGrid
from robaudit.metric import IncludedParams, included

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext

#: Random subsets of ``top`` audit samples drawn for the chance level of purity.
CHANCE_DRAWS = 200


class UnitSemanticsParams(IncludedParams):
    units: int = Field(10, ge=1, le=100_000,
                       description="unit directions e_i inspected, and as many random directions")
    top: int = Field(8, ge=1, le=10_000,
                     description="audit images that most excite each direction")
    shown: int = Field(4, ge=0, le=50,
                       description="directions of each kind shown as image rows in the report "
                                   "(the paper's Figures 1–4 show 4)")


class UnitSemantics(Metric):
    """Label purity of the images that most excite single units vs random feature directions.

    Szegedy et al. (2014), section 3: for a direction u of the feature space g (the model's
    feature layer), the images x′ = argmax_{x ∈ I} ⟨g(x), u⟩ over held-out images I. For
    ``units`` coordinate directions e_i and as many random directions v, take the ``top``
    audit images with the largest ⟨g(x), u⟩; a direction's purity is the share of the most
    common (true) label among them. value: the mean purity of the unit directions (higher =
    units pick out one class). ``details.random_purity`` is the random directions' mean
    purity beside it: the paper's point is that the two are alike, so the space, not the
    individual units, carries the semantics. ``details.chance_purity`` is the purity of
    random sets of ``top`` audit images (labels carry no information about the direction).
    The report shows the top images of ``shown`` unit and random directions (the paper's
    Figures 1 and 2) when the inputs are images.

    Choices where the paper is silent: the units are drawn uniformly from the units that are
    not constant on the audit split (a dead unit ranks nothing; their count is in details);
    the random directions are standard Gaussian in the feature space (the paper's "random
    direction v ∈ ℝⁿ"), normalised; ties in ⟨g(x), u⟩ go to the earlier sample. The purity
    uses the true labels (the paper judges semantics by eye). Units, directions and chance
    sets are drawn from the check's generator. The features come from the split's cached
    forward pass; ``units`` larger than the number of non-constant units, or ``top`` larger
    than the split, is a located spec error (:meth:`check_data`).

    Ties decided by index are no answer (design §10): a direction whose ``top``-th largest
    ⟨g(x), u⟩ equals the next one on samples of different labels (e.g. a ReLU unit positive
    on fewer than ``top`` samples, the rest tied at 0) has no top set of its own, only the
    samples' order; it is left out,
    and the unit directions used are counted in ``details.included`` (below ``min_included``
    the check is error; random directions tied so are left out of ``random_purity``). A
    feature layer with no unit that varies on the audit split (dead units, a model that
    ignores its input) is error with that cause.

    Runs whole on one process: it ranks the whole split's samples by each unit (design §8).
    """

    name: ClassVar[str] = "unit_semantics"
    Params: ClassVar[type[MetricParams]] = UnitSemanticsParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Szegedy et al. 2014, section 3 (units of φ(x); Figures 1–4)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def check_data(self, ctx: AuditContext, params: UnitSemanticsParams) -> None:
        n = len(ctx.data())
        if params.top > n:
            raise ParamError("top", f"{params.top} top images asked for, but the audit split "
                                    f"has {n} samples")
        live = int(_varying(ctx.features()[0]).numel())
        if 0 < live < params.units:  # none varying: the model's fault, an error in compute
            raise ParamError("units", f"{params.units} units asked for, but the feature layer "
                                      f"has {live} units that vary on the audit split")

    def compute(self, ctx: AuditContext, params: UnitSemanticsParams) -> MetricResult:
        import torch

        data = ctx.data()
        feats, _ = ctx.features()
        varying = _varying(feats).cpu()
        if varying.numel() == 0:
            raise MetricError("no unit of the feature layer varies on the audit split (dead "
                              "units, or a model that ignores its input): no direction ranks "
                              "the images")
        if varying.numel() < params.units:
            raise MetricError(f"the feature layer has {varying.numel()} units that vary on the "
                              f"audit split, fewer than units = {params.units}")
        dim = feats.shape[1]
        pick = torch.randperm(varying.numel(), generator=ctx.generator)[:params.units]
        units = varying[pick]
        random = torch.randn(params.units, dim, generator=ctx.generator, dtype=torch.float64)
        random = random / random.norm(dim=1, keepdim=True)
        labels = data.y.cpu()
        unit_top, unit_tied = _top(feats[:, units.to(feats.device)], params.top, labels)
        random_top, random_tied = _top(feats.double() @ random.T.to(feats.device), params.top,
                                       labels)
        share = included(int((~unit_tied).sum()), params.units, params.min_included,
                         f"unit directions (the others tie at their top-{params.top} "
                         "boundary: their top images would be chosen by index)")
        unit_purity, unit_label = _purity(labels[unit_top])
        random_purity, random_label = _purity(labels[random_top])
        chance_sets = torch.stack([torch.randperm(len(data), generator=ctx.generator)[:params.top]
                                   for _ in range(CHANCE_DRAWS)])
        chance, _ = _purity(labels[chance_sets])
        value = float(unit_purity[~unit_tied].mean())
        untied_random = random_purity[~random_tied]
        figures = []
        if data.x.dim() in (3, 4) and params.shown > 0:
            for kind, top, purity, label, names in (
                ("unit", unit_top, unit_purity, unit_label, [f"unit {int(u)}" for u in units]),
                ("random direction", random_top, random_purity, random_label,
                 [f"random {i}" for i in range(params.units)]),
            ):
                rows = slice(0, params.shown)
                figures.append(ImageGrid(
                    title=f"Audit images that most excite a {kind} of the feature layer",
                    images=data.x[top[rows]].cpu().numpy(),
                    row_labels=tuple(f"{name}: purity {float(p):.2f} (label {int(lab)})"
                                     for name, p, lab in zip(names[rows], purity[rows],
                                                             label[rows], strict=True)),
                    captions=tuple(tuple(str(int(v)) for v in labels[row]) for row in top[rows]),
                ))
        return MetricResult(
            value=value,
            samples=unit_purity[~unit_tied].numpy(),
            details={
                "random_purity": (float(untied_random.mean()) if untied_random.numel()
                                  else float("nan")),
                "included": share,
                "random_tied": int(random_tied.sum()),
                "chance_purity": float(chance.mean()),
                "feature_dim": int(dim),
                "constant_units": int(dim - varying.numel()),
                "directions": [
                    *({"direction": f"unit {int(u)}", "purity": float(p), "label": int(lab),
                       "tied": bool(t)}
                      for u, p, lab, t in zip(units, unit_purity, unit_label, unit_tied,
                                              strict=True)),
                    *({"direction": f"random {i}", "purity": float(p), "label": int(lab),
                       "tied": bool(t)}
                      for i, (p, lab, t) in enumerate(zip(random_purity, random_label,
                                                          random_tied, strict=True))),
                ],
            },
            figures=figures,
        )

    def floor(self, ctx: AuditContext, params: UnitSemanticsParams) -> Floor:
        return Floor(forward=len(ctx.data()), note="features of the split, one forward pass")


def _varying(feats: torch.Tensor) -> torch.Tensor:
    """The indices of the feature units that are not constant over the split."""
    return ((feats.amax(dim=0) - feats.amin(dim=0)) > 0).nonzero().squeeze(1)


def _top(scores: torch.Tensor, top: int, labels: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``scores`` (N, R): the indices of its ``top`` largest (R, top), and
    whether the ``top``-th largest ties with the next among samples of different labels, so
    that the samples' order rather than the scores would set the purity (a tie among copies
    of one label changes nothing)."""
    import torch

    taken = min(top + 1, scores.shape[0])
    values, indices = scores.topk(taken, dim=0)
    tied = torch.zeros(scores.shape[1], dtype=torch.bool)
    if taken > top:
        for r in (values[top - 1] == values[top]).nonzero().flatten().tolist():
            at_boundary = (scores[:, r] == values[top - 1, r]).cpu()
            tied[r] = labels[at_boundary].unique().numel() > 1
    return indices[:top].T.cpu(), tied


def _purity(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of labels (R, top): the share of its most common label, and that label."""
    import torch

    counts = torch.nn.functional.one_hot(labels.long()).sum(dim=1)
    best = counts.max(dim=1)
    return best.values.double() / labels.shape[1], best.indices


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(UnitSemantics())

