"""``adversarial_likelihood``: how far PGD pushes samples out of their class's significance
pattern (Khaitan 2024, §2.4, §3.3, Figure 16)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.metric import Gathered, IncludedParams, SampleMetric, Unit, UnitResult, included
from robaudit.plugins.metrics.activations._patterns import PatternParams

if TYPE_CHECKING:
    import torch

    from robaudit.context import AuditContext
    from robaudit.ops.activations import Site


class LikelihoodParams(PatternParams, IncludedParams):
    eps: float = Field(0.1, gt=0, description="PGD radius, in input units")
    norm: Literal["linf", "l2"] = Field("linf", description="the PGD ball's norm")
    steps: int = Field(20, ge=1, le=10_000, description="PGD steps")
    step_size: float | None = Field(
        None, gt=0, description="PGD step length; default 2.5 · eps / steps"
    )


@dataclass(frozen=True)
class LikelihoodFit:
    """The fit every work unit of ``adversarial_likelihood`` shares: each layer's per-class
    Bernoulli probabilities (C × K, on the CPU) from the clean reference split, which classes
    had reference samples (C), one PGD seed and one noise seed per audit sample, the layers'
    names, the split fitted on and whether it is the audit split itself."""

    probabilities: list[torch.Tensor]
    fitted: torch.Tensor
    seeds: torch.Tensor
    noise_seeds: torch.Tensor
    layers: list[str]
    split: str
    in_sample: bool


class AdversarialLikelihood(SampleMetric):
    """Mean drop under PGD of a sample's log-likelihood under its class's pattern distribution.

    Khaitan (2024), §2.4 and §3.3: the per-class distributions of significant interactions of
    §2.2 (independent Bernoullis, estimated on the clean *reference* split with true labels
    and smoothed as in ``class_divergence``) give each audit sample's pattern s a
    log-likelihood under its true class y,
    log P_y(s) = Σ_k s_k log p_y,k + (1 − s_k) log(1 − p_y,k), here divided by the number K
    of interactions (nats per interaction). Each audit sample is attacked with PGD
    (``robaudit.ops.attacks.pgd``: ascent of the true label's cross-entropy, random start from
    the check's generator, the first misclassifying iterate or the last; Appendix B's
    parameters are not in the text, so eps defaults to the digits' 0.1). value: the mean over
    samples (and named layers) of log P_y(s_clean) − log P_y(s_adv) (higher = attacks push
    samples out of their class's pattern). samples: the per-sample drops. details: per class,
    the mean clean and adversarial log-likelihoods (Figure 16) and the share of classes whose
    mean drops (the paper's "consistent decrease"); the attack's success rate.

    Estimated on one set, scored on another (design §10): the distributions are fitted on the
    reference split and score the audit split, so a sample's own pattern does not raise its
    clean likelihood (fitted on the audit split itself, the clean likelihood is in-sample and
    the drop overstated). When the reference split is the audit split (a source without
    one), ``details.in_sample`` is true. Audit samples of a class without reference samples
    have no fitted distribution and are left out, counted in ``details.included`` (below
    ``min_included`` the check is error).

    A control beside the value: each sample is also moved by random noise of the same norm as
    its PGD perturbation (ℓ∞: a random sign in every coordinate times ‖δ‖∞, a vertex of the
    ℓ∞ ball; ℓ2: a uniform random direction times ‖δ‖₂; clipped to the input box as PGD is),
    and ``details.noise_drop`` is the mean drop under it (``noise_fooled`` its error rate).
    The value stays the attack's drop (design §6); a drop no larger than the noise's is no
    evidence that the attack, rather than any perturbation of that size, leaves the class's
    pattern. A model whose activations at the named layers do not depend on its input drops
    0 under both.

    Per sample, so it shards (design §8): its fit (:class:`LikelihoodFit`, once, broadcast)
    is the per-class distributions (one pass over the clean reference split) and a PGD and a
    noise seed per audit sample; each work unit attacks its samples and scores their clean,
    adversarial and noisy patterns.
    """

    name: ClassVar[str] = "adversarial_likelihood"
    Params: ClassVar[type[MetricParams]] = LikelihoodParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Khaitan 2024, §2.4, §3.3 (likelihood under PGD, Figure 16)"

    def check_data(self, ctx: AuditContext, params: LikelihoodParams) -> None:
        from robaudit.ops.activations import check_layer_names

        check_layer_names(ctx.model, params.layers, linear=True)

    def fit(self, ctx: AuditContext, params: LikelihoodParams) -> LikelihoodFit:
        from robaudit.ops.activations import (
            InteractionStats,
            bernoulli_probabilities,
            layer_statistics,
            linear_sites,
            split_classes,
        )
        from robaudit.ops.sampling import sample_seeds

        sites = linear_sites(ctx.model, params.layers)
        split_classes(ctx)  # the audit labels are the model's classes
        stats = layer_statistics(ctx, sites, "interactions", ctx.reference,
                                 count_bias=params.count_bias)
        probabilities = []
        for interactions in stats:
            assert isinstance(interactions, InteractionStats)
            probabilities.append(bernoulli_probabilities(
                interactions.significant, interactions.samples, params.smoothing))
        fitted = stats[0].samples > 0  # the classes with reference samples
        seeds = sample_seeds(ctx.generator, 2, len(ctx.data()))  # one per sample: batch-free
        return LikelihoodFit(probabilities, fitted, seeds[0], seeds[1],
                             [s.label for s in sites], ctx.reference, ctx.reference_is_split)

    def fit_summary(self, fitted: LikelihoodFit) -> dict[str, Any]:
        return {"layers": list(fitted.layers), "split": fitted.split,
                "in_sample": fitted.in_sample}

    def per_sample(self, ctx: AuditContext, params: LikelihoodParams, unit: Unit,
                   fitted: LikelihoodFit) -> UnitResult:
        import torch

        from robaudit.ops.activations import linear_sites, read_layers
        from robaudit.ops.attacks import pgd

        sites = linear_sites(ctx.model, params.layers)
        probabilities = [p.to(ctx.device) for p in fitted.probabilities]
        step = params.step_size or 2.5 * params.eps / params.steps
        x, y = ctx.unit_batch(unit)
        adv = pgd(ctx.model.logits, x, y, eps=params.eps, norm=params.norm,
                  steps=params.steps, step_size=step, seeds=fitted.seeds[unit.indices],
                  input_range=ctx.model.input_range)
        noisy = _same_norm_noise(x, adv - x, params.norm, fitted.noise_seeds[unit.indices],
                                 ctx.model.input_range)
        with torch.no_grad():
            clean_read, _ = read_layers(ctx.model, sites, x)
            adv_read, adv_logits = read_layers(ctx.model, sites, adv)
            noise_read, noise_logits = read_layers(ctx.model, sites, noisy)
        return UnitResult({
            "clean": self._log_likelihood(sites, clean_read, probabilities, y, params),
            "adversarial": self._log_likelihood(sites, adv_read, probabilities, y, params),
            "noise": self._log_likelihood(sites, noise_read, probabilities, y, params),
            "fooled": (adv_logits.argmax(dim=1) != y).cpu(),
            "noise_fooled": (noise_logits.argmax(dim=1) != y).cpu(),
            "fitted": fitted.fitted[y.cpu()],
            "label": y.cpu(),
        })

    def reduce(self, params: LikelihoodParams, gathered: Gathered) -> MetricResult:
        import torch

        keep = torch.from_numpy(gathered.arrays["fitted"]) > 0
        share = included(int(keep.sum()), keep.numel(), params.min_included,
                         "audit samples (the others' class has no reference samples)")

        def kept(name: str) -> torch.Tensor:
            return torch.from_numpy(gathered.arrays[name])[keep]

        clean, adversarial, noise = kept("clean"), kept("adversarial"), kept("noise")
        drop = clean - adversarial
        labels = kept("label").long()
        table, series_clean, series_adv, series_noise, classes = [], [], [], [], []
        for c in torch.unique(labels).tolist():
            mask = labels == c
            row = {"class": c, "samples": int(mask.sum()),
                   "clean": float(clean[mask].mean()),
                   "adversarial": float(adversarial[mask].mean()),
                   "drop": float(drop[mask].mean()),
                   "noise_drop": float((clean[mask] - noise[mask]).mean())}
            table.append(row)
            classes.append(float(c))
            series_clean.append(row["clean"])
            series_adv.append(row["adversarial"])
            series_noise.append(float(noise[mask].mean()))
        return MetricResult(
            value=float(drop.mean()),
            samples=drop.numpy(),
            details={
                "clean_log_likelihood": float(clean.mean()),
                "adversarial_log_likelihood": float(adversarial.mean()),
                "noise_drop": float((clean - noise).mean()),
                "classes_dropping": sum(r["drop"] > 0 for r in table) / len(table),
                "attack_success_rate": float(kept("fooled").mean()),
                "noise_fooled": float(kept("noise_fooled").mean()),
                "fit_split": gathered.fit["split"],
                "in_sample": gathered.fit["in_sample"],
                "included": share,
                "step_size": params.step_size or 2.5 * params.eps / params.steps,
                "layers": list(gathered.fit["layers"]),
                "classes": table,
            },
            figures=[LinePlot(
                title="log-likelihood under the true class's significance distribution",
                x=tuple(classes), series={"clean": tuple(series_clean),
                                          "PGD": tuple(series_adv),
                                          "noise of the same norm": tuple(series_noise)},
                xlabel="class", ylabel="nats per interaction",
            )],
        )

    @staticmethod
    def _log_likelihood(sites: list[Site], read: dict[Site, torch.Tensor],
                        probabilities: list[torch.Tensor],
                        y: torch.Tensor, params: LikelihoodParams) -> torch.Tensor:
        """Per sample, the mean over layers of log P_y(s) (nats per interaction)."""
        import torch

        from robaudit.ops.activations import bernoulli_log_likelihood, significance

        total = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        for site, p in zip(sites, probabilities, strict=True):
            layer = site.module
            assert isinstance(layer, torch.nn.Linear)
            sig = significance(read[site], layer, params.count_bias).flatten(1)
            total += bernoulli_log_likelihood(sig, p[y])
        return (total / len(sites)).cpu()

    def floor(self, ctx: AuditContext, params: LikelihoodParams) -> Floor:
        n = len(ctx.data()) + len(ctx.data(ctx.reference))
        return Floor(forward=n + 2 * len(ctx.data()), gradient=len(ctx.data()) * params.steps,
                     note="the reference split's pass; clean, adversarial and noisy passes; "
                          "every PGD step")


def _same_norm_noise(x: torch.Tensor, delta: torch.Tensor, norm: str, seeds: torch.Tensor,
                     input_range: tuple[float, float]) -> torch.Tensor:
    """x moved by random noise of each sample's ‖δ‖ (ℓ∞: random signs times ‖δ‖∞; ℓ2: a
    uniform direction times ‖δ‖₂), drawn from the samples' own seeds, clipped to the box."""
    import torch

    from robaudit.ops.sampling import per_sample

    shape = x.shape[1:]
    flat = delta.detach().flatten(1)
    if norm == "linf":
        size = flat.abs().amax(dim=1)
        direction = per_sample(seeds, lambda g: torch.randint(0, 2, shape, generator=g) * 2.0 - 1)
    else:
        size = flat.norm(dim=1)
        direction = per_sample(seeds, lambda g: torch.randn(shape, generator=g))
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))
    step = direction.to(x.device, x.dtype) * size.view(-1, *[1] * len(shape))
    return (x + step).clamp(*input_range).detach()


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(AdversarialLikelihood())
