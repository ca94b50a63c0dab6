"""robaudit: pytest-style geometric robustness audits for PyTorch classifiers.

The public API for plugin authors lives here: subclass :class:`Metric` (with a pydantic
:class:`MetricParams` model), return a :class:`MetricResult`, and register it with the
``robaudit_register_metrics`` hook, marked with :data:`hookimpl`.
"""

from robaudit.context import AuditContext, DataSplit
from robaudit.errors import RobauditError, SpecError, UsageError
from robaudit.figures import Histogram, ImagePlot, LinePlot
from robaudit.hookspecs import hookimpl
from robaudit.metric import Floor, Metric, MetricParams, MetricResult
from robaudit.model import ModelUnderAudit

__version__ = "0.1.0"

__all__ = [
    "AuditContext",
    "DataSplit",
    "Floor",
    "Histogram",
    "ImagePlot",
    "LinePlot",
    "Metric",
    "MetricParams",
    "MetricResult",
    "ModelUnderAudit",
    "RobauditError",
    "SpecError",
    "UsageError",
    "__version__",
    "hookimpl",
]
