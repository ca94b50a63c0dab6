"""Memory of the curvature metrics is tied to the batch and the model, not to d × d or to all
directions × all points at once (issue #23; Fawzi et al. 2018, section 3): ``curvature_ratio``
(the shared subspace's fit, then ρ_i) and ``boundary_curvature`` (Lanczos above ``dense_max``
and the random-direction mean curvature) at d = 3 × 32 × 32 on a tiny smooth conv net.

Each metric runs in a child process (a fresh heap), like tests/test_memory.py: the child warms
up on a two-point run, resets its peak resident set size (Linux ``/proc/self/clear_refs``),
runs the metric on 16 points, and reports how far its peak rose. A batch of 32 inputs is
32 × 3072 × 4 B = 0.375 MiB; the bound, 96 batches (36 MiB), holds Lanczos's Krylov vectors
(at most ``KRYLOV_CHUNKS`` = 16 batches of them) and a transient copy, a chunk of
points × directions and its HVPs, DeepFool's batch × 10 candidate gradients and the
allocator's slack. Measured after the chunking: 19 MiB (curvature_ratio) and 14 MiB
(boundary_curvature). Before it (commit 935ca39) they were 1303 MiB (the fit's 16 d × d Gram
blocks in float64, then a 3072 × 3072 eigh) and 88 MiB (Lanczos on all 32 points of the batch,
the 64 random directions × all points at once): 36× and 2.5× the bound.
(``curvature_detection`` rose 27 MiB before and 16 MiB after: within the bound either way.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BATCH = 32
BATCH_BYTES = BATCH * 3 * 32 * 32 * 4
BOUND = 96 * BATCH_BYTES

CHILD = """
import json, sys
import torch
from torch import nn
from robaudit.plugins.metrics.curvature.boundary_curvature import BoundaryCurvature
from robaudit.plugins.metrics.curvature.curvature_ratio import CurvatureRatio
from robaudit.testing import make_context, run_metric

torch.set_num_threads(1)
name, batch = sys.argv[1], int(sys.argv[2])
metric, params = {
    "curvature_ratio": (CurvatureRatio(), dict(fit=16, points=16, directions=4, subspace=4,
                                               samples=16)),
    "boundary_curvature": (BoundaryCurvature(), dict(points=16)),
}[name]


def context(n):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(),
                          nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64, 10))
    x = torch.rand(n, 3, 32, 32, generator=g)
    return make_context(model, x, torch.randint(0, 10, (n,), generator=g), batch_size=batch)


def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


warm = {key: 2 if key in ("points", "fit") else value for key, value in params.items()}
run_metric(metric, context(8), **warm)  # one-time allocations of torch and the code
ctx = context(64)
ctx.logits(), ctx.logits("train")  # the whole-split caches
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident set size (VmHWM) to the current one
base = kib("VmRSS")
value = run_metric(metric, ctx, **params).value
print(json.dumps({"rise": (kib("VmHWM") - base) * 1024, "value": value}))
"""


def peak_rise(metric: str) -> int:
    """Bytes by which the child's peak RSS rose while ``metric`` ran at d = 3072."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, metric, str(BATCH)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(json.loads(done.stdout.strip().splitlines()[-1])["rise"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                    reason="peak RSS reset needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("metric", ["curvature_ratio", "boundary_curvature"])
def test_curvature_memory_is_tied_to_the_batch(metric: str) -> None:
    rise = peak_rise(metric)
    assert rise < BOUND, f"peak rose {rise / 2**20:.0f} MiB, bound {BOUND / 2**20:.0f} MiB"
