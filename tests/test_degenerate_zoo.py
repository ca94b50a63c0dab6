"""Every registered metric on a zoo of degenerate models and data (issue #20, design §10).

The metrics come from the plugin manager, so a metric added later is run here without anyone
listing it. Each (metric, case) gives its analytic value or is an ``error`` whose message
names the cause; never a number that happens to be the best score. ``EXPECTED`` holds the
answer known for the built-in metrics: analytic (the isometry's rank order 1), or computed
independently from the model and the data (``BRUTE``: accuracy, activation frequencies,
significant interactions by loops, the Lipschitz product), or an error whose message must
match the cause. A (metric, case) without an entry (a new metric, or a case whose value has no
closed form) must return a finite value inside the metric's ``value_range`` and, on the
input-independent cases, not the best end of it; an error there fails the test. On a
constant classifier a robust accuracy of 1/3 (its clean accuracy), a fooling rate of 0 or a
convexity of 1 are true, so those rows accept the value or an error naming the cause.

Cases (3 classes, 6 inputs in [0, 1], 24 audit and 24 reference samples, float64):
- ``linear``: g an isometry (orthonormal columns), no nonlinearity: feature distances are the
  input distances, so rank order 1, sphere condition number 1, feature ITW = input ITW;
- ``constant_logits``: every weight 0, constant features 0.3, biases that make class 0 the
  prediction: logits do not depend on the input;
- ``dead_relu``: every ReLU of the feature layer dead (features all 0), same biases;
- ``leaky_<hvp>``: a LeakyReLU network, with each ``hvp`` where the metric has that param
  (its exact Hessian is 0 almost everywhere);
- ``one_class``: a network whose logits depend on the input but predict class 0 everywhere;
- ``duplicates``: the isometry on an audit split of 4 samples repeated 6 times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from test_activation_ops import brute_significance
from torch import nn

from robaudit.errors import MetricError
from robaudit.metric import Metric, MetricResult
from robaudit.pluginmanager import load_plugins
from robaudit.testing import make_context, run_metric

METRICS = load_plugins().metrics
CLASSES, DIM, HIDDEN, N = 3, 6, 8, 24
HVPS = ("finite_difference", "exact", "softplus")
#: Logit biases of the input-independent models: class 0 is predicted everywhere.
BIAS = (0.5, 0.2, -0.1)

#: Small settings that keep each run tiny, applied where a metric has the param.
TINY: dict[str, Any] = {
    "steps": 3, "trials": 5, "pairs": 6, "samples": 4, "bootstrap": 20,
    "search_steps": 2, "combinations": 5, "k": [2, 3], "fit": 6, "directions": 3, "subspace": 2,
    "T": 3, "max_passes": 2, "fit_limit": 12, "units": 2, "top": 3, "iterations": 30,
    "max_depth": 3, "max_anchors": 8, "restarts": 1, "queries": 20, "n": 3,
}
#: Per-metric settings over TINY (a param whose meaning differs between metrics).
OWN: dict[str, dict[str, Any]] = {
    "sphere_deformation": {"points": 20},
    "lbfgs_min_distortion": {"search_steps": 6},
    "boundary_curvature": {"points": 4, "k": 2, "directions": 4},
    "curvature_ratio": {"points": 4, "samples": 4},
    "curvature_detection": {"points": 4},
    "curvature_subspace_vulnerability": {"points": 4, "norms": [0.1, 0.3]},
    "region_convexity": {"k": [2, 3]},
    "transfer_rate": {"source": "other"},
    "robustness_category": {"steps": 3},
}


# -- the zoo --------------------------------------------------------------------------------
def _net(activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, HIDDEN), activation, nn.Linear(HIDDEN, CLASSES)).double()


def isometry() -> nn.Sequential:
    net = _net(nn.Identity())
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, DIM, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.copy_(q)
        net[0].bias.zero_()
    return net


def input_independent(hidden_bias: float) -> nn.Sequential:
    """Every weight 0: features ReLU(hidden_bias), logits BIAS."""
    net = _net(nn.ReLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(hidden_bias)
        net[2].weight.zero_()
        net[2].bias.copy_(torch.tensor(BIAS))
    return net


def dead_relu() -> nn.Sequential:
    net = _net(nn.ReLU())
    with torch.no_grad():
        net[0].bias.fill_(-10.0)  # inputs in [0, 1], weights within ±0.41: every unit dead
        net[2].bias.copy_(torch.tensor(BIAS))
    return net


def leaky() -> nn.Sequential:
    """A LeakyReLU network centred on the input box, predicting all three classes."""
    net = _net(nn.LeakyReLU(0.1))
    with torch.no_grad():
        net[0].weight.mul_(8.0)
        net[0].bias.copy_(-net[0].weight.sum(1) * 0.5)
        net[2].weight.mul_(8.0)
    return net


def one_class() -> nn.Sequential:
    net = _net(nn.ReLU())
    with torch.no_grad():
        net[2].weight.mul_(0.1)
        net[2].bias.copy_(torch.tensor([1.5, 0.0, 0.0]))
    return net


def data(seed: int, distinct: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 0.05 + 0.9 * torch.rand(distinct, DIM, generator=g, dtype=torch.float64)
    y = torch.arange(distinct) % CLASSES
    repeat = N // distinct
    return x.repeat(repeat, 1), y.repeat(repeat)


@dataclass(frozen=True)
class Case:
    name: str
    model: Any
    distinct: int = N
    hvp: str | None = None


CASES = [Case("linear", isometry), Case("constant_logits", lambda: input_independent(0.3)),
         Case("dead_relu", dead_relu), *(Case(f"leaky_{h}", leaky, hvp=h) for h in HVPS),
         Case("one_class", one_class), Case("duplicates", isometry, distinct=4)]
#: The cases whose logits do not depend on the input.
CONSTANT = {"constant_logits", "dead_relu"}


# -- what each metric must give ----------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    """The analytic value (a number, or a function of the result and the context's data)."""

    expected: Any
    tol: float = 1e-9


@dataclass(frozen=True)
class Error:
    """An error whose message matches ``cause``."""

    cause: str


@dataclass(frozen=True)
class Either:
    """The analytic value or an error naming the cause (both honest)."""

    value: Value
    error: Error


DEFINED = None  # a finite value inside the value range; its size is the family tests' business

STILL_INPUT = "depend|gradient|constant|no step|converge|tied|boundary|dead|zero|flat"
HESSIAN_ZERO = r"Hessian|hessian|curvature.*(0|zero)|zero.*curvature|flat|linear"
CURVATURE = ("boundary_curvature", "curvature_ratio", "curvature_detection",
             "curvature_subspace_vulnerability")


def accuracy_of(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def sparsity_of(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """The inputs of the two nn.Linear: x and the hidden activations, > 0, pooled per unit."""
    with torch.no_grad():
        hidden = model[1](model[0](x))
    return float(torch.cat([(x > 0).double().mean(0), (hidden > 0).double().mean(0)]).mean())


def interactions_of(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """§2.1 by the loops of tests/test_activation_ops.py on the last nn.Linear."""
    with torch.no_grad():
        hidden = model[1](model[0](x)).numpy()
    head = model[2]
    return float(brute_significance(hidden, head.weight.detach().numpy(),
                                    head.bias.detach().numpy(), True).mean())


def lipschitz_of(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """The product of the linear layers' largest singular values (the identity in between)."""
    return float(np.prod([torch.linalg.matrix_norm(m.weight.detach(), 2).item()
                          for m in model if isinstance(m, nn.Linear)]))


#: Answers computed independently from the model and the data, by name.
BRUTE = {"accuracy": accuracy_of, "sparsity": sparsity_of, "interactions": interactions_of,
         "lipschitz": lipschitz_of}


def _table() -> dict[str, dict[str, Any]]:
    # on every case unless its row says otherwise
    brute = {"clean_accuracy": Value("accuracy"), "activation_sparsity": Value("sparsity"),
             "interaction_significance": Value("interactions")}
    third = Value(1 / 3)
    robust_constant = Either(third, Error(STILL_INPUT))  # no perturbation moves the output
    constant = {
        "clean_accuracy": third,
        "fgsm_accuracy": robust_constant, "pgd_accuracy": robust_constant,
        "noise_accuracy": robust_constant,
        "interaction_significance": Error("no weight·activation product of input of 2 is "
                                          "significant"),  # only the bias column of each row
        "class_divergence": Value(0.0), "adversarial_likelihood": Value(0.0),
        "rank_order_spearman": Error("same feature vector.*constant"),
        "sphere_deformation": Error("min distance 0.*infinite there, or undefined \\(0/0\\)"),
        "intertwinedness": Error("same feature vector.*constant"),
        "fgsm_output_change": Error("gradient is 0 at every audit sample"),
        "unit_semantics": Error("no unit of the feature layer varies"),
        "deepfool_min_distortion": Error(STILL_INPUT),
        "lbfgs_min_distortion": Error(STILL_INPUT),
        "boundary_curvature": Error(STILL_INPUT), "curvature_ratio": Error(STILL_INPUT),
        "curvature_detection": Error(STILL_INPUT),
        "curvature_subspace_vulnerability": Error(STILL_INPUT),
        "region_connectivity": Either(Value(1.0), Error(f"{STILL_INPUT}|predicted as class")),
        "min_norm_distortion": Error(STILL_INPUT),
        # true of a constant classifier: its one region is the whole space (connected and
        # convex), and no perturbation changes its output (its clean accuracy gives it away)
        "region_convexity": Either(Value(1.0), Error(STILL_INPUT)),
        "uap_fooling_rate": Either(Value(0.0), Error(STILL_INPUT)),
        "robustness_category": Either(Value(1.0), Error(STILL_INPUT)),
        "transfer_rate": Either(Value(2 / 3), Error(STILL_INPUT)),
    }
    # a boundary far outside the box: the attacks find none, and say so
    unreachable = Error("DeepFool (did not converge|moved no sample)")
    one = {name: unreachable for name in (
        "deepfool_min_distortion", "boundary_curvature", "curvature_ratio",
        "curvature_detection", "curvature_subspace_vulnerability")}
    # a linear model's boundaries are flat: zero curvature, or an error saying so
    flat = {name: Error(HESSIAN_ZERO) for name in CURVATURE}
    flat["boundary_curvature"] = Either(Value(0.0, 1e-6), Error(HESSIAN_ZERO))
    table = {
        "linear": {
            "rank_order_spearman": Value(1.0), "sphere_deformation": Value(1.0, 1e-6),
            "intertwinedness": Value(lambda r: r.details["input_itw_n"]),
            **flat, "lipschitz_bound": Value("lipschitz"),
        },
        "constant_logits": {
            **constant,
            "activation_sparsity": Value(1.0),  # the inputs (all > 0) and hidden units (0.3)
            "manifold_entanglement": Value(1.0),  # every class the same one-dimensional span
            "lipschitz_bound": Value(0.0),
        },
        "dead_relu": {
            **constant,
            "activation_sparsity": Error("no unit of input of 2 is active"),  # a dead layer
            "manifold_entanglement": Error("rank 0 at input of 2"),
        },
        # softplus replaces only ReLU: the LeakyReLU network stays piecewise linear
        **{f"leaky_{hvp}": {name: Error(HESSIAN_ZERO) for name in CURVATURE}
           for hvp in ("exact", "softplus")},
        # finite differences see the kinks near some boundary points only: the shared
        # directions' fit may rest on too few of them (details.included, min_included)
        "leaky_finite_difference": {name: Either(DEFINED, Error("could be used"))
                                    for name in ("curvature_ratio",
                                                 "curvature_subspace_vulnerability")},
        "one_class": {**one, "clean_accuracy": Value(1 / 3), "region_convexity": Value(1.0),
                      "lbfgs_min_distortion": Error("L-BFGS failed to reach the target"),
                      "min_norm_distortion": Error("boundaries lie outside the box"),
                      "region_connectivity": Error("every audit sample is predicted as "
                                                   "class 0")},
        "duplicates": {  # the isometry again: its boundaries are flat too
            "rank_order_spearman": Value(1.0), "sphere_deformation": Value(1.0, 1e-6), **flat,
        },
    }
    return {case.name: {**brute, **table.get(case.name, {})} for case in CASES}


EXPECTED = _table()

def _params(name: str, metric: Metric, case: Case) -> dict[str, Any]:
    fields = metric.Params.model_fields
    params = {k: v for k, v in {**TINY, **OWN.get(name, {})}.items() if k in fields}
    if case.hvp is not None and "hvp" in fields:
        params["hvp"] = case.hvp
    return params


def _runs() -> list[Any]:
    runs = []
    for name in sorted(METRICS):
        fields = METRICS[name].Params.model_fields
        for case in CASES:
            if case.hvp not in (None, HVPS[0]) and "hvp" not in fields:
                continue  # the hvp variants only where the metric has the param
            runs.append(pytest.param(name, case, id=f"{name}-{case.name}"))
    return runs


@pytest.mark.parametrize("name,case", _runs())
def test_every_metric_gives_its_analytic_value_or_names_the_cause(name: str, case: Case) -> None:
    metric = METRICS[name]
    model = case.model()
    x, y = data(0, case.distinct)
    reference = data(1)
    ctx = make_context(model, x, y, reference=reference, batch_size=16,
                       models={"other": isometry()})
    expected = EXPECTED.get(case.name, {}).get(name, DEFINED)
    try:
        result = run_metric(metric, ctx, **_params(name, metric, case))
    except MetricError as exc:
        message = str(exc)
        cause = expected.error.cause if isinstance(expected, Either) else (
            expected.cause if isinstance(expected, Error) else None)
        assert cause is not None, f"{name} on {case.name}: unexpected error: {message}"
        assert re.search(cause, message), f"{name} on {case.name}: {message!r} names no cause"
        return
    assert not isinstance(expected, Error), (
        f"{name} on {case.name} gave {result.value!r}, expected an error naming "
        f"{expected.cause!r}")
    value = expected.value if isinstance(expected, Either) else expected
    _check_value(name, metric, case, result, value, model, x, y)


def _check_value(name: str, metric: Metric, case: Case, result: MetricResult,
                 expected: Value | None, model: nn.Module, x: torch.Tensor,
                 y: torch.Tensor) -> None:
    assert np.isfinite(result.value), f"{name} on {case.name}: value {result.value}"
    if metric.value_range is not None:
        low, high = metric.value_range
        assert low - 1e-9 <= result.value <= high + 1e-9
    if expected is None:
        if case.name in CONSTANT and metric.value_range is not None:
            best = metric.value_range[1] if metric.higher_is_better else metric.value_range[0]
            assert result.value != best, (
                f"{name} scores its best value {best} on a model whose logits do not depend "
                "on its input: give its analytic value in EXPECTED or make it an error")
        return
    target = expected.expected
    if isinstance(target, str):
        target = BRUTE[target](model, x, y)
    elif callable(target):
        target = target(result)
    assert result.value == pytest.approx(target, abs=expected.tol), f"{name} on {case.name}"


def test_every_registered_metric_is_in_the_zoo() -> None:
    """The runs come from the registry: no metric is left out, whoever adds it."""
    ran = {param.values[0] for param in _runs()}
    assert ran == set(METRICS) and len(METRICS) >= 26
