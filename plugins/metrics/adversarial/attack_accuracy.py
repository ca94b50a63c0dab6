"""Accuracy under perturbation: ``fgsm_accuracy``, ``pgd_accuracy`` and ``noise_accuracy``.

Each reports its accuracy per true class, and a gallery of the first audit samples clean,
perturbed and their perturbation with the predictions. ``pgd_accuracy``'s ``eps`` and
``noise_accuracy``'s ``sigma`` may be lists: the value is at the first, and the accuracy at each
is in ``details.curve`` and plotted against it (the curve foolbox users ask for). All three
are per sample and shard across processes (design §8): random starts and noise come from
per-sample seeds that ``fit`` draws for the whole split, and the first unit makes the gallery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.figures import Figure
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.ops.preflight import PREFLIGHT_DOC, PreflightParams

if TYPE_CHECKING:
    import numpy as np
    import torch

    from robaudit.context import AuditContext

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


def eps_levels(value: float | Sequence[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _preflight_details(gathered: Gathered, params: PreflightParams) -> dict[str, Any]:
    """``details.preflight`` (and ``warnings``) from the fit's findings; raises under
    ``preflight: error`` when there is one."""
    from robaudit.ops.preflight import preflight_details

    return preflight_details(gathered.fit.get("preflight", []), params.preflight)


def _accuracy_result(gathered: Gathered, figures: list[Figure], **details: object
                     ) -> MetricResult:
    """Robust accuracy from the per-sample 0/1 correctness ``robust`` (the first level's
    column), with Wilson's 95% interval and the accuracy per true class."""
    import numpy as np
    import torch

    from robaudit.ops.perclass import accuracy_result

    return accuracy_result(
        np.ascontiguousarray(gathered.arrays["robust"][:, 0]), gathered.arrays["label"],
        figures,
        clean_accuracy=float(torch.from_numpy(gathered.arrays["clean"]).mean()), **details)


def accuracy_curve(name: str, levels: list[float], robust: np.ndarray, title: str
           ) -> tuple[list[dict[str, float]], list[Figure]]:
    """``details.curve`` and its plot, in increasing level, when more than one level was
    asked for (``robust``: per-sample 0/1, a column per level)."""
    import torch

    if len(levels) < 2:
        return [], []
    accuracies = [float(torch.from_numpy(robust[:, j].copy()).mean())
                  for j in range(len(levels))]
    pairs = sorted(zip(levels, accuracies, strict=True))
    rows = [{name: level, "accuracy": acc} for level, acc in pairs]
    return rows, [LinePlot(title=title, x=tuple(p[0] for p in pairs),
                           series={"accuracy": tuple(p[1] for p in pairs)},
                           xlabel=name, ylabel="accuracy")]


