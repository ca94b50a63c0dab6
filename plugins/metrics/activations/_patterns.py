"""The params shared by the metrics that model each class's significance pattern as independent
Bernoulli units (Khaitan 2024, §2.2 and §2.4): ``class_divergence`` and
``adversarial_likelihood``. A leading underscore: a helper module, not a plugin."""

from __future__ import annotations

from pydantic import Field

from robaudit import MetricParams


class PatternParams(MetricParams):
    layers: tuple[str, ...] | None = Field(
        None, min_length=1,
        description="nn.Linear modules whose interactions are counted (dotted names as "
                    "named_modules gives them); default: the last nn.Linear",
    )
    count_bias: bool = Field(
        True, description="n in the 1/n significance threshold counts the bias column"
    )
    smoothing: float = Field(
        0.5, gt=0, le=100,
        description="additive smoothing α of the Bernoulli probabilities, p = (k + α)/(n + 2α), "
                    "so that no log or KL meets a zero probability",
    )
