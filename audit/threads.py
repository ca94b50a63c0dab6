"""The CPU thread policy of a run (design §8): fast on an idle machine, no collapse on a busy
shared CI runner.

torch's default spins its OpenMP threads while they wait for work; with another process busy on
the same 2 cores the spinning threads steal each other's time and checks slow down 4–10×.
Measured by issue #8 on 2 cores (default audit): 24 s with torch's default under a busy
neighbour, 6.7 s with one thread, 8.3 s with both threads and OpenMP's *passive* waiting; idle,
two threads are 1.9× faster than one on a ResNet-18 at 3×32×32. So the default keeps one thread
per core the process may actually use (its CPU affinity and its cgroup CPU quota, which a
container's runner sets) and makes OpenMP wait passively. ``--threads N`` overrides the count;
an ``OMP_WAIT_POLICY`` already in the environment is kept.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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


def default_threads() -> int:
    """The default number of torch CPU threads: one per available core."""
    return available_cpus(affinity_cpus(), cgroup_cpus())


def prefer_passive_waiting(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Ask OpenMP to wait passively unless the user chose a policy. Must run before torch is
    imported (OpenMP reads it when it starts)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def thread_setting(threads: int, environ: dict[str, str] | os._Environ[str] = os.environ
                   ) -> str:
    """The setting as the console header and the JSON ``environment`` show it."""
    policy = environ.get("OMP_WAIT_POLICY", "default").lower()
    return f"{threads} ({policy} wait)"