def _gallery(ctx: AuditContext, title: str,
             perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Figure:
    """The first audit samples clean and perturbed by ``perturb(x, y)``, with predictions
    (made by the first unit: the same samples whichever unit sizes)."""
    from robaudit.ops.perclass import GALLERY_SAMPLES, gallery

    x = ctx.data().x[:GALLERY_SAMPLES].to(ctx.device)
    y = ctx.data().y[:GALLERY_SAMPLES].to(ctx.device)
    perturbed = perturb(x, y)
    return gallery(title, x, perturbed, y, ctx.model.predict(x), ctx.model.predict(perturbed))


def _clean_unit(ctx: AuditContext, unit: Unit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, clean_correct)`` of a work unit on the device; the clean predictions come from
    the run's shared forward pass (``ctx.unit_logits``)."""
    x, y = ctx.unit_batch(unit)
    logits = ctx.unit_logits(unit)
    correct = logits.argmax(dim=1) == ctx.data().y[unit.indices].to(logits.device)
    return x, y, correct.to(ctx.device)


def _unit_result(unit: Unit, y: torch.Tensor, clean: torch.Tensor, robust: list[torch.Tensor],
                 shown: Callable[[], Figure]) -> UnitResult:
    """A unit's per-sample arrays (``robust``: a column per level) and, for the first unit,
    the gallery."""
    import torch

    return UnitResult(
        {"robust": torch.stack(robust, dim=1).cpu(), "clean": clean.cpu(), "label": y.cpu()},
        {"gallery": shown()} if unit.index == 0 else {},
    )


class FGSMParams(PreflightParams):
    eps: float = Field(
        0.1, gt=0,
        description="ℓ∞ budget in input units (Goodfellow et al. use 0.25 on [0, 1] MNIST; "
                    "0.1 suits the 8×8 digits)",
    )


class FGSMAccuracy(SampleMetric):
    """Accuracy under the fast gradient sign method (one ℓ∞ gradient-sign step of size eps).

    Goodfellow, Shlens & Szegedy (ICLR 2015), section 4: x' = clip(x + eps · sign(∇ₓ J(x, y)))
    with J the cross-entropy of the true label, clipped to the model's input range. value: the
    fraction of the audit split still classified correctly at x' (robust accuracy); a sample
    misclassified when clean counts as not robust and is not attacked. samples: per-sample 0/1
    correctness; ci: Wilson's 95% score interval. Per sample, so it shards (design §8).
    """

    name: ClassVar[str] = "fgsm_accuracy"
    Params: ClassVar[type[MetricParams]] = FGSMParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Goodfellow et al. 2015, section 4 (FGSM)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def fit(self, ctx: AuditContext, params: FGSMParams) -> list[dict[str, str]]:
        """The preflight's model findings."""
        from robaudit.ops.preflight import audit_findings

        return audit_findings(ctx)

    def fit_summary(self, fitted: list[dict[str, str]]) -> dict[str, Any]:
        return {"preflight": fitted}

    def per_sample(self, ctx: AuditContext, params: FGSMParams, unit: Unit, fitted: Any
                   ) -> UnitResult:
        from robaudit.ops.attacks import fgsm

        x, y, clean = _clean_unit(ctx, unit)
        robust = clean.clone()
        if clean.any():
            adv = fgsm(ctx.model.logits, x[clean], y[clean], params.eps,
                       input_range=ctx.model.input_range)
            robust[clean] = ctx.model.predict(adv) == y[clean]
        return _unit_result(unit, y, clean, [robust], lambda: _gallery(
            ctx, f"FGSM at eps {params.eps:g}", lambda x, y: fgsm(
                ctx.model.logits, x, y, params.eps, input_range=ctx.model.input_range)))

    def reduce(self, params: FGSMParams, gathered: Gathered) -> MetricResult:
        return _accuracy_result(gathered, [gathered.extras[0]["gallery"]], eps=params.eps,
                                **_preflight_details(gathered, params))

    def floor(self, ctx: AuditContext, params: FGSMParams) -> Floor:
        n = len(ctx.data())
        return Floor(forward=2 * n, gradient=n,
                     note="clean and adversarial forward passes, one input gradient")


class PGDParams(PreflightParams):
    eps: Positive | Annotated[list[Positive], Field(min_length=1)] = Field(
        0.1, description="radius of the ℓp ball, in input units; a list gives the accuracy "
                         "curve, the value at the first")
    norm: Literal["linf", "l2"] = Field("linf", description="the ball's norm")
    steps: int = Field(20, ge=1, le=10_000, description="gradient steps per restart")
    step_size: float | None = Field(
        None, gt=0,
        description="step length; default 2.5 · eps / steps (the MadryLab `robustness` "
                    "library's rule)",
    )
    random_start: bool = Field(True, description="start at a uniform point of the ball")
    restarts: int = Field(1, ge=1, le=1000, description="independent random starts")


@dataclass(frozen=True)
class PGDFit:
    """PGD's per-sample seeds of the random starts and the preflight's model findings."""

    seeds: torch.Tensor
    preflight: list[dict[str, str]]


class PGDAccuracy(SampleMetric):
    """Accuracy under projected gradient descent in an ℓ∞ or ℓ2 ball (Madry et al. 2018).

    Madry et al. (ICLR 2018), section 2: ``steps`` steps of x ← Π(x + α · sign(∇ₓ J)) (ℓ∞) or
    x ← Π(x + α · ∇ₓ J / ‖∇ₓ J‖₂) (ℓ2) on the cross-entropy J of the true label, Π the
    projection onto the ball of radius eps around the clean x, every point clipped to the
    model's input range; the start is a uniform point of the ball when ``random_start``.
    α defaults to 2.5 · eps / steps, the rule of the MadryLab ``robustness`` library (Engstrom
    et al. 2019), not of the paper, which fixed α per data set (MNIST: 40 steps of 0.01 at
    eps = 0.3; CIFAR-10: 7 steps of 2/255 at eps = 8/255); with it the ``steps`` steps span
    2.5 · eps, more than the ball's diameter. value: robust accuracy, the fraction of the audit
    split classified correctly at every iterate of every restart: a sample counts robust only
    if no iterate of any restart is misclassified (a sample leaves the attack as soon as one
    is, and a clean misclassification is not robust). samples: per-sample 0/1; ci: Wilson.
    Each random start comes from its sample's own seed (drawn for the whole split by ``fit``),
    so the attack is per sample and shards (design §8).
    """

    name: ClassVar[str] = "pgd_accuracy"
    Params: ClassVar[type[MetricParams]] = PGDParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Madry et al. 2018, section 2 (PGD)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def fit(self, ctx: AuditContext, params: PGDParams) -> PGDFit:
        """The random starts' seeds, (restarts, N): restart-major, so that the first
        restarts' seeds do not depend on ``restarts``; the same seeds at every eps of a list.
        And the preflight's model findings."""
        from robaudit.ops.preflight import audit_findings
        from robaudit.ops.sampling import sample_seeds

        seeds = sample_seeds(ctx.generator, params.restarts, len(ctx.data()))
        return PGDFit(seeds, audit_findings(ctx))

    def fit_summary(self, fitted: PGDFit) -> dict[str, Any]:
        return {"preflight": fitted.preflight}

    def per_sample(self, ctx: AuditContext, params: PGDParams, unit: Unit, fitted: PGDFit
                   ) -> UnitResult:
        from robaudit.ops.attacks import pgd

        seeds = fitted.seeds
        x, y, clean = _clean_unit(ctx, unit)
        levels = eps_levels(params.eps)
        robust = [self._robust(ctx, params, eps, x, y, clean, seeds[:, unit.indices])
                  for eps in levels]
        eps, step = levels[0], params.step_size or 2.5 * levels[0] / params.steps
        return _unit_result(unit, y, clean, robust, lambda: _gallery(
            ctx, f"PGD {params.norm} at eps {eps:g}", lambda x, y: pgd(
                ctx.model.logits, x, y, eps=eps, norm=params.norm, steps=params.steps,
                step_size=step, random_start=params.random_start, seeds=seeds[0, :len(x)],
                input_range=ctx.model.input_range)))

    def reduce(self, params: PGDParams, gathered: Gathered) -> MetricResult:
        levels = eps_levels(params.eps)
        curve, figures = accuracy_curve("eps", levels, gathered.arrays["robust"],
                                f"PGD {params.norm} accuracy against eps")
        figures.append(gathered.extras[0]["gallery"])
        eps, step = levels[0], params.step_size or 2.5 * levels[0] / params.steps
        return _accuracy_result(gathered, figures, eps=eps, step_size=step,
                                **({"curve": curve} if curve else {}),
                                **_preflight_details(gathered, params))

    def _robust(self, ctx: AuditContext, params: PGDParams, eps: float, x: torch.Tensor,
                y: torch.Tensor, clean: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Per-sample robustness of a unit at one ``eps`` (``seeds``: the unit's columns)."""
        from robaudit.ops.attacks import pgd

        step = params.step_size or 2.5 * eps / params.steps
        robust = clean.clone()
        for restart in range(params.restarts):
            alive = robust.nonzero().squeeze(1)
            if alive.numel() == 0:
                break
            adv = pgd(
                ctx.model.logits, x[alive], y[alive], eps=eps, norm=params.norm,
                steps=params.steps, step_size=step, random_start=params.random_start,
                seeds=seeds[restart, alive.cpu()], input_range=ctx.model.input_range,
            )
            robust[alive] = ctx.model.predict(adv) == y[alive]
        return robust

    def floor(self, ctx: AuditContext, params: PGDParams) -> Floor:
        n = len(ctx.data()) * len(eps_levels(params.eps))
        return Floor(forward=n * (1 + params.restarts), gradient=n * params.steps * params.restarts,
                     note="every step of every restart (at every eps) on a sample that "
                          "survives them all")


class NoiseParams(MetricParams):
    sigma: NonNegative | Annotated[list[NonNegative], Field(min_length=1)] = Field(
        0.1, description="stddev of the Gaussian noise (Szegedy et al., Table 2: 0.1, 0.3); a "
                         "list gives the accuracy curve, the value at the first"
    )
    clip: bool = Field(True, description="clip the noisy inputs to the model's input range")


class NoiseAccuracy(SampleMetric):
    """Accuracy on inputs with additive Gaussian noise: the random-distortion baseline.

    Szegedy et al. (2014), section 4.2, the last rows of Tables 2 and 4: the error caused by
    Gaussian noise of stddev σ, the reference against which adversarial distortions of a
    similar size are judged. x' = x + σ·n, n ~ N(0, I) drawn per sample (each from its own
    seed drawn from the check's generator, so independent of ``batch_size``), clipped to the
    model's input range when ``clip`` (the paper does not say; its inputs live in [0, 1]).
    value: accuracy on x' over the audit split. samples: per-sample
    0/1 correctness (one noise draw each); ci: Wilson's 95% score interval. Per sample, so
    it shards (design §8).
    """

    name: ClassVar[str] = "noise_accuracy"
    Params: ClassVar[type[MetricParams]] = NoiseParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Szegedy et al. 2014, section 4.2, Tables 2 and 4 (noise rows)"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def fit(self, ctx: AuditContext, params: NoiseParams) -> torch.Tensor:
        """Every sample's noise seed (the same noise at every sigma)."""
        from robaudit.ops.sampling import sample_seeds

        return sample_seeds(ctx.generator, len(ctx.data()))

    def per_sample(self, ctx: AuditContext, params: NoiseParams, unit: Unit,
                   seeds: torch.Tensor) -> UnitResult:
        x, y, clean = _clean_unit(ctx, unit)
        levels = eps_levels(params.sigma)
        correct = [ctx.model.predict(self._noisy(ctx, params, sigma, x, seeds[unit.indices])) == y
                   for sigma in levels]
        return _unit_result(unit, y, clean, correct, lambda: _gallery(
            ctx, f"Gaussian noise at sigma {levels[0]:g}",
            lambda x, y: self._noisy(ctx, params, levels[0], x, seeds[:len(x)])))

    def reduce(self, params: NoiseParams, gathered: Gathered) -> MetricResult:
        levels = eps_levels(params.sigma)
        curve, figures = accuracy_curve("sigma", levels, gathered.arrays["robust"],
                                "accuracy against Gaussian noise sigma")
        figures.append(gathered.extras[0]["gallery"])
        return _accuracy_result(gathered, figures, sigma=levels[0],
                                **({"curve": curve} if curve else {}))

    def _noisy(self, ctx: AuditContext, params: NoiseParams, sigma: float, x: torch.Tensor,
               seeds: torch.Tensor) -> torch.Tensor:
        from robaudit.ops.sampling import per_sample_randn

        noise = per_sample_randn(seeds, x.shape[1:]).to(x.device, x.dtype)
        noisy = x + sigma * noise
        return noisy.clamp(*ctx.model.input_range) if params.clip else noisy

    def floor(self, ctx: AuditContext, params: NoiseParams) -> Floor:
        return Floor(forward=(1 + len(eps_levels(params.sigma))) * len(ctx.data()),
                     note="clean and noisy forward passes (at every sigma)")


FGSMAccuracy.__doc__ = f"{FGSMAccuracy.__doc__}\n    Preflight:\n{PREFLIGHT_DOC}\n"
PGDAccuracy.__doc__ = f"{PGDAccuracy.__doc__}\n    Preflight:\n{PREFLIGHT_DOC}\n"


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(FGSMAccuracy())
    register(PGDAccuracy())
    register(NoiseAccuracy())
