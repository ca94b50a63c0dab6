"""Helpers to test a metric without a spec: build an :class:`AuditContext` from tensors.

Plugin authors use these the way pytest plugin authors use ``pytester``::

    ctx = make_context(model, x_test, y_test, reference=(x_train, y_train))
    result = run_metric(MyMetric(), ctx, pairs=50)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from robaudit.context import AuditContext, DataSplit, RunCache
from robaudit.metric import Metric, MetricResult, on_cpu
from robaudit.model import ModelUnderAudit


def make_context(
    model: nn.Module | ModelUnderAudit,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    features: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    models: dict[str, nn.Module | ModelUnderAudit] | None = None,
) -> AuditContext:
    """A context whose audit split is ``(x, y)`` ("test") and reference split ``reference``
    ("train"; default: the same tensors). Modules are wrapped in :class:`ModelUnderAudit`,
    put in eval mode and frozen (the context is for tests: the mode is not restored)."""

    def wrap(m: nn.Module | ModelUnderAudit, name: str) -> ModelUnderAudit:
        if isinstance(m, ModelUnderAudit):
            return m
        return ModelUnderAudit(
            m, input_range=input_range, features=features, device=device, name=name
        )

    mua = wrap(model, "model")
    mua.__enter__()
    audit = DataSplit(x, y)
    splits = {"test": audit, "train": DataSplit(*reference) if reference else audit}
    all_models = {"model": mua}
    for name, other in (models or {}).items():
        all_models[name] = wrap(other, name)
        all_models[name].__enter__()
    generator = torch.Generator().manual_seed(seed)
    return AuditContext(
        model=mua,
        splits=splits,
        split="test",
        reference="train",
        batch_size=batch_size,
        device=torch.device(device),
        seed=seed,
        generator=generator,
        run_seed=seed,
        models=all_models,
        cache=RunCache(),
    )


def run_metric(metric: Metric, ctx: AuditContext, **params: Any) -> MetricResult:
    """Validate ``params`` against the metric's ``Params`` and against the data
    (:meth:`Metric.check_data`, as the runner does), then compute the metric on ``ctx``."""
    validated = metric.Params.model_validate(params)
    metric.check_data(ctx, validated)
    return metric.compute(ctx, validated)


def run_metric_sharded(metric: Metric, ctx: AuditContext, world: int, **params: Any
                       ) -> MetricResult:
    """:func:`run_metric` as ``world`` processes would run it (design §8), in this process:
    each simulated process gets a fresh run cache and the check's seed afresh; a
    :class:`~robaudit.metric.SampleMetric` is fitted once (its tensors moved to the CPU, as
    the runner sends them), its units split round-robin and the shares reduced in sample
    order; another metric runs whole. A metric shards correctly when this equals
    :func:`run_metric` exactly."""
    from robaudit.sharding import reduce_shares, run_units, shards_samples

    validated = metric.Params.model_validate(params)
    metric.check_data(ctx, validated)
    if not shards_samples(metric):
        return metric.compute(fresh(ctx), validated)
    fitted = on_cpu(metric.fit(fresh(ctx), validated))  # type: ignore[attr-defined]
    shares = [run_units(metric, fresh(ctx), validated, fitted, rank, world)  # type: ignore[arg-type]
              for rank in range(world)]
    return reduce_shares(metric, validated, shares)  # type: ignore[arg-type]


def fresh(ctx: AuditContext) -> AuditContext:
    """``ctx`` with an empty run cache and its generator reset to its seed, as another
    process would have it (torch's global generator seeded with it too, as the runner does)."""
    torch.manual_seed(ctx.seed)
    return dataclasses.replace(ctx, cache=RunCache(),
                               generator=torch.Generator().manual_seed(ctx.seed))
