"""``transfer_rate``: cross-model generalisation of adversarial examples (Szegedy et al. 2014)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from robaudit import Floor, Metric, MetricParams, MetricResult, hookimpl
from robaudit.errors import MetricError
from robaudit.metric import IncludedParams, included
from robaudit.ops.preflight import PREFLIGHT_DOC, PreflightParams

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.model import ModelUnderAudit


class TransferParams(IncludedParams, PreflightParams):
    source: str = Field(description="the model (a name of the spec's `models:`) on which the "
                                    "adversarial examples are made")
    magnify: float | None = Field(
        None, gt=0,
        description="if set, use x + r·magnify·√n/‖r‖₂ (per-pixel stddev `magnify`) instead of "
                    "the minimal x + r (Szegedy et al.'s Table 4 lower part uses 0.1)")
    overshoot: float = Field(0.02, ge=0, le=1, description="DeepFool's overshoot")
    max_iter: int = Field(50, ge=1, le=1000, description="DeepFool's iterations")
    candidates: int = Field(10, ge=2, description="DeepFool's candidate classes")

    @field_validator("source")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        models = (info.context or {}).get("models")
        if models is not None and value not in models:
            known = ", ".join(sorted(models)) or "(none)"
            raise ValueError(f"no model named {value!r}; the spec defines: {known}")
        return value


class TransferRate(Metric):
    """Error of the audited model on minimal adversarial examples made on another model.

    Szegedy et al. (2014), section 4.2 and Tables 2 and 4: adversarial examples generated for
    one network are fed to another, and the proportion misclassified is measured; Gaussian
    noise of the same stddev is the reference (Table 2's last rows, Table 4's "Gaussian noise"
    rows). value: the fraction of the audit split that the audited model misclassifies
    (against the true labels) when fed the ``source`` model's adversarial examples. A high
    value means the source's attacks carry over to the audited model, so lower is better
    (``higher_is_better`` False).

    Choices:

    - Minimal examples: Szegedy et al. use box-constrained L-BFGS; here they are ℓ2 DeepFool
      examples (Moosavi-Dezfooli et al. 2016) on the source, clipped to the source's input
      box, made from every sample that the source classifies correctly. A sample the source
      already misclassifies is its own adversarial example (its minimal perturbation is 0),
      as in the paper where the examples give the source a 100% error.
    - Error counts against the true labels over the whole split, as the paper's tables (the
      audited model's clean errors are included; details give the clean error too, and the
      conditional transfer rate: among the samples both models classify correctly and the
      source's example fools the source, the fraction the audited model misclassifies).
    - ``magnify``: the paper's last experiment feeds x + 0.1·(x′−x)/‖x′−x‖₂, which "magnifies
      the distortion on average by 40%" to the "amplified to stddev = 0.1" of Table 4. A
      unit-ℓ2 step of 0.1 on 784 pixels would shrink, not magnify, a 0.06 stddev, so 0.1 is
      read as the target per-pixel stddev: x + magnify·√n·(x′−x)/‖x′−x‖₂, clipped to the box.
    - Noise baseline: Gaussian noise of stddev σ = the average per-pixel stddev
      √(‖x′−x‖₂²/n) of the adversarial examples (Table 4: "Gaussian noise with stddev =" the
      examples' average), one draw per sample from the check's generator, clipped to the box.
      The average runs over the samples that have an adversarial example made on them: those
      the source classifies correctly and on which DeepFool converged (the label changed). The
      zero perturbations of the source's own errors and the unmoved points of a DeepFool that
      did not converge are no adversarial distortion and would bias σ low. With no such
      sample there is no adversarial example and no σ: the check is error (a noise baseline
      at σ = 0 is the clean error, not a baseline; design §10).
    - Left out: a sample the source classifies correctly but DeepFool did not move across
      a boundary has no adversarial example; it stays in the value at its unconverged
      iterate (a weaker attack there) and is counted in ``details.included`` (examples made
      of the samples the source classifies correctly); below ``min_included`` the check is
      error.
    - Memory: the audit split is processed one work unit (``batch_size``) at a time, with
      the source's DeepFool of that unit (:func:`~robaudit.ops.deepfool.deepfool_unit`,
      shared through the run cache within its budget), keeping per-sample results only; σ
      needs every sample's example, so the noise takes a second pass. Each sample's noise
      comes from its own seed, drawn from the check's generator (:mod:`robaudit.ops.sampling`),
      so the value does not depend on ``batch_size``.

    Runs whole on one process: the noise baseline's σ is the mean distortion of every
    sample's adversarial example, so its noise pass (``details.noise_error``) can only start
    after the whole split's DeepFool pass, which a per-unit split (design §8) cannot express.
    """

    name: ClassVar[str] = "transfer_rate"
    Params: ClassVar[type[MetricParams]] = TransferParams
    higher_is_better: ClassVar[bool] = False
    source: ClassVar[str] = "Szegedy et al. 2014, section 4.2, Tables 2 and 4"
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def compute(self, ctx: AuditContext, params: TransferParams) -> MetricResult:
        import torch

        from robaudit.metric import work_units
        from robaudit.ops.deepfool import deepfool_unit
        from robaudit.ops.preflight import audit_findings, preflight_details
        from robaudit.ops.sampling import per_sample_randn, sample_seeds
        from robaudit.ops.stats import wilson_interval
        from robaudit.ops.uap import perturb, predictions

        if params.source not in ctx.models:
            known = ", ".join(sorted(ctx.models))
            raise MetricError(f"no model named {params.source!r}; the spec defines: {known}")
        src: ModelUnderAudit = ctx.models[params.source]
        target = ctx.model
        data = ctx.data()
        if len(data) == 0:
            raise MetricError("transfer_rate needs a non-empty audit split")
        y = data.y
        src_correct = ctx.logits(model=src).argmax(dim=1).cpu() == y
        target_clean = ctx.logits().argmax(dim=1).cpu() == y
        pixels = data.x[0].numel()

        # Pass 1, per work unit (the batches of ctx.batches()): the source's DeepFool examples
        # (shared per unit through the run cache), their per-pixel stddev and both models'
        # predictions on them; only per-sample results are kept (on the CPU).
        target_parts, src_parts, stddev_parts, converged_parts = [], [], [], []
        units = work_units(len(data), ctx.batch_size)
        for unit, (x, yb) in zip(units, ctx.batches(), strict=True):
            boundary = deepfool_unit(ctx, unit, model=src, norm="l2",
                                     overshoot=params.overshoot, candidates=params.candidates,
                                     max_iter=params.max_iter)
            r = self._perturbation(x, boundary.boundary.to(ctx.device),
                                   src_correct[unit.indices].to(ctx.device), params, src)
            adversarial = x + r
            stddev_parts.append((r.flatten(1).norm(dim=1) / math.sqrt(pixels)).cpu())
            target_parts.append((predictions(target.logits, adversarial, x.shape[0]) != yb).cpu())
            src_parts.append((predictions(src.logits, adversarial, x.shape[0]) != yb).cpu())
            converged_parts.append(boundary.converged)
        target_wrong, src_wrong = torch.cat(target_parts), torch.cat(src_parts)
        stddev, converged = torch.cat(stddev_parts), torch.cat(converged_parts)
        made = src_correct & converged
        if not bool(src_correct.any()):
            raise MetricError(f"the source model {params.source!r} misclassifies every audit "
                              f"sample: no adversarial example can be made on it, and the "
                              f"noise baseline has no stddev")
        if not bool(made.any()):
            raise MetricError(
                f"DeepFool made no adversarial example on the source model {params.source!r}: "
                f"it moved none of the {int(src_correct.sum())} samples the source classifies "
                f"correctly across a boundary within {params.max_iter} steps (a source whose "
                f"logits do not depend on its input, or pinned by the input box)")
        share = included(int(made.sum()), int(src_correct.sum()), params.min_included,
                         "samples the source classifies correctly with an adversarial "
                         "example made (DeepFool converged)")
        sigma = float(stddev[made].mean())
        # the attack runs on the source: its gradients are the ones that must not be masked
        preflight = preflight_details(audit_findings(ctx, src), params.preflight)

        # Pass 2, per batch: Gaussian noise of stddev σ (needs every sample's stddev first).
        seeds = sample_seeds(ctx.generator, len(data))
        noise_target, noise_src, start = [], [], 0
        for x, yb in ctx.batches():
            rows = slice(start, start + x.shape[0])
            start = rows.stop
            noise = per_sample_randn(seeds[rows], x.shape[1:]).to(ctx.device, x.dtype)
            noisy = perturb(x, noise * sigma, target.input_range)
            noise_target.append((predictions(target.logits, noisy, x.shape[0]) != yb).cpu())
            noise_src.append((predictions(src.logits, noisy, x.shape[0]) != yb).cpu())

        both = target_clean & src_correct & src_wrong
        count, total = int(target_wrong.sum()), int(target_wrong.numel())
        return MetricResult(
            value=count / total,
            samples=target_wrong.double().cpu().numpy(),
            ci=wilson_interval(count, total),
            details={
                "source": params.source,
                "source_error": float(src_wrong.double().mean()),
                "source_clean_error": float((~src_correct).double().mean()),
                "clean_error": float((~target_clean).double().mean()),
                "conditional_transfer_rate": (
                    float(target_wrong[both].double().mean()) if bool(both.any()) else None),
                "av_stddev": sigma,
                "included": share,
                "noise_error": float(torch.cat(noise_target).double().mean()),
                "noise_source_error": float(torch.cat(noise_src).double().mean()),
                "deepfool_converged": float(converged[src_correct].double().mean())
                if bool(src_correct.any()) else None,
                **preflight,
            },
        )

    @staticmethod
    def _perturbation(x: torch.Tensor, boundary: torch.Tensor, src_correct: torch.Tensor,
                      params: TransferParams, src: ModelUnderAudit) -> torch.Tensor:
        """The perturbation r of a batch: the source's DeepFool example minus x where the
        source classifies x correctly, else 0; magnified to ``magnify`` per pixel if set."""
        import torch

        shape = (-1, *([1] * (x.dim() - 1)))
        r = torch.where(src_correct.view(shape), boundary - x, torch.zeros_like(x))
        if params.magnify is None:
            return r
        size = r.flatten(1).norm(dim=1).view(shape)
        scaled = r * (params.magnify * math.sqrt(x[0].numel()) / size.clamp_min(1e-30))
        return torch.where(size > 0, (x + scaled).clamp(*src.input_range) - x, r)

    def floor(self, ctx: AuditContext, params: TransferParams) -> Floor:
        n = len(ctx.data())
        return Floor(
            forward=6 * n,
            gradient=n * (params.candidates - 1),
            note="one DeepFool step on the source (a gradient per candidate difference), "
                 "clean, adversarial and noisy predictions of both models",
        )


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(TransferRate())


TransferRate.__doc__ = (f"{TransferRate.__doc__}\n    Preflight (of the source model, on which "
                        f"the attack runs):\n{PREFLIGHT_DOC}\n")
