"""``adversarial_likelihood``: how far PGD pushes samples out of their class's significance
pattern (Khaitan 2024, §2.4, §3.3, Figure 16)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.context import AuditContext
from robaudit.metric import Gathered, SampleMetric, Unit, UnitResult
from robaudit.ops.activations import (
    InteractionStats,
    Site,
    bernoulli_log_likelihood,
    bernoulli_probabilities,
    check_layer_names,
    layer_statistics,
    linear_sites,
    read_layers,
    significance,
)
from robaudit.ops.attacks import pgd
from robaudit.ops.sampling import sample_seeds
from robaudit.plugins.metrics.activations._patterns import PatternParams


class LikelihoodParams(PatternParams):
    eps: float = Field(0.1, gt=0, description="PGD radius, in input units")
    norm: Literal["linf", "l2"] = Field("linf", description="the PGD ball's norm")
    steps: int = Field(20, ge=1, le=10_000, description="PGD steps")
    step_size: float | None = Field(
        None, gt=0, description="PGD step length; default 2.5 · eps / steps"
    )


@dataclass(frozen=True)
class LikelihoodFit:
    """The fit every work unit of ``adversarial_likelihood`` shares: each layer's per-class
    Bernoulli probabilities (C × K, on the CPU) from the clean audit split, one PGD seed per
    audit sample, and the layers' names."""

    probabilities: list[torch.Tensor]
    seeds: torch.Tensor
    layers: list[str]


class AdversarialLikelihood(SampleMetric):
    """Mean drop under PGD of a sample's log-likelihood under its class's pattern distribution.

    Khaitan (2024), §2.4 and §3.3: the per-class distributions of significant interactions of
    §2.2 (independent Bernoullis, estimated on the clean audit split with true labels and
    smoothed as in ``class_divergence``) give each sample's pattern s a log-likelihood under its
    true class y, log P_y(s) = Σ_k s_k log p_y,k + (1 − s_k) log(1 − p_y,k), here divided by the
    number K of interactions (nats per interaction). Each audit sample is attacked with PGD
    (``robaudit.ops.attacks.pgd``: ascent of the true label's cross-entropy, random start from
    the check's generator, the first misclassifying iterate or the last; Appendix B's
    parameters are not in the text, so eps defaults to the digits' 0.1). value: the mean over
    samples (and named layers) of log P_y(s_clean) − log P_y(s_adv) (higher = attacks push
    samples out of their class's pattern). samples: the per-sample drops. details: per class,
    the mean clean and adversarial log-likelihoods (Figure 16) and the share of classes whose
    mean drops (the paper's "consistent decrease"); the attack's success rate.

    Per sample, so it shards (design §8): its fit (:class:`LikelihoodFit`, once, broadcast)
    is the per-class distributions (one pass over the clean audit split, shared with
    ``class_divergence``) and one PGD seed per sample; each work unit attacks its samples and
    scores their clean and adversarial patterns.
    """

    name: ClassVar[str] = "adversarial_likelihood"
    Params: ClassVar[type[MetricParams]] = LikelihoodParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Khaitan 2024, §2.4, §3.3 (likelihood under PGD, Figure 16)"

    def check_data(self, ctx: AuditContext, params: LikelihoodParams) -> None:
        check_layer_names(ctx.model, params.layers, linear=True)

    def fit(self, ctx: AuditContext, params: LikelihoodParams) -> LikelihoodFit:
        sites = linear_sites(ctx.model, params.layers)
        stats = layer_statistics(ctx, sites, "interactions", count_bias=params.count_bias)
        probabilities = []
        for interactions in stats:
            assert isinstance(interactions, InteractionStats)
            probabilities.append(bernoulli_probabilities(
                interactions.significant, interactions.samples, params.smoothing))
        seeds = sample_seeds(ctx.generator, len(ctx.data()))  # one per sample: batch-free
        return LikelihoodFit(probabilities, seeds, [s.label for s in sites])

    def fit_summary(self, fitted: LikelihoodFit) -> dict[str, Any]:
        return {"layers": list(fitted.layers)}

    def per_sample(self, ctx: AuditContext, params: LikelihoodParams, unit: Unit,
                   fitted: LikelihoodFit) -> UnitResult:
        sites = linear_sites(ctx.model, params.layers)
        probabilities = [p.to(ctx.device) for p in fitted.probabilities]
        step = params.step_size or 2.5 * params.eps / params.steps
        x, y = ctx.unit_batch(unit)
        adv = pgd(ctx.model.logits, x, y, eps=params.eps, norm=params.norm,
                  steps=params.steps, step_size=step, seeds=fitted.seeds[unit.indices],
                  input_range=ctx.model.input_range)
        with torch.no_grad():
            clean_read, _ = read_layers(ctx.model, sites, x)
            adv_read, adv_logits = read_layers(ctx.model, sites, adv)
        return UnitResult({
            "clean": self._log_likelihood(sites, clean_read, probabilities, y, params),
            "adversarial": self._log_likelihood(sites, adv_read, probabilities, y, params),
            "fooled": (adv_logits.argmax(dim=1) != y).cpu(),
            "label": y.cpu(),
        })

    def reduce(self, params: LikelihoodParams, gathered: Gathered) -> MetricResult:
        clean = torch.from_numpy(gathered.arrays["clean"])
        adversarial = torch.from_numpy(gathered.arrays["adversarial"])
        drop = clean - adversarial
        labels = torch.from_numpy(gathered.arrays["label"]).long()
        table, series_clean, series_adv, classes = [], [], [], []
        for c in torch.unique(labels).tolist():
            mask = labels == c
            row = {"class": c, "samples": int(mask.sum()),
                   "clean": float(clean[mask].mean()),
                   "adversarial": float(adversarial[mask].mean()),
                   "drop": float(drop[mask].mean())}
            table.append(row)
            classes.append(float(c))
            series_clean.append(row["clean"])
            series_adv.append(row["adversarial"])
        return MetricResult(
            value=float(drop.mean()),
            samples=drop.numpy(),
            details={
                "clean_log_likelihood": float(clean.mean()),
                "adversarial_log_likelihood": float(adversarial.mean()),
                "classes_dropping": sum(r["drop"] > 0 for r in table) / len(table),
                "attack_success_rate": float(
                    torch.from_numpy(gathered.arrays["fooled"]).mean()),
                "step_size": params.step_size or 2.5 * params.eps / params.steps,
                "layers": list(gathered.fit["layers"]),
                "classes": table,
            },
            figures=[LinePlot(
                title="log-likelihood under the true class's significance distribution",
                x=tuple(classes), series={"clean": tuple(series_clean),
                                          "PGD": tuple(series_adv)},
                xlabel="class", ylabel="nats per interaction",
            )],
        )

    @staticmethod
    def _log_likelihood(sites: list[Site], read: dict[Site, torch.Tensor],
                        probabilities: list[torch.Tensor],
                        y: torch.Tensor, params: LikelihoodParams) -> torch.Tensor:
        """Per sample, the mean over layers of log P_y(s) (nats per interaction)."""
        total = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
        for site, p in zip(sites, probabilities, strict=True):
            layer = site.module
            assert isinstance(layer, torch.nn.Linear)
            sig = significance(read[site], layer, params.count_bias).flatten(1)
            total += bernoulli_log_likelihood(sig, p[y])
        return (total / len(sites)).cpu()

    def floor(self, ctx: AuditContext, params: LikelihoodParams) -> Floor:
        n = len(ctx.data())
        return Floor(forward=2 * n, gradient=n * params.steps,
                     note="clean and adversarial forward passes, every PGD step")


@hookimpl
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    register(AdversarialLikelihood())
