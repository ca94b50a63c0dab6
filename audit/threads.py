"""The CPU thread policy of a run (design §8): fast on an idle machine, no collapse on a busy
shared CI runner.

torch's default spins its OpenMP threads while they wait for work; with another process busy on
the same 2 cores the spinning threads steal each other's time: measured on whole audits
(``bench/threads.py``, ``docs/bench/threads.md``, issue #23), two threads with torch's default
wait took 6.5–13× the wall time and 5–13× the CPU of the best setting. OpenMP's *passive*
waiting removes that collapse, but each wake-up costs time, and on a small model, whose
operations are tiny, the wake-ups outweigh the work: on the digits ResNet (0.5 M multiply-adds
a sample) two passive threads were 2.4× slower than the best on an idle machine (issue #8), one
thread within 1.31×. On a ResNet-18 at 3×32×32 (37 M), two passive threads were within 1.10×
of the best in wall time and in CPU (the passive threads sleep rather than spin: 1.03–1.10× the
CPU of one thread, not the 2.5–6× of spinning ones) both on the machine as it was and next to
two core-burning loops, where one thread took 1.63× the wall time. So the default is one
thread for a model under :data:`SMALL_MODEL_MACS` multiply-adds per sample, else one per core
the process may actually use (its CPU affinity and its cgroup CPU quota, which a container's
runner sets), with OpenMP waiting passively. The choice depends only on the model and the
machine, never on timing, so a run's numbers do not change with it. ``--threads N`` overrides
the count; an ``OMP_WAIT_POLICY`` already in the environment is kept.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Where cgroup v2 and v1 state a CPU quota.
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
             Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpus(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """The CPU quota of this process's cgroup in cores (``cpu.max`` "200000 100000" → 2.0);
    None when there is no quota or it cannot be read."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = (int(p.read_text()) for p in v1)
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def affinity_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_cpus(affinity: int, quota: float | None) -> int:
    """The cores the process can actually use: its affinity, capped by a cgroup quota
    (rounded up, so a 1.5-core quota keeps 2 threads); at least 1."""
    cores = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, cores)


#: Below this many multiply-adds per sample a model's operations are too small to share.
SMALL_MODEL_MACS = 5_000_000


def default_threads(macs: int | None = None) -> int:
    """The default number of torch CPU threads: 1 for a model of fewer than
    :data:`SMALL_MODEL_MACS` multiply-adds a sample, else one per available core."""
    if macs is not None and macs < SMALL_MODEL_MACS:
        return 1
    return available_cpus(affinity_cpus(), cgroup_cpus())


def model_macs(network: torch.nn.Module, sample: torch.Tensor) -> int:
    """Multiply-adds of the convolutions and linear layers in one forward pass of one sample
    (counted with forward hooks; other layers are cheap beside them)."""
    import torch

    total = 0

    def count(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        per_output = (module.in_features if isinstance(module, torch.nn.Linear) else
                      module.in_channels // module.groups * math.prod(module.kernel_size))
        total += output.numel() // output.shape[0] * per_output

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    handles = [m.register_forward_hook(count) for m in network.modules()
               if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            network(sample[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def prefer_passive_waiting(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Ask OpenMP to wait passively unless the user chose a policy. Must run before torch is
    imported (OpenMP reads it when it starts)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def thread_setting(threads: int, environ: dict[str, str] | os._Environ[str] = os.environ
                   ) -> str:
    """The setting as the console header and the JSON ``environment`` show it."""
    policy = environ.get("OMP_WAIT_POLICY", "default").lower()
    return f"{threads} ({policy} wait)"
