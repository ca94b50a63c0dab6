"""Memory of the pair and neighbour metrics is tied to the batch, not to split size × input
dimension (design §8): rank_order_spearman on an audit split of 8192 samples of 3×32×32,
intertwinedness with a reference split of 8192 such samples (and an audit split of 1024, to
keep the 8.4 million input-space distances within the test's time).

Each metric runs in a child process (a fresh heap) on random data and a tiny model
(avgpool + linear); the child resets its peak resident set size (Linux
``/proc/self/clear_refs``) once the data and the whole-split feature caches exist, runs the
metric with its default params, and reports how far its peak rose above that baseline. An
8192-sample split is 8192 × 3072 float32 = 96 MiB; a batch of 32 inputs is 0.375 MiB. The
bound, 96 batches of inputs (36 MiB), leaves room for the distance blocks, the sampled pairs'
indices and distances, the per-sample results and the allocator's slack; it is a third of one
copy of the split. Before the chunking (commit 413c67e) the rises were 3.4 GiB (Spearman) and
6.9 GiB (intertwinedness): 98× and 197× the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BATCH = 32
INPUT_SHAPE = (3, 32, 32)
BATCH_BYTES = BATCH * 3 * 32 * 32 * 4
BOUND = 96 * BATCH_BYTES

CHILD = """
import json, sys
import torch
from torch import nn
from robaudit.plugins.metrics.deformation.intertwinedness import Intertwinedness
from robaudit.plugins.metrics.deformation.spearman import RankOrderSpearman
from robaudit.testing import make_context, run_metric

torch.set_num_threads(1)
name, audit, reference, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
metric = {"spearman": RankOrderSpearman(), "intertwinedness": Intertwinedness()}[name]


def context(n_audit, n_reference):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(192, 10))
    x = torch.rand(n_audit, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n_audit,), generator=g)
    ref = None
    if n_reference:
        ref = (torch.rand(n_reference, 3, 32, 32, generator=g),
               torch.randint(0, 10, (n_reference,), generator=g))
    ctx = make_context(model, x, y, reference=ref, batch_size=batch)
    ctx.features(), ctx.features("train")  # the whole-split caches: allowed to grow with N
    return ctx


def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


run_metric(metric, context(100, 0))  # warm-up: one-time allocations of torch and the code
ctx = context(audit, reference)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident set size (VmHWM) to the current one
base = kib("VmRSS")
value = run_metric(metric, ctx).value
print(json.dumps({"rise": (kib("VmHWM") - base) * 1024, "value": value}))
"""


def peak_rise(metric: str, audit: int, reference: int = 0) -> int:
    """Bytes by which the child's peak RSS rose while ``metric`` ran on ``audit`` samples
    (``reference``: a separate reference split of that size; 0: the audit split itself)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, metric, str(audit), str(reference), str(BATCH)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(json.loads(done.stdout.strip().splitlines()[-1])["rise"])


needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="peak RSS reset needs Linux /proc/self/clear_refs")


@needs_proc
def test_spearman_memory_is_tied_to_the_batch() -> None:
    rise = peak_rise("spearman", 8192)
    assert rise < BOUND, f"peak rose {rise / 2**20:.0f} MiB, bound {BOUND / 2**20:.0f} MiB"


@needs_proc
def test_intertwinedness_memory_is_tied_to_the_batch() -> None:
    rise = peak_rise("intertwinedness", 1024, reference=8192)
    assert rise < BOUND, f"peak rose {rise / 2**20:.0f} MiB, bound {BOUND / 2**20:.0f} MiB"
