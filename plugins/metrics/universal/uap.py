"""``uap_fooling_rate``: universal adversarial perturbations (Moosavi-Dezfooli et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from robaudit import Floor, ImagePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.ops.preflight import PREFLIGHT_DOC, PreflightParams

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.ops.uap import UAPFit

#: The default budget ξ per norm, for inputs in [0, 1] (see :class:`UAPFoolingRate`).
DEFAULT_EPS = {"linf": 0.1, "l2": 0.4}
#: How many leading singular values of the DeepFool normals are reported.
TOP_SINGULAR_VALUES = 10
#: The bytes (float32) of the boundary normals whose singular values are reported: those of
#: the leading audit samples that fit (:func:`spectrum_samples`), so that the reduce's memory
#: (the matrix and its SVD) does not grow with the split (design §8).
SPECTRUM_BYTES = 64 * 2**20


def spectrum_samples(dimension: int) -> int:
    """How many leading audit samples' normals (of ``dimension`` numbers each) the singular
    values are taken over: as many as :data:`SPECTRUM_BYTES` holds, at least
    :data:`TOP_SINGULAR_VALUES` (every sample of the digits' 64 dimensions; 1365 samples of
    3×64×64, 111 of 3×224×224)."""
    return max(TOP_SINGULAR_VALUES, SPECTRUM_BYTES // (4 * dimension))


class UAPFitParams(PreflightParams):
    """The parameters of a universal-perturbation fit (shared by every metric that fits one)."""

    eps: float = Field(
        DEFAULT_EPS["linf"], gt=0,
        description="the budget ξ: the radius of the ℓp ball of v (inputs in [0, 1]); when not "
                    "given: 0.1 for linf, 0.4 for l2")
    norm: Literal["linf", "l2"] = Field("linf", description="the norm p of the budget")
    delta: float = Field(0.2, ge=0, lt=1,
                         description="stop once the fit fooling rate reaches 1 − delta")
    max_passes: int = Field(10, ge=1, le=1000, description="at most this many passes")
    fit_limit: int = Field(
        500, ge=1,
        description="fit on at most this many reference samples (a random subset, drawn with "
                    "the spec's seed, when the reference split is larger)")
    method: Literal["deepfool", "sgd"] = Field(
        "deepfool", description="deepfool: the paper's Algorithm 1; sgd: Shafahi et al. 2020")
    overshoot: float = Field(0.02, ge=0, le=1, description="DeepFool's overshoot")
    max_iter: int = Field(50, ge=1, le=1000, description="DeepFool's iterations per call")
    candidates: int = Field(10, ge=2, description="DeepFool's candidate classes")
    batch: int = Field(64, ge=1, description="samples per mini-batch of the fit")
    step: float = Field(0.1, gt=0, le=1, description="sgd: step size as a fraction of eps")
    clamp: float = Field(2.0, gt=0, description="sgd: clamp of the per-sample cross-entropy")

    @model_validator(mode="before")
    @classmethod
    def _default_eps(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("eps") is None and data.get("norm") == "l2":
            return {**data, "eps": DEFAULT_EPS["l2"]}
        return data

    def fit_key(self) -> tuple[Any, ...]:
        """Every parameter the fit depends on (the method's own only)."""
        common = (self.method, self.eps, self.norm, self.delta, self.max_passes,
                  self.fit_limit, self.batch)
        if self.method == "deepfool":
            return (*common, self.overshoot, self.max_iter, self.candidates)
        return (*common, self.step, self.clamp)


def fit_subset(size: int, limit: int, generator: torch.Generator) -> torch.Tensor | None:
    """The sorted indices of ``limit`` samples drawn without replacement from ``size`` (a
    uniformly random subset, so it does not depend on how the split is ordered), or None
    (every sample) when ``size <= limit``."""
    import torch

    if size <= limit:
        return None
    return torch.randperm(size, generator=generator)[:limit].sort().values


def fitted_uap(ctx: AuditContext, params: UAPFitParams) -> UAPFit:
    """The universal perturbation of the audited model fitted on ``fit_limit`` samples of the
    reference split (:func:`fit_subset`), cached in ``ctx.cache`` under the model, the
    reference split and :meth:`UAPFitParams.fit_key`, so that every check with the same fit
    parameters shares one fit. The subset and then the fit's random order come from one
    generator seeded with the spec's seed (``ctx.run_seed``): a check's own seed and
    generator derive from the check id, so a fit drawn from them could not be shared between
    checks (nor reproduced by a check run alone). Both splits must be non-empty, and a fit
    that ends at v = 0 (no step was ever taken) is a MetricError (design §10)."""
    import torch

    from robaudit.ops.uap import fit_uap_deepfool, fit_uap_sgd

    if len(ctx.data()) == 0 or len(ctx.data(ctx.reference)) == 0:
        raise MetricError("a universal perturbation needs a non-empty audit and reference split")
    mua = ctx.model

    def compute() -> UAPFit:
        data = ctx.data(ctx.reference)
        generator = torch.Generator().manual_seed(ctx.run_seed)
        subset = fit_subset(len(data), params.fit_limit, generator)
        x = data.x[slice(None) if subset is None else subset].to(ctx.device)
        task = ctx.progress(params.max_passes, f"universal perturbation ({params.method})")

        def on_pass(index: int, rate: float) -> None:
            task.advance(1)

        common: dict[str, Any] = {
            "eps": params.eps, "norm": params.norm, "delta": params.delta,
            "max_passes": params.max_passes, "batch": params.batch,
            "input_range": mua.input_range, "generator": generator, "on_pass": on_pass,
        }
        if params.method == "deepfool":
            return fit_uap_deepfool(
                mua.logits, x, overshoot=params.overshoot, max_iter=params.max_iter,
                candidates=params.candidates, **common,
            )
        return fit_uap_sgd(mua.logits, x, step=params.step, clamp=params.clamp, **common)

    key = ("uap", mua.name, ctx.reference, *params.fit_key())
    fit = ctx.cache.get_or_compute(key, compute)
    if not bool(fit.perturbation.any()):
        step = ("no DeepFool step converged" if params.method == "deepfool"
                else "every loss gradient was zero")
        raise MetricError(
            f"the universal perturbation fitted on {ctx.reference!r} is v = 0: {step} at any "
            f"of its samples (a model whose logits do not depend on its input, or one pinned "
            f"by the input box), so no perturbation was tried and a fooling rate of 0 would "
            f"measure nothing")
    return fit


def fit_pass_floor(ctx: AuditContext, params: UAPFitParams) -> Floor:
    """The least work of the universal perturbation's fit, one pass over its samples: a
    prediction and a gradient per fit sample, with the deepfool fit (Moosavi-Dezfooli et al.
    2017, Algorithm 1) the further c − 1 class gradients of a DeepFool step (c = candidates −
    1), and the pass's fooling-rate forward pass. Shared by the floors of the checks that fit it
    (``uap_fooling_rate``, ``robustness_category``)."""
    fit = min(params.fit_limit, len(ctx.data(ctx.reference)))
    further = min(params.candidates, ctx.model.num_classes(ctx.data().x)) - 2
    stepped = fit if params.method == "deepfool" else 0
    return Floor(forward=2 * fit, gradient=fit, backward=stepped * further)


def unit_fooled(ctx: AuditContext, unit: Unit, delta: torch.Tensor) -> torch.Tensor:
    """Per sample of the work unit ``unit`` of the audit split (a CPU bool tensor), whether the
    prediction at clip(x + δ) differs from the clean prediction: δ one universal v (the shape
    of a sample) or one perturbation per sample of the unit, on the device."""
    from robaudit.ops.uap import fooled

    mua = ctx.model
    x, _ = ctx.unit_batch(unit)
    clean = ctx.unit_logits(unit).argmax(dim=1).to(ctx.device)
    return fooled(mua.logits, x, delta, clean, input_range=mua.input_range,
                  batch=x.shape[0]).cpu()


def normalised_singular_values(vectors: torch.Tensor, top: int) -> list[float]:
    """The ``top`` largest singular values of the matrix whose columns are ``vectors``
    (rows of the input), divided by the largest."""
    import torch

    values = torch.linalg.svdvals(vectors.flatten(1).double())
    if values.numel() == 0 or float(values[0]) == 0.0:
        return []
    return [round(float(s), 6) for s in (values / values[0])[:top]]


@dataclass(frozen=True)
class UAPFitted:
    """What every work unit of ``uap_fooling_rate`` shares (its fit, design §8): the
    universal perturbation, its norm ‖v‖_p, one noise seed per audit sample and the state of
    the check's generator after them (the random directions of the singular-value baseline
    are drawn from it when the units are reduced, so they are those of one process), the
    size of the fit set and whether the reference split is held out."""

    fit: UAPFit
    size: float
    seeds: torch.Tensor
    random_state: torch.Tensor
    fit_samples: int
    held_out: bool
    preflight: list[dict[str, str]]


class UAPFoolingRate(SampleMetric):
    """Held-out fooling rate of a universal adversarial perturbation fitted on the reference split.

    Moosavi-Dezfooli, Fawzi, Fawzi & Frossard, "Universal adversarial perturbations",
    CVPR 2017 (the four robustness categories of the note in the seeds): a single v with
    ‖v‖_p ≤ ξ (``eps``) that changes the prediction of most samples. v is fitted on at most
    ``fit_limit`` samples of the reference split and evaluated on the audit split. value: the
    fraction of audit samples whose prediction at clip(x + v) differs from the clean
    prediction (labels are not used; lower is better), with Wilson's 95% interval.

    Fitting (``method``):

    - ``deepfool`` (default): the paper's Algorithm 1 — passes over the shuffled fit set; for
      each sample that v does not fool, the ℓ2 DeepFool step Δv_i at x_i + v (the paper's
      arg min ‖r‖₂ for both budgets), accepted only when DeepFool converged, then
      v ← P_{p,ξ}(v + Δv_i) (ℓ∞: clip; ℓ2: rescale only when outside); stop once the fit
      fooling rate reaches 1 − δ (δ = 0.2, the paper's) or after ``max_passes``. The DeepFool
      steps are computed per mini-batch of ``batch`` samples, all at the v of the start of the
      mini-batch, then applied one by one in the random order with a projection after each:
      the only difference from the one-sample-at-a-time original (``batch: 1`` is the
      original); a sample still standing after a pass starts its next step from the class
      it crossed into (fewer gradient passes), and the fit also stops at a fixed point, a
      pass that changed nothing, which every later pass would repeat;
      :func:`robaudit.ops.uap.fit_uap_deepfool` documents it in full. When
      ``max_passes`` ends the fit before 1 − δ, the v of the pass with the best fit fooling
      rate is kept rather than the last (Algorithm 1 has no pass limit).
    - ``sgd``: projected sign-gradient (ℓ∞) or normalised-gradient (ℓ2) ascent of the mean
      clamped cross-entropy of the clean predictions w.r.t. v, steps of ``step``·ξ, a
      projection after each step (Shafahi et al., "Universal adversarial training",
      AAAI 2020, section 3), same stopping rule; usually faster.

    Choices where the paper is silent or does not apply:

    - Budget: the paper uses ℓ∞ ξ = 10 and ℓ2 ξ = 2000 on ImageNet images in [0, 255]
      (d = 224·224·3). For the 8×8 digits in [0, 1] the default is ℓ∞ ξ = 0.1 (1.6 of the
      data's 16 grey-level steps; about the median minimal ℓ∞ DeepFool perturbation of the
      shipped digits ResNet, 0.093) and ℓ2 ξ = 0.4, the paper's ℓ2/ℓ∞ ratio
      2000/10 = 0.52·√d carried over to d = 64.
    - The box: v is fitted and evaluated as clip(x + v) to ``model.input_range`` (the
      perturbed image must be a valid input); DeepFool's inner steps are unconstrained, as
      the paper's Δv_i.
    - The fit set: when the reference split has more than ``fit_limit`` samples, a uniformly
      random subset of ``fit_limit`` of them (kept in split order), not the first ones: a
      split stored class by class (e.g. an image folder) would otherwise give a fit set of
      one or two classes, while the paper's fit set spans every class (10 ImageNet training
      images per class, section 3).
    - Randomness: the fit subset and the fit's random order come from a generator seeded with
      the spec's seed (``ctx.run_seed``), not from the check's generator, which is seeded from
      the check id: so checks with the same fit parameters (e.g. ``robustness_category``)
      share one fit through ``ctx.cache`` and a check gives the same value whether it runs
      alone or not.
      The noise baseline draws one seed per audit sample from the check's generator and
      each sample's noise from its seed (:mod:`robaudit.ops.sampling`), so it does not
      depend on ``batch_size``; the random directions of the singular-value baseline come
      next from the check's generator, drawn at the reduce from its state after the seeds
      (kept in the fit), since their number is that of the converged samples.
    - Memory: the fit set (at most ``fit_limit`` samples) is held on the device during the
      fit; the audit split is evaluated one batch at a time, keeping per-sample flags (and
      the boundary normals of the singular values) only.
    - Scale: per sample, so it shards (design §8). Its fit (:class:`UAPFitted`, once,
      broadcast) is v on the reference split, with the noise seeds of every audit sample;
      each work unit evaluates v, the noise and DeepFool (for the normals) on its samples.
      The normals, an input's size each, are kept only for the leading samples that
      :data:`SPECTRUM_BYTES` (64 MiB) holds (:func:`spectrum_samples`: every sample below
      about 1400 samples of 3×64×64, 111 of 3×224×224), so the singular values are those of
      the converged samples among them (``details.normals`` of ``details.normals_converged``
      converged samples of the split), and memory does not grow with the split.

    details: ``held_out`` (False when the data source has no separate reference split, so v
    was fitted on the audited samples themselves and the rate is not a held-out figure), the
    fit fooling rate and its history, the passes, ‖v‖_p, the fooling rate of
    random noise of the same norm as v (one draw per sample: a random vertex of the cube for
    ℓ∞, a uniformly random direction for ℓ2), and the paper's section 4 evidence of a shared
    low-dimensional subspace: the top singular values (divided by the largest) of the matrix
    of unit normals to the decision boundary at the audit samples (ℓ2 DeepFool, converged
    samples), next to those of as many random unit vectors. figures: v as an image.
    """

    name: ClassVar[str] = "uap_fooling_rate"
    Params: ClassVar[type[MetricParams]] = UAPFitParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = ("Moosavi-Dezfooli et al. 2017, Universal adversarial "
                             "perturbations, Algorithm 1 and section 4")
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def affinity(self, params: UAPFitParams) -> Hashable:
        """The universal perturbation, cached and shared with ``robustness_category``: one
        process fits it for both (design §8)."""
        return ("uap", *params.fit_key())

    def fit(self, ctx: AuditContext, params: UAPFitParams) -> UAPFitted:
        from robaudit.ops.preflight import audit_findings
        from robaudit.ops.projections import lp_norm
        from robaudit.ops.sampling import sample_seeds

        fit = fitted_uap(ctx, params)
        seeds = sample_seeds(ctx.generator, len(ctx.data()))
        return UAPFitted(
            fit=fit,
            size=float(lp_norm(fit.perturbation, params.norm, batched=False)),
            seeds=seeds,
            random_state=ctx.generator.get_state(),
            fit_samples=min(params.fit_limit, len(ctx.data(ctx.reference))),
            held_out=not ctx.reference_is_split,
            preflight=audit_findings(ctx),
        )

    def fit_summary(self, fitted: UAPFitted) -> dict[str, Any]:
        return {
            "fit_fooling_rate": fitted.fit.fooling_rate,
            "fit_history": list(fitted.fit.history),
            "passes": fitted.fit.passes,
            "fit_samples": fitted.fit_samples,
            "held_out": fitted.held_out,
            "perturbation_norm": fitted.size,
            "perturbation": fitted.fit.perturbation.detach().cpu().numpy(),
            "random_state": fitted.random_state.numpy(),
            "preflight": fitted.preflight,
        }

    def per_sample(self, ctx: AuditContext, params: UAPFitParams, unit: Unit,
                   fitted: UAPFitted) -> UnitResult:
        from robaudit.ops.deepfool import deepfool_unit
        from robaudit.ops.uap import random_lp_noise

        v = fitted.fit.perturbation.to(ctx.device)
        shape = ctx.data().x.shape[1:]
        noise = random_lp_noise(fitted.seeds[unit.indices], shape, fitted.size, params.norm)
        boundary = deepfool_unit(ctx, unit, norm="l2", overshoot=params.overshoot,
                                 candidates=params.candidates, max_iter=params.max_iter)
        rows = min(len(unit), spectrum_samples(shape.numel()) - unit.start)
        kept = boundary.converged[:rows]
        return UnitResult(
            {"fooled": unit_fooled(ctx, unit, v),
             "noise_fooled": unit_fooled(ctx, unit, noise.to(ctx.device)),
             "converged": boundary.converged},
            {"normals": boundary.normal[:rows][kept].numpy()} if rows > 0 else {},
        )

    def reduce(self, params: UAPFitParams, gathered: Gathered) -> MetricResult:
        import numpy as np
        import torch

        from robaudit.ops.preflight import preflight_details
        from robaudit.ops.stats import wilson_interval

        fit = gathered.fit
        hits = gathered.arrays["fooled"]
        noise_rate = float(torch.from_numpy(gathered.arrays["noise_fooled"]).mean())
        normals = torch.from_numpy(np.concatenate(
            [extra["normals"] for extra in gathered.extras if "normals" in extra]))
        generator = torch.Generator()
        generator.set_state(torch.from_numpy(np.asarray(fit["random_state"], dtype=np.uint8)))
        random_dirs = torch.randn(normals.shape, generator=generator)
        count, total = int(hits.sum()), int(hits.size)
        size = fit["perturbation_norm"]
        symbol = "ℓ∞" if params.norm == "linf" else "ℓ2"
        return MetricResult(
            value=count / total,
            samples=hits,
            ci=wilson_interval(count, total),
            details={
                "fit_fooling_rate": fit["fit_fooling_rate"],
                "fit_history": list(fit["fit_history"]),
                "passes": fit["passes"],
                "fit_samples": fit["fit_samples"],
                "held_out": fit["held_out"],
                "perturbation_norm": size,
                "noise_fooling_rate": noise_rate,
                "normals": int(normals.shape[0]),
                "normals_converged": int(gathered.arrays["converged"].sum()),
                "normals_singular_values": normalised_singular_values(
                    normals, TOP_SINGULAR_VALUES),
                "random_singular_values": normalised_singular_values(
                    random_dirs, TOP_SINGULAR_VALUES),
                **preflight_details(list(fit.get("preflight", [])), params.preflight),
            },
            figures=[ImagePlot(
                title="universal perturbation v",
                image=fit["perturbation"],
                caption=f"{symbol} norm {size:.4g} (budget {params.eps:g}); fools "
                        f"{count / total:.1%} of the audit split, random noise of the same "
                        f"norm {noise_rate:.1%}",
            )],
        )

    def floor(self, ctx: AuditContext, params: UAPFitParams) -> Floor:
        fit = fit_pass_floor(ctx, params)
        audit = len(ctx.data())
        further = min(params.candidates, ctx.model.num_classes(ctx.data().x)) - 2
        return Floor(
            forward=fit.forward + 2 * audit,
            gradient=fit.gradient + audit,
            backward=fit.backward + audit * further,
            note="one fit pass (a prediction and a gradient per fit sample, all c = "
                 "candidates − 1 class gradients of a DeepFool step with the deepfool fit, "
                 "then the pass's fooling rate), the held-out and noise evaluations, one "
                 "DeepFool step per audit sample for the boundary normals",
        )


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(UAPFoolingRate())


UAPFoolingRate.__doc__ = f"{UAPFoolingRate.__doc__}\n    Preflight:\n{PREFLIGHT_DOC}\n"
