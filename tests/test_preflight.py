"""The preflight of attack-based checks (design §6) flags each red flag on a model built to
have it, and only that one on a clean linear model:

- dropout left on at test time (F.dropout with training=True): two forward passes differ;
- a model that returns softmax probabilities: rows in [0, 1] summing to 1;
- a quantised input (torch.round): zero input gradients, PGD far from 0 at the whole box;
- ``preflight: error`` makes a finding the check's error; the finding reaches the console.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robaudit.errors import MetricError
from robaudit.ops.preflight import FINDINGS, black_box_finding, model_findings
from robaudit.plugins.metrics.adversarial.attack_accuracy import FGSMAccuracy, PGDAccuracy
from robaudit.plugins.metrics.adversarial.autoattack import AutoAttackAccuracy
from robaudit.plugins.metrics.adversarial.deepfool_distortion import DeepFoolMinDistortion
from robaudit.plugins.metrics.adversarial.min_norm import MinNormDistortion
from robaudit.plugins.metrics.adversarial.transfer import TransferRate
from robaudit.plugins.metrics.universal.robustness_category import RobustnessCategory
from robaudit.plugins.metrics.universal.uap import UAPFoolingRate
from robaudit.testing import make_context, run_metric

D, N = 5, 30
BOX = (-4.0, 4.0)


def frozen(module: nn.Module) -> nn.Module:
    module = module.double().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Dropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.dropout(x, 0.5, training=True))


class Softmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).softmax(dim=1)


class Rounded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.round(x))


def data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    torch.manual_seed(1)
    with torch.no_grad():
        y = model.eval()(x).argmax(dim=1)
    return x, y


def findings(module_type: type[nn.Module]) -> set[str]:
    torch.manual_seed(0)
    model = frozen(module_type())
    x, y = data(model)
    return {f["check"] for f in model_findings(model, x, y, BOX)}


def test_each_model_gets_its_own_finding() -> None:
    assert findings(lambda: nn.Linear(D, 3)) == set()  # type: ignore[arg-type]
    assert "randomness" in findings(Dropout)
    assert findings(Softmax) == {"probabilities"}
    assert {"zero_gradients", "large_budget"} <= findings(Rounded)


def test_black_box_margin() -> None:
    assert black_box_finding(0.5, 0.495, "square") == []
    assert black_box_finding(0.5, 0.4, "square")[0]["check"] == "black_box"


def test_findings_reach_details_and_error_mode() -> None:
    torch.manual_seed(0)
    model = frozen(Softmax())
    x, y = data(model)
    result = run_metric(FGSMAccuracy(), make_context(model, x, y, input_range=BOX), eps=0.1)
    assert [f["check"] for f in result.details["preflight"]] == ["probabilities"]
    assert result.details["warnings"][0].startswith("preflight probabilities:")
    with pytest.raises(MetricError, match="probabilities"):
        run_metric(PGDAccuracy(), make_context(model, x, y, input_range=BOX), eps=0.1,
                   steps=3, preflight="error")
    with pytest.raises(MetricError, match="probabilities"):
        run_metric(MinNormDistortion(), make_context(model, x, y, input_range=BOX),
                   attacks=["deepfool"], preflight="error")
    clean = frozen(nn.Linear(D, 3))
    result = run_metric(PGDAccuracy(), make_context(clean, *data(clean), input_range=BOX),
                        eps=0.1, steps=3, preflight="error")
    assert result.details["preflight"] == [] and "warnings" not in result.details


#: every attack-based check (design §6: accuracy under attack, distortion, UAP, transfer)
ATTACK_CHECKS = [
    (FGSMAccuracy(), {"eps": 0.1}),
    (PGDAccuracy(), {"eps": 0.1, "steps": 3}),
    (AutoAttackAccuracy(), {"eps": 0.1, "version": "fast"}),
    (MinNormDistortion(), {"attacks": ["deepfool"]}),
    (DeepFoolMinDistortion(), {}),
    (UAPFoolingRate(), {"eps": 0.5, "max_passes": 1}),
    (RobustnessCategory(), {"eps": 0.5, "max_passes": 1}),
    (TransferRate(), {"source": "source"}),
]


@pytest.mark.parametrize(("metric", "params"), ATTACK_CHECKS,
                         ids=[m.name for m, _ in ATTACK_CHECKS])
def test_every_attack_check_runs_the_preflight(metric: object, params: dict) -> None:
    """A softmax model is flagged by every attack-based check, and ``preflight: error``
    makes the finding the check's error (for transfer, the source model is the one whose
    gradients the attack uses)."""
    torch.manual_seed(0)
    model = frozen(Softmax())
    x, y = data(model)
    clean = frozen(nn.Linear(D, 3))

    def context() -> object:
        if metric.name == "transfer_rate":
            return make_context(clean, x, y, input_range=BOX, models={"source": model})
        return make_context(model, x, y, input_range=BOX)

    with pytest.raises(MetricError, match="preflight probabilities"):
        run_metric(metric, context(), **params, preflight="error")


def test_metrics_doc_explains_every_finding() -> None:
    for metric, _ in ATTACK_CHECKS:
        for name in FINDINGS:
            assert f"``{name}``" in (type(metric).__doc__ or "")
