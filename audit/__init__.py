"""robaudit: pytest-style geometric robustness audits for PyTorch classifiers.

The public API for plugin authors lives here: subclass :class:`Metric` (with a pydantic
:class:`MetricParams` model), return a :class:`MetricResult`, and register it with the
``robaudit_register_metrics`` hook, marked with :data:`hookimpl`.

The names load on first use (PEP 562), so that ``import robaudit`` and the command line start
without importing torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AuditContext": "robaudit.context",
    "DataSplit": "robaudit.context",
    "RobauditError": "robaudit.errors",
    "SpecError": "robaudit.errors",
    "UsageError": "robaudit.errors",
    "Heatmap": "robaudit.figures",
    "Histogram": "robaudit.figures",
    "ImageGrid": "robaudit.figures",
    "ImagePlot": "robaudit.figures",
    "LinePlot": "robaudit.figures",
    "hookimpl": "robaudit.hookspecs",
    "Floor": "robaudit.metric",
    "Gathered": "robaudit.metric",
    "IncludedParams": "robaudit.metric",
    "included": "robaudit.metric",
    "MetricError": "robaudit.errors",
    "Metric": "robaudit.metric",
    "MetricParams": "robaudit.metric",
    "MetricResult": "robaudit.metric",
    "SampleMetric": "robaudit.metric",
    "Unit": "robaudit.metric",
    "UnitResult": "robaudit.metric",
    "ModelUnderAudit": "robaudit.model",
}

__all__ = [
    "AuditContext",
    "DataSplit",
    "Floor",
    "Gathered",
    "Heatmap",
    "Histogram",
    "ImageGrid",
    "ImagePlot",
    "IncludedParams",
    "LinePlot",
    "Metric",
    "MetricError",
    "MetricParams",
    "MetricResult",
    "ModelUnderAudit",
    "RobauditError",
    "SampleMetric",
    "SpecError",
    "Unit",
    "UnitResult",
    "UsageError",
    "__version__",
    "hookimpl",
    "included",
]

if TYPE_CHECKING:
    from robaudit.context import AuditContext, DataSplit
    from robaudit.errors import MetricError, RobauditError, SpecError, UsageError
    from robaudit.figures import Heatmap, Histogram, ImageGrid, ImagePlot, LinePlot
    from robaudit.hookspecs import hookimpl
    from robaudit.metric import (
        Floor,
        Gathered,
        IncludedParams,
        Metric,
        MetricParams,
        MetricResult,
        SampleMetric,
        Unit,
        UnitResult,
        included,
    )
    from robaudit.model import ModelUnderAudit


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'robaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
