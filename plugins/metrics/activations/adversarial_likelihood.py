"""``adversarial_likelihood``: how far PGD pushes samples out of their class's significance
pattern (Khaitan 2024, §2.4, §3.3, Figure 16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field

from robaudit import Floor, LinePlot, Metric, MetricParams, MetricResult, hookimpl
from robaudit.context import AuditContext
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


class AdversarialLikelihood(Metric):
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
    """

    name: ClassVar[str] = "adversarial_likelihood"
    Params: ClassVar[type[MetricParams]] = LikelihoodParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "Khaitan 2024, §2.4, §3.3 (likelihood under PGD, Figure 16)"

    def check_data(self, ctx: AuditContext, params: LikelihoodParams) -> None:
        check_layer_names(ctx.model, params.layers, linear=True)

    def compute(self, ctx: AuditContext, params: LikelihoodParams) -> MetricResult:
        sites = linear_sites(ctx.model, params.layers)
        stats = layer_statistics(ctx, sites, "interactions", count_bias=params.count_bias)
        probabilities = []
        for interactions in stats:
            assert isinstance(interactions, InteractionStats)
            probabilities.append(bernoulli_probabilities(
                interactions.significant, interactions.samples, params.smoothing
            ).to(ctx.device))
        step = params.step_size or 2.5 * params.eps / params.steps
        clean_ll, adv_ll, fooled = [], [], []
        task = ctx.progress(len(ctx.data()), f"PGD {params.norm} eps={params.eps}")
        seeds = sample_seeds(ctx.generator, len(ctx.data()))  # one per sample: batch-free
        for start, (x, y) in zip(range(0, len(ctx.data()), ctx.batch_size), ctx.batches(),
                                 strict=True):
            adv = pgd(ctx.model.logits, x, y, eps=params.eps, norm=params.norm,
                      steps=params.steps, step_size=step,
                      seeds=seeds[start : start + len(x)],
                      input_range=ctx.model.input_range)
            with torch.no_grad():
                clean_read, _ = read_layers(ctx.model, sites, x)
                adv_read, adv_logits = read_layers(ctx.model, sites, adv)
            fooled.append((adv_logits.argmax(dim=1) != y).cpu())
            clean_ll.append(self._log_likelihood(sites, clean_read, probabilities, y, params))
            adv_ll.append(self._log_likelihood(sites, adv_read, probabilities, y, params))
            task.advance(x.shape[0])
        clean, adversarial = torch.cat(clean_ll), torch.cat(adv_ll)
        drop = clean - adversarial
        labels = ctx.data().y
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
                "attack_success_rate": float(torch.cat(fooled).double().mean()),
                "step_size": step,
                "layers": [s.label for s in sites],
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
