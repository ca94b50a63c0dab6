"""``robustness_category``: the four robustness categories of universal perturbations."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.ops.preflight import PREFLIGHT_DOC
from robaudit.plugins.metrics.universal.uap import (
    UAPFitParams,
    fit_pass_floor,
    fitted_uap,
    unit_fooled,
)

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.ops.uap import UAPFit

#: The names of the categories, by number (each with the rule that gives it, see
#: :class:`RobustnessCategory`).
CATEGORY_NAMES = {
    1: "no adversarial perturbations (a per-sample attack fools at most `tolerance`)",
    2: "per-sample adversarial perturbations (a per-sample attack fools more than "
       "`tolerance`)",
    3: "universal adversarial perturbations (one perturbation fools more than `tau`)",
    4: "all perturbations are adversarial (random noise fools more than `tau`)",
}


class CategoryParams(UAPFitParams):
    tau: float = Field(0.5, gt=0, lt=1,
                       description="\"most samples\": the universal perturbation (category 3) "
                                   "or random noise (4) counts when it fools more than tau")
    tolerance: float = Field(
        0.05, ge=0, lt=1,
        description="\"almost no sample\": category 1 (no adversarial perturbations) needs "
                    "the per-sample attack to fool at most this share; above it, category 2")
    attack: Literal["pgd", "deepfool"] = Field(
        "pgd", description="the per-sample attack within eps: PGD, or DeepFool's minimal "
                           "perturbation when its norm is at most eps")
    steps: int = Field(20, ge=1, le=10_000, description="PGD steps")
    step_size: float | None = Field(
        None, gt=0, description="PGD step size (default 2.5·eps/steps, Madry et al.)")


@dataclass(frozen=True)
class CategoryFitted:
    """The fit every work unit of ``robustness_category`` shares: the universal perturbation
    of ``uap_fooling_rate`` and two seeds per audit sample (the noise, the PGD start)."""

    fit: UAPFit
    seeds: torch.Tensor
    preflight: list[dict[str, str]]


class RobustnessCategory(SampleMetric):
    """The robustness category (1 best … 4 worst) of the model at the budget ``eps``.

    The note on Moosavi-Dezfooli et al. (2017), "Universal adversarial perturbations"
    (universal-adversarial-perturbations-geometry, "Four Scenarios"): with B_ε the ℓp ball,
    (1) ∀I ∀Δ∈B_ε f(I) = f(I+Δ): no adversarial perturbations; (2) ∀I ∃Δ∈B_ε f(I) ≠ f(I+Δ):
    per-sample ones; (3) ∃Δ∈B_ε ∀I f(I) ≠ f(I+Δ): universal ones; (4) ∀I ∀Δ∈B_ε
    f(I) ≠ f(I+Δ): every perturbation is adversarial. Each category is strictly less robust
    than the previous one. value: the category (lower is better).

    The quantifiers are measured on the audit split, "fooled" read as "the prediction at
    clip(x + Δ) differs from the clean prediction". The note reads category 1 as "for almost
    all images ... there is no small Δ" and categories 2–4 as holding "for most images", so
    two thresholds, both documented in the details:

    - 4 if random noise of norm ``eps`` (one draw per sample: a random vertex of the ℓ∞
      cube, or a uniformly random direction on the ℓ2 sphere, the largest random
      perturbations of the ball, standing in for ∀Δ) fools more than ``tau`` (default 0.5,
      a majority);
    - else 3 if the universal perturbation of ``uap_fooling_rate`` (same fit parameters, the
      same cached fit) fools more than ``tau``;
    - else 2 if a per-sample attack within eps fools more than ``tolerance`` of the samples
      (default 0.05: adversarial perturbations exist for more than 5% of them): ``pgd`` (the
      default; PGD of the clean prediction's cross-entropy with a random start, ``steps``
      steps) or ``deepfool`` (DeepFool in the budget's norm, counted when it converged within
      norm eps). Since the noise and the universal perturbation are per-sample
      perturbations within eps too, a sample they fool counts as fooled here as well, so the
      rates are ordered;
    - else 1: no adversarial perturbation was found for at least 1 − ``tolerance`` of the
      samples. (An earlier version used ``tau`` here too, so a model that PGD fooled on 36%
      of its samples was reported as having "no adversarial perturbations".)

    "For most images" is a majority (``tau``) for 3 and 4, not "all": the note places
    Moosavi-Dezfooli et al.'s models in category 3, where one perturbation fools most images,
    not every one. The attacks only bound the category from below: a stronger attack can
    only raise it.

    The audit split is evaluated one batch (``batch_size``) at a time. Random numbers are
    drawn per sample: two seeds per audit sample (the noise, the PGD start) from the check's
    generator, and each sample's draw from its own seed (:mod:`robaudit.ops.sampling`), so
    the result does not depend on ``batch_size``. Per sample, so it shards (design §8): its
    fit (:class:`CategoryFitted`, once, broadcast) is the universal perturbation on the
    reference split and those seeds; each work unit runs the noise, v and the attack on its
    samples.

    details: the three fooling rates (and the attack's alone), tau, tolerance, the category's
    name with its rule, and the UAP fit's passes.
    """

    name: ClassVar[str] = "robustness_category"
    Params: ClassVar[type[MetricParams]] = CategoryParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = ("Moosavi-Dezfooli et al. 2017, Universal adversarial "
                             "perturbations; the four categories of the note (seeds)")
    has_interval: ClassVar[bool] = False

    def affinity(self, params: CategoryParams) -> Hashable:
        """The universal perturbation, cached and shared with ``uap_fooling_rate``: one
        process fits it for both (design §8)."""
        return ("uap", *params.fit_key())

    def fit(self, ctx: AuditContext, params: CategoryParams) -> CategoryFitted:
        from robaudit.ops.preflight import audit_findings
        from robaudit.ops.sampling import sample_seeds

        return CategoryFitted(fitted_uap(ctx, params),
                              sample_seeds(ctx.generator, len(ctx.data()), 2),
                              audit_findings(ctx))

    def fit_summary(self, fitted: CategoryFitted) -> dict[str, Any]:
        return {"uap_passes": fitted.fit.passes, "preflight": fitted.preflight}

    def per_sample(self, ctx: AuditContext, params: CategoryParams, unit: Unit,
                   fitted: CategoryFitted) -> UnitResult:
        from robaudit.ops.uap import random_lp_noise

        seeds = fitted.seeds[unit.indices]
        noise = random_lp_noise(seeds[:, 0], ctx.data().x.shape[1:], params.eps, params.norm)
        noise_hits = unit_fooled(ctx, unit, noise.to(ctx.device))
        uap_hits = unit_fooled(ctx, unit, fitted.fit.perturbation.to(ctx.device))
        attack_hits = self._attack(ctx, params, unit, seeds[:, 1])
        return UnitResult({"noise": noise_hits, "universal": uap_hits, "attack": attack_hits,
                           "per_sample": attack_hits | uap_hits | noise_hits})

    def reduce(self, params: CategoryParams, gathered: Gathered) -> MetricResult:
        import torch

        from robaudit.ops.preflight import preflight_details

        def rate(name: str) -> float:
            return float(torch.from_numpy(gathered.arrays[name]).mean())

        rates = {
            "noise_fooling_rate": rate("noise"),
            "universal_fooling_rate": rate("universal"),
            "per_sample_fooling_rate": rate("per_sample"),
        }
        if rates["noise_fooling_rate"] > params.tau:
            category = 4
        elif rates["universal_fooling_rate"] > params.tau:
            category = 3
        elif rates["per_sample_fooling_rate"] > params.tolerance:
            category = 2
        else:
            category = 1
        return MetricResult(
            value=float(category),
            details={
                **rates,
                "attack_fooling_rate": rate("attack"),
                "tau": params.tau,
                "tolerance": params.tolerance,
                "category_name": CATEGORY_NAMES[category],
                "uap_passes": gathered.fit["uap_passes"],
                **preflight_details(list(gathered.fit.get("preflight", [])),
                                    params.preflight),
            },
        )

    @staticmethod
    def _attack(ctx: AuditContext, params: CategoryParams, unit: Unit, seeds: torch.Tensor
                ) -> torch.Tensor:
        """Per sample of the unit (a CPU bool tensor), whether the per-sample attack within
        eps changes the prediction."""
        from robaudit.ops.attacks import pgd
        from robaudit.ops.deepfool import deepfool_unit
        from robaudit.ops.projections import lp_norm

        mua = ctx.model
        x, _ = ctx.unit_batch(unit)
        if params.attack == "deepfool":
            result = deepfool_unit(ctx, unit, norm=params.norm, overshoot=params.overshoot,
                                   candidates=params.candidates, max_iter=params.max_iter)
            size = lp_norm(result.boundary - x.cpu(), params.norm)  # both on the CPU
            return result.converged & (size <= params.eps)
        step = params.step_size or 2.5 * params.eps / params.steps
        clean = ctx.unit_logits(unit).argmax(dim=1).to(ctx.device)
        adv = pgd(mua.logits, x, clean, eps=params.eps, norm=params.norm, steps=params.steps,
                  step_size=step, seeds=seeds, input_range=mua.input_range)
        return (mua.predict(adv) != clean).cpu()

    def floor(self, ctx: AuditContext, params: CategoryParams) -> Floor:
        n = len(ctx.data())
        fit = fit_pass_floor(ctx, params)
        further = min(params.candidates, ctx.model.num_classes(ctx.data().x)) - 2
        # the attack: at least one gradient per sample (PGD stops on a sample once it is
        # fooled; DeepFool takes at least one step, with its further class gradients)
        attack_backward = 0 if params.attack == "pgd" else n * further
        return Floor(
            forward=fit.forward + 3 * n,
            gradient=fit.gradient + n,
            backward=fit.backward + attack_backward,
            note="one fit pass (with the deepfool fit, a DeepFool step's class gradients per "
                 "fit sample), the noise and UAP evaluations, at least one attack step per "
                 "sample and its check",
        )


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(RobustnessCategory())


RobustnessCategory.__doc__ = f"{RobustnessCategory.__doc__}\n    Preflight:\n{PREFLIGHT_DOC}\n"
