"""The DeepFool-based checks run in memory bounded by the run cache's budget and the batch, not
by the split's size times the input's (design §8, issue #22), with the same numbers whatever
the budget.

Memory: as tests/test_lazy_memory.py, a synthetic indexable data set makes sample i
(3×64×64 float32, 48 KiB) from seed i on demand, and each size runs in a child process (a
fresh heap) that resets its peak resident set size (Linux ``/proc/self/clear_refs``) before
each check, after a warm-up on 64 samples. The child sets the run cache's budget to 16 MiB
and the UAP's spectrum to 1 MiB of normals (their defaults, 1 GiB and 64 MiB, are the same
mechanism at sizes a test cannot reach quickly), then runs deepfool_min_distortion,
transfer_rate, boundary_curvature, uap_fooling_rate and min_norm_distortion (DeepFool only)
on a tiny model. DeepFool's per-sample results are three inputs' size (144 KiB a sample), so
holding them for the split, as the whole-split cache before issue #22 did, adds 72 MiB per
DeepFool run from N = 128 to N = 640 (the UAP's float64 matrix of normals 48 MiB more). The
budget keeps one unit of 64 samples (9 MiB) at either size, so both sizes run DeepFool again
on the units beyond it: the rise may grow by the per-sample results and features only (a few
KiB a sample).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from memory_probe import run_child
from torch import nn

from robaudit.metric import work_units
from robaudit.ops import deepfool as deepfool_module
from robaudit.plugins.metrics.adversarial.deepfool_distortion import DeepFoolMinDistortion
from robaudit.plugins.metrics.adversarial.min_norm import MinNormDistortion
from robaudit.plugins.metrics.adversarial.transfer import TransferRate
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.universal.uap import UAPFoolingRate
from robaudit.testing import make_context, run_metric

SMALL, LARGE = 128, 640

#: What each check's peak rise, and what the run holds after them, may grow by from N = 128
#: to N = 640: the per-sample results and features (under 2 KiB a sample, about 1 MiB) and
#: the allocator's noise (±8 MiB in tests/test_lazy_memory.py), against 72 MiB of DeepFool's
#: results per check.
GROWTH = 16 * 2**20

CHILD = """
import json, sys
import torch
from torch import nn
from memory_probe import Synthetic, kib, reset_peak
from robaudit.lazydata import LazyInputs
from robaudit.pluginmanager import load_plugins
from robaudit.plugins.metrics.universal import uap
from robaudit.testing import make_context, run_metric

torch.set_num_threads(1)
n = int(sys.argv[1])
uap.SPECTRUM_BYTES = 2**20  # 21 normals of 3x64x64 (a no-op before issue #22)
metrics = load_plugins().metrics
CHECKS = [
    ("deepfool_min_distortion", {}),
    ("transfer_rate", {"source": "source"}),
    ("boundary_curvature", {"points": 8, "k": 2, "directions": 4, "iterations": 6,
                            "min_included": 0.0}),
    ("uap_fooling_rate", {"fit_limit": 64, "max_passes": 2}),
    ("min_norm_distortion", {"attacks": ["deepfool"], "min_included": 0.0}),
]


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 4))


def context(count):
    reference = (LazyInputs(Synthetic(count), workers=0), torch.arange(count) % 4)
    ctx = make_context(net(0), LazyInputs(Synthetic(count), workers=0), torch.arange(count) % 4,
                       reference=reference, batch_size=64, models={"source": net(1)})
    ctx.cache.budget = 16 * 2**20  # an attribute the cache ignored before issue #22
    return ctx


def audit(ctx, measure):
    rises, values = {}, {}
    for name, params in CHECKS:
        if measure:
            reset_peak()
        base = kib("VmRSS")
        values[name] = run_metric(metrics[name], ctx, **params).value
        rises[name] = (kib("VmHWM") - base) * 1024
    return rises, values


