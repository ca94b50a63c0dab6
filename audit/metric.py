"""The metric plugin interface: :class:`Metric`, its :class:`MetricParams`, its result."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import ConfigDict

from robaudit.figures import Figure
from robaudit.validation import InputModel

if TYPE_CHECKING:
    from robaudit.context import AuditContext


class MetricParams(InputModel):
    """Base of every metric's parameters: typed, bounded, defaults filled, unknown keys refused,
    numbers finite and never a boolean (see :class:`robaudit.validation.InputModel`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    forward pass only, ``gradient`` samples that need a forward pass and an input gradient.
    ``bench/`` times these at the model's batched throughput to get the metric's floor."""

    forward: int = 0
    gradient: int = 0
    note: str = ""


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

    def floor(self, ctx: AuditContext, params: Any) -> Floor | None:
        """The least model work this check needs (see :class:`Floor`); None if not stated."""
        return None

    @property
    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = (type(self).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
