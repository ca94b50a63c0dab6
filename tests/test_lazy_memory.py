"""Peak memory of an audit over a lazy split is flat in the split's size (design §8: what a
run keeps per sample is results and features, never inputs).

A synthetic indexable data set makes sample i (3×64×64 float32, 48 KiB) from seed i on
demand, with no file: held whole, 4096 samples would be 192 MiB and 512 samples 24 MiB. Each
size runs in a child process (a fresh heap, as tests/test_memory.py does): after a warm-up
run on 64 samples, the child resets its peak resident set size (Linux ``/proc/self/clear_refs``)
and runs three cheap checks of the default audit on a tiny model: accuracy (a whole-split pass
read through the DataLoader with a worker), noise (work units read by index) and Spearman
(pairs read by index). (DeepFool's
cached boundary points and normals, and the universal perturbation's matrix of normals, are
per-sample results of the input's size: they grow with N by design of those checks.) The
peak's rise at N = 4096 may exceed the rise at N = 512 by the per-sample results and features
that grow with N (a few MiB), never by the 168 MiB of inputs
between the two sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from memory_probe import run_child

#: What the rise may grow by per sample from N = 512 to N = 4096: the checks' per-sample
#: results and features (measured: under 2 KiB a sample) against an input's 48 KiB.
GROWTH_PER_SAMPLE = 4 * 2**10

CHILD = """
import json, sys
import torch
from torch import nn
from memory_probe import Synthetic, kib, reset_peak
from robaudit.lazydata import LazyInputs
from robaudit.pluginmanager import load_plugins
from robaudit.testing import make_context, run_metric

torch.set_num_threads(1)
n = int(sys.argv[1])
metrics = load_plugins().metrics
CHECKS = [("clean_accuracy", {}), ("noise_accuracy", {"sigma": 0.05}),
          ("rank_order_spearman", {"pairs": 20, "trials": 20})]


def context(count):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = (LazyInputs(Synthetic(count), workers=1), torch.arange(count) % 4)
    return make_context(model, LazyInputs(Synthetic(count), workers=1),
                        torch.arange(count) % 4, reference=reference, batch_size=64)


def audit(ctx):
    return [run_metric(metrics[name], ctx, **params).value for name, params in CHECKS]


audit(context(64))  # warm-up: one-time allocations of torch and the code
ctx = context(n)
reset_peak()
base = kib("VmRSS")
values = audit(ctx)
print(json.dumps({"rise": (kib("VmHWM") - base) * 1024, "values": values}))
"""


def peak_rise(n: int) -> tuple[int, list[float]]:
    """Bytes by which the child's peak RSS rose while the checks ran on ``n`` samples."""
    found = run_child(CHILD, n)
    return int(found["rise"]), found["values"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="peak RSS reset needs Linux /proc/self/clear_refs")
def test_peak_memory_of_a_lazy_split_is_flat_in_its_size() -> None:
    small, small_values = peak_rise(512)
    large, large_values = peak_rise(4096)
    assert all(v == v for v in small_values + large_values)  # every check gave a number
    assert large - small < GROWTH_PER_SAMPLE * (4096 - 512), (
        f"peak rose {small / 2**20:.1f} MiB at N = 512 and {large / 2**20:.1f} MiB at "
        f"N = 4096; the inputs alone would add 168 MiB")
