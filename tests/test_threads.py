"""The thread policy's logic (issue #8): its timing is measured in bench/threads.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, TOY_HEADER

from robaudit.threads import (
    SMALL_MODEL_MACS,
    available_cpus,
    cgroup_cpus,
    default_threads,
    model_macs,
    prefer_passive_waiting,
    thread_setting,
)


@pytest.mark.parametrize("text, cores", [("max 100000\n", None), ("200000 100000\n", 2.0),
                                         ("150000 100000", 1.5), ("garbage", None)])
def test_cgroup_v2_quota(tmp_path, text, cores):
    (tmp_path / "cpu.max").write_text(text)
    missing = (tmp_path / "no1", tmp_path / "no2")
    assert cgroup_cpus(tmp_path / "cpu.max", missing) == cores


def test_cgroup_v1_quota(tmp_path):
    quota, period = tmp_path / "q", tmp_path / "p"
    quota.write_text("50000\n")
    period.write_text("100000\n")
    assert cgroup_cpus(tmp_path / "absent", (quota, period)) == 0.5
    quota.write_text("-1\n")
    assert cgroup_cpus(tmp_path / "absent", (quota, period)) is None


@pytest.mark.parametrize("affinity, quota, expected", [
    (2, None, 2), (16, 2.0, 2), (16, 1.5, 2), (4, 8.0, 4), (8, 0.5, 1), (1, None, 1)])
def test_available_cpus(affinity, quota, expected):
    assert available_cpus(affinity, quota) == expected


def test_passive_waiting_keeps_a_users_choice():
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    prefer_passive_waiting(environ)
    assert environ["OMP_WAIT_POLICY"] == "ACTIVE"
    empty: dict[str, str] = {}
    prefer_passive_waiting(empty)
    assert empty == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_setting(3, empty) == "3 (passive wait)"


def _environment(spec: Path, tmp_path: Path, *args: str, **env: str) -> dict[str, str]:
    report = tmp_path / "r.json"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                             "OMP_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-m", "robaudit", "run", str(spec), "-p", "toy_plugin", "--json",
         str(report), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**base, "PYTHONPATH": str(FIXTURES), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "threads " in done.stdout.splitlines()[1]
    return json.loads(report.read_text())["environment"]


def test_multiply_adds_are_counted_layer_by_layer():
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, groups=1),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 5 * 5, 10))
    expected = 25 * 8 * 3 * 9 + 25 * 8 * 2 * 9 + 200 * 10
    assert model_macs(net, torch.rand(7, 3, 5, 5)) == expected


def test_small_models_get_one_thread_large_ones_every_available_core():
    cores = available_cpus(len(os.sched_getaffinity(0)), cgroup_cpus())
    assert default_threads(SMALL_MODEL_MACS - 1) == 1
    assert default_threads(SMALL_MODEL_MACS) == cores == default_threads(None)


def test_the_run_shows_and_records_its_setting(write_spec, tmp_path):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n")
    assert _environment(spec, tmp_path)["threads"] == "1 (passive wait)"  # a tiny model
    assert _environment(spec, tmp_path, "--threads", "1",
                        OMP_WAIT_POLICY="ACTIVE")["threads"] == "1 (active wait)"


def test_the_benched_models_fall_on_either_side_of_the_threshold():
    """docs/bench/threads.md measures the digits ResNet (0.5 M multiply-adds a sample: one
    thread) and a ResNet-18 at 3×32×32 (37 M: every available core)."""
    import torch
    import torchvision

    from robaudit.zoo import digits_resnet

    digits = model_macs(digits_resnet().eval(), torch.rand(1, 1, 8, 8))
    resnet18 = model_macs(torchvision.models.resnet18().eval(), torch.rand(1, 3, 32, 32))
    assert 0.4e6 < digits < SMALL_MODEL_MACS < 30e6 < resnet18 < 45e6