audit(context(64), False)  # warm-up: one-time allocations of torch and the code
ctx = context(n)
start = kib("VmRSS")
rises, values = audit(ctx, True)
print(json.dumps({"rises": rises, "values": values, "held": (kib("VmRSS") - start) * 1024}))
"""


def child(n: int) -> dict[str, dict[str, float]]:
    """Each check's peak-RSS rise (bytes) and value on ``n`` samples, and the bytes the run
    still holds after them (``held``)."""
    return run_child(CHILD, n)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="peak RSS reset needs Linux /proc/self/clear_refs")
def test_peak_memory_of_the_deepfool_checks_is_flat_in_the_split_size() -> None:
    small, large = child(SMALL), child(LARGE)
    assert all(v == v for v in [*small["values"].values(), *large["values"].values()])
    report = ", ".join(f"{name} {small['rises'][name] / 2**20:.1f} → "
                       f"{large['rises'][name] / 2**20:.1f} MiB" for name in small["rises"])
    for name in small["rises"]:
        assert large["rises"][name] - small["rises"][name] < GROWTH, report
    assert large["held"] - small["held"] < GROWTH, (
        f"held {small['held'] / 2**20:.1f} → {large['held'] / 2**20:.1f} MiB; {report}")


@pytest.fixture
def deepfool_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The DeepFool runs of the test, one ``(model name, unit start)`` per unit run (not
    served by a cache)."""
    runs: list[tuple[str, int]] = []
    original = deepfool_module._run_unit

    def counted(ctx, unit, split, mua, options):  # type: ignore[no-untyped-def]
        runs.append((mua.name, unit.start))
        return original(ctx, unit, split, mua, options)

    monkeypatch.setattr(deepfool_module, "_run_unit", counted)
    return runs


def tiny_context(budget: int) -> tuple[object, int]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    source = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(4))
    ctx = make_context(model, x, torch.arange(40) % 4, batch_size=8, models={"source": source})
    ctx.cache.budget = budget
    return ctx, 40


CHECKS = [(DeepFoolMinDistortion(), {}), (TransferRate(), {"source": "source"}),
          (BoundaryCurvature(), {"points": 20, "min_included": 0.0}),
          (UAPFoolingRate(), {"fit_limit": 16, "max_passes": 2}),
          (MinNormDistortion(), {"attacks": ["deepfool"], "min_included": 0.0})]


def test_a_budget_of_zero_recomputes_deepfool_and_gives_the_same_numbers_bit_for_bit(
        deepfool_runs: list[tuple[str, int]]) -> None:
    """With a budget of 0 bytes no DeepFool unit is kept and every check runs its own;
    with the default budget each unit runs once for the whole audit (per model); the
    results are equal bit for bit, values, per-sample values and details."""
    runs = deepfool_runs
    results = {}
    for budget in (0, 2**30):
        runs.clear()
        ctx, n = tiny_context(budget)
        results[budget] = [run_metric(metric, ctx, **params) for metric, params in CHECKS]
        units = [u.start for u in work_units(n, 8)]
        if budget:
            assert sorted(runs) == sorted([("model", s) for s in units]
                                          + [("source", s) for s in units])
            assert ctx.cache.held > 0
        else:
            assert len(runs) > 2 * len(units) and ctx.cache.held == 0
    for bounded, unbounded in zip(results[0], results[2**30], strict=True):
        assert bounded.value == unbounded.value or (bounded.value != bounded.value
                                                    and unbounded.value != unbounded.value)
        if bounded.samples is not None:
            assert bounded.samples.tobytes() == unbounded.samples.tobytes()
        assert json.dumps(bounded.details, default=str) == json.dumps(unbounded.details,
                                                                      default=str)


def test_the_cache_keeps_bounded_entries_within_its_budget_and_the_others_always() -> None:
    """Bounded entries are kept while their tensors fit the budget, a newcomer that does not
    fit is returned but not kept (computed again when asked next), unbounded ones always."""
    from robaudit.context import RunCache

    cache = RunCache(budget=100)
    calls: list[str] = []

    def make(name: str, size: int) -> torch.Tensor:
        calls.append(name)
        return torch.zeros(size, dtype=torch.uint8)

    assert cache.get_or_compute("a", lambda: make("a", 60), bounded=True).numel() == 60
    assert cache.get_or_compute("b", lambda: make("b", 60), bounded=True).numel() == 60
    assert "a" in cache and "b" not in cache and cache.held == 60
    cache.get_or_compute("b", lambda: make("b", 60), bounded=True)
    cache.get_or_compute("a", lambda: make("a", 60), bounded=True)
    assert calls == ["a", "b", "b"]
    cache.get_or_compute("c", lambda: make("c", 1000))  # not bounded: kept whatever its size
    assert "c" in cache and cache.held == 60
    assert cache.take("a") is not None and cache.held == 0


