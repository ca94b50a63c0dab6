"""The metric plugin interface: :class:`Metric`, its :class:`MetricParams`, its result."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict, Field

from robaudit.errors import MetricError
from robaudit.figures import Figure
from robaudit.validation import InputModel

if TYPE_CHECKING:
    import numpy as np

    from robaudit.context import AuditContext


class MetricParams(InputModel):
    """Base of every metric's parameters: typed, bounded, defaults filled, unknown keys refused,
    numbers finite and never a boolean (see :class:`robaudit.validation.InputModel`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class IncludedParams(MetricParams):
    """Params of a metric that leaves points out (design §10, "honest values"): a DeepFool
    that did not converge, a pair that could not be projected, a class too small. Mix it into
    the metric's params and call :func:`included` in ``compute`` / ``reduce``."""

    min_included: float = Field(
        0.8, ge=0, le=1,
        description="the least share of the asked points the value may rest on; below it the "
                    "check is error (design §10)",
    )


def included(used: int, asked: int, min_included: float, what: str = "points") -> dict[str, Any]:
    """``details.included`` for a value resting on ``used`` of ``asked`` ``what``.

    Raises :class:`MetricError` (the check is ``error`` with the reason) when nothing was
    asked, nothing was used, or the used share is below ``min_included``: a value on a few
    easy points is not the value on the data (design §10)."""
    used, asked = int(used), int(asked)
    if asked <= 0:
        raise MetricError(f"no {what} to measure on")
    share = used / asked
    if used == 0 or share < min_included:
        raise MetricError(f"only {used} of {asked} {what} could be used ({share:.0%}); "
                          f"the value needs at least min_included = {min_included:.0%}")
    return {"used": used, "asked": asked, "share": share}


@dataclass
class MetricResult:
    """What :meth:`Metric.compute` returns.

    value    the number compared with the check's ``expect`` thresholds.
    samples  optional per-sample (or per-trial) values whose mean is ``value``; the runner
             derives a 95% confidence interval from them and the HTML report a histogram.
    ci       an explicit 95% interval, for metrics whose value is not a mean of ``samples``
             (e.g. a Wilson interval for an accuracy); it wins over the derived one.
    details  named numbers, strings and small tables (a table is a list of flat dicts).
    figures  extra plots for the HTML report.
    """

    value: float
    samples: np.ndarray | None = None
    ci: tuple[float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class Floor:
    """The least model work a metric needs, counted in samples: ``forward`` samples that need a
    forward pass only, ``gradient`` samples that need a forward pass and an input gradient,
    ``backward`` samples that need one more input gradient through a forward pass already
    counted (e.g. the further class gradients that DeepFool takes from one forward pass).
    ``bench/`` times these at the model's batched throughput to get the metric's floor."""

    forward: int = 0
    gradient: int = 0
    note: str = ""
    backward: int = 0

    def describe(self) -> str:
        """The counts in words, e.g. ``"400 forward + 200 gradient + 1,600 backward samples"``
        (the backward count only where there is one)."""
        backward = f" + {self.backward:,} backward" if self.backward else ""
        return f"{self.forward:,} forward + {self.gradient:,} gradient{backward} samples"


class Metric(ABC):
    """A robustness metric. Subclass it, set the class attributes, implement :meth:`compute`.

    name              the name that specs use (``metric: name``); lower_snake_case.
    Params            a :class:`MetricParams` subclass: the check's ``params`` are validated
                      against it when the spec is loaded, so bad params never reach compute.
    higher_is_better  the direction of ``value`` (shown by ``robaudit metrics``).
    source            the paper and section the metric implements.
    uses_data         False for a metric that reads only the weights (see below).
    has_interval      False for a metric whose value has no confidence interval.
    value_range       (low, high) the value can take, or None (see below).
    """

    name: ClassVar[str]
    Params: ClassVar[type[MetricParams]] = MetricParams
    higher_is_better: ClassVar[bool]
    source: ClassVar[str]
    #: whether the metric runs the model on the data; False for bounds read from the weights
    #: alone. A check that uses the data is ``error`` when the model's outputs are not finite.
    uses_data: ClassVar[bool] = True
    #: whether the value comes with a 95% interval (per-sample ``samples`` or an explicit
    #: ``ci``); ``expect.by: ci`` on a metric without one is a spec error.
    has_interval: ClassVar[bool] = True
    #: the range the value can take, e.g. (0, 1) for a fraction: the runner intersects the 95%
    #: interval with it (the true value lies inside, so coverage is kept).
    value_range: ClassVar[tuple[float, float] | None] = None

    @abstractmethod
    def compute(self, ctx: AuditContext, params: Any) -> MetricResult:
        """Compute the metric on ``ctx`` with validated ``params`` (an instance of ``Params``)."""

    def check_data(self, ctx: AuditContext, params: Any) -> None:
        """Check ``params`` against the loaded data before any check of the run starts; raise
        :class:`robaudit.errors.ParamError` (a located spec error, exit 4) for a param that
        cannot work on it. The default accepts everything."""
        return None

    def affinity(self, params: Any) -> Hashable | None:
        """A key of expensive work that this check shares with others through ``ctx.cache``
        (e.g. a universal perturbation's fit), or None. Under several processes, the whole
        checks and fits with the same key run on the same process, so the work is done once
        (design §8)."""
        return None

    def floor(self, ctx: AuditContext, params: Any) -> Floor | None:
        """The least model work this check needs (see :class:`Floor`); None if not stated."""
        return None

    @property
    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class Unit:
    """A work unit (design §8): a fixed, batch-aligned slice of the samples a check runs on,
    in index order. ``indices`` are positions in the audit split (or in the sequence that
    :meth:`SampleMetric.sample_count` counts); unit ``index`` k holds positions
    [k·B, (k+1)·B) for the spec's batch size B, whatever the number of processes."""

    index: int
    start: int
    stop: int

    @property
    def indices(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


def work_units(count: int, batch_size: int) -> list[Unit]:
    """The work units of ``count`` samples: batch-aligned, in index order."""
    return [Unit(k, start, min(start + batch_size, count))
            for k, start in enumerate(range(0, count, batch_size))]


@dataclass
class UnitResult:
    """What :meth:`SampleMetric.per_sample` returns for one unit.

    arrays  per-sample values by name, each with the unit's length as first dimension; the
            runner concatenates them across units in sample order, as float64.
    extra   small values that are not per sample (numbers, strings, figures), e.g. a gallery
            of the first samples; kept per unit, in unit order.
    """

    arrays: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Gathered:
    """Every unit's results, in sample order, as :meth:`SampleMetric.reduce` receives them.

    arrays  each per-sample array of every unit concatenated in sample order, float64.
    extras  each unit's ``extra``, in unit order.
    fit     what :meth:`SampleMetric.fit_summary` said of the fit.
    """

    arrays: dict[str, np.ndarray]
    extras: list[dict[str, Any]]
    fit: dict[str, Any] = field(default_factory=dict)


def gather_units(results: list[UnitResult], fit: dict[str, Any] | None = None) -> Gathered:
    """Concatenate units' results (given in unit order) into a :class:`Gathered`."""
    import numpy as np  # here, not at module level: plugin loading stays free of numpy

    names = list(results[0].arrays) if results else []
    for result in results:
        if list(result.arrays) != names:
            raise ValueError(f"units returned different arrays: {names} and "
                             f"{list(result.arrays)}")
    arrays = {name: np.concatenate([np.asarray(r.arrays[name], dtype=np.float64)
                                    for r in results]) for name in names}
    return Gathered(arrays, [r.extra for r in results], dict(fit or {}))


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in dataclasses, dicts, lists, tuples) on the CPU:
    what a fit looks like to every process, whichever device fitted it."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: on_cpu(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


class SampleMetric(Metric):
    """A metric whose work is per sample, so that it shards across processes (design §8).

    Implement :meth:`per_sample` (the work on one :class:`Unit`, a batch of the split) and
    :meth:`reduce` (the value from every unit's results, in sample order); optionally
    :meth:`fit` for work that needs the whole reference split (fitted once, before the units,
    and broadcast to every process, its tensors on the CPU: move what ``per_sample`` takes
    to ``ctx.device``) and :meth:`sample_count` when the metric runs on fewer
    samples than the split. The runner calls them: in one process over every unit; under
    ``torchrun`` or ``--shard`` each process takes the units k ≡ rank (mod processes), and the
    process that reports reduces. A metric written this way gives the same value, bit for bit,
    on any number of processes, as long as ``per_sample`` reads only its unit (its seeds from
    the sample positions, e.g. :func:`robaudit.ops.sampling.sample_seeds`) and ``fit`` only
    the reference split and the check's seed.
    """

    def sample_count(self, ctx: AuditContext, params: Any) -> int:
        """How many samples the units cover (default: the whole audit split)."""
        return len(ctx.data())

    def fit(self, ctx: AuditContext, params: Any) -> Any:
        """Work on the whole reference split that every unit needs (default: none)."""
        return None

    def fit_summary(self, fitted: Any) -> dict[str, Any]:
        """Numbers of the fit that :meth:`reduce` reports (JSON-able; default: none)."""
        return {}

    @abstractmethod
    def per_sample(self, ctx: AuditContext, params: Any, unit: Unit, fitted: Any
                   ) -> UnitResult:
        """The per-sample work on ``unit`` (samples ``unit.indices`` of the audit split)."""

    @abstractmethod
    def reduce(self, params: Any, gathered: Gathered) -> MetricResult:
        """The check's result from every unit's arrays, concatenated in sample order."""

    def compute(self, ctx: AuditContext, params: Any) -> MetricResult:
        """One process: fit (its tensors on the CPU, as every process receives them), every
        unit in order, reduce."""
        fitted = on_cpu(self.fit(ctx, params))
        units = work_units(self.sample_count(ctx, params), ctx.batch_size)
        task = ctx.progress(len(units), f"{self.name} units")
        results = []
        for unit in units:
            results.append(self.per_sample(ctx, params, unit, fitted))
            task.advance()
        return self.reduce(params, gather_units(results, self.fit_summary(fitted)))