def test_the_disk_cache_serves_the_units_that_the_budget_does_not_keep(
        tmp_path: Path, deepfool_runs: list[tuple[str, int]]) -> None:
    """``--cache-dir`` stores DeepFool per work unit: with a budget of 0 bytes a run that asks
    for a unit twice reads it back from the disk (no second DeepFool run), and a later run
    runs no DeepFool at all, with the same value bit for bit."""
    from robaudit.diskcache import DiskStore

    runs = deepfool_runs
    values = []
    for _ in range(2):
        ctx, n = tiny_context(0)
        ctx.cache.disk = DiskStore(tmp_path, "salt", torch.device("cpu"))
        values += [run_metric(DeepFoolMinDistortion(), ctx).value,
                   run_metric(MinNormDistortion(), ctx, attacks=["deepfool"]).value]
        assert ctx.cache.held == 0
    assert sorted(start for _, start in runs) == [u.start for u in work_units(n, 8)]  # once
    assert values[0] == values[2] and values[1] == values[3]
    stored = [torch.load(path, weights_only=True)["key"] for path in tmp_path.glob("*.pt")]
    assert len([key for key in stored if "('deepfool'," in key]) == len(work_units(n, 8))


def test_the_uap_spectrum_is_that_of_the_leading_normals_that_its_bytes_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """uap_fooling_rate keeps the boundary normals of the first SPECTRUM_BYTES / (4 d)
    samples only (here 18 of 40, across units of 8): its singular values are those of the
    converged ones among them, computed here from deepfool_split's normals by a dense SVD,
    and details count them and the converged samples of the whole split."""
    from robaudit.ops.deepfool import deepfool_split
    from robaudit.plugins.metrics.universal import uap

    monkeypatch.setattr(uap, "SPECTRUM_BYTES", 4 * 12 * 18)
    ctx, _ = tiny_context(2**30)
    result = run_metric(UAPFoolingRate(), ctx, fit_limit=16, max_passes=2)
    whole = deepfool_split(ctx, norm="l2")
    normals = whole.normal[:18][whole.converged[:18]].double()
    assert result.details["normals"] == normals.shape[0] > uap.TOP_SINGULAR_VALUES
    assert result.details["normals_converged"] == int(whole.converged.sum())
    values = torch.linalg.svdvals(normals)
    expected = [round(float(v), 6) for v in (values / values[0])[:uap.TOP_SINGULAR_VALUES]]
    assert result.details["normals_singular_values"] == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0), ("4096", 4096), ("512M", 512 * 2**20), ("4G", 4 * 2**30), ("1.5GiB", 3 * 2**29),
    ("2 gb", 2 * 2**30), ("64k", 64 * 2**10), ("1T", 2**40),
])
def test_cache_memory_sizes_read_in_binary_units(text: str, expected: int) -> None:
    from robaudit.runsetup import memory_bytes

    assert memory_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "4X", "nan", "inf", "G", ""])
def test_a_cache_memory_that_is_not_a_size_is_a_usage_error(text: str) -> None:
    from robaudit.errors import UsageError
    from robaudit.runsetup import memory_bytes

    with pytest.raises(UsageError, match=f"--cache-memory {text}: expected a size"):
        memory_bytes(text)


def test_cache_memory_bounds_the_run_and_keeps_its_values(
        write_spec: Callable[..., Path], robaudit_main: Callable[..., tuple[int, str, str]],
        tmp_path: Path, deepfool_runs: list[tuple[str, int]]) -> None:
    """``run --cache-memory 0`` keeps no DeepFool unit: each read runs it again (three:
    deepfool_min_distortion's values and its gallery, min_norm_distortion's), where the default
    runs it once for both checks, and the report's values are the same; a size that is not
    one is exit code 4, naming the option."""
    runs = deepfool_runs
    spec = write_spec("audit: budget\nmodel:\n  factory: toy_model.py:linear\ndata:\n"
                      "  source: toy\n  n: 16\nchecks:\n  - metric: deepfool_min_distortion\n"
                      "  - metric: min_norm_distortion\n    params: {attacks: [deepfool]}\n")
    values = {}
    for size, expected_runs in ((None, 1), ("0", 3)):
        runs.clear()
        report = tmp_path / f"{size}.json"
        extra = [] if size is None else ["--cache-memory", size]
        code, out, err = robaudit_main("run", spec, "--json", report, *extra)
        assert code == 0, out + err
        assert len(runs) == expected_runs
        checks = json.loads(report.read_text())["checks"]
        values[size] = [(c["value"], c["samples"]) for c in checks]
    assert values["0"] == values[None]
    code, _, err = robaudit_main("run", spec, "--cache-memory", "lots")
    assert code == 4 and "--cache-memory lots: expected a size" in err
