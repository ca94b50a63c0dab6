"""Issue #19, the multi-process side doors (design §4, §8): when a process of a group dies,
rank 0 says which (exit 3) and keeps every check that finished on any process, within the
heartbeat's bound even while it is blocked in one long call; a cancelled group run is
``terminated`` (exit 2), not blamed on a process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT
from test_scale_out import env, free_port, torchrun, write_toy

from robaudit.distributed import SILENCE_S
from robaudit.errors import EXIT_INTERNAL

#: two quick whole checks, then two that block rank 0 for two minutes and kill rank 1: the
#: processes take the tasks in this order, so both quick checks finish before anything dies
DYING = """\
  - {id: quick_a, metric: constant}
  - {id: quick_b, metric: constant}
  - {id: dies_1, metric: rank_dies}
  - {id: dies_2, metric: rank_dies}
"""
DEAD = "rank 1 stopped without a word"


def finished_and_stopped(report: Path) -> tuple[list[str], str, str]:
    data = json.loads(report.read_text())
    return [c["id"] for c in data["checks"]], data["outcome"], data.get("stopped", "")


def test_torchrun_stopping_the_group_for_a_dead_rank_blames_it(tmp_path: Path) -> None:
    """torchrun SIGTERMs rank 0 a tenth of a second after rank 1 died: rank 0 does not say
    "terminated" but which rank failed (exit 3), with the checks finished on either rank."""
    spec = write_toy(tmp_path, DYING)
    start = time.monotonic()
    proc = torchrun("run", spec, "--json", tmp_path / "r.json", timeout=180)
    assert time.monotonic() - start < 90  # never the two minutes of rank 0's check
    assert f"ERROR {DEAD}" in proc.stderr, proc.stderr[-3000:]
    assert "exitcode  : 3" in proc.stderr  # torchrun's summary: rank 0 exited with 3
    checks, outcome, stopped = finished_and_stopped(tmp_path / "r.json")
    assert checks == ["quick_a", "quick_b"]
    assert outcome == "interrupted" and stopped.startswith(DEAD)


def test_a_dead_rank_stops_rank_zero_blocked_in_one_long_call(tmp_path: Path) -> None:
    """Launched by hand (no launcher to signal it): rank 0's heartbeat watch notices the
    silence after SILENCE_S and ends the run although rank 0 sleeps in one call for 120 s."""
    spec = write_toy(tmp_path, DYING)
    port = str(free_port())
    procs = []
    start = time.monotonic()
    for rank in (0, 1):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "robaudit", "run", str(spec), "-p", "toy_plugin", "--json",
             str(tmp_path / f"r{rank}.json")],
            env={**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out, err = procs[0].communicate(timeout=150)
    procs[1].communicate(timeout=60)
    assert time.monotonic() - start < SILENCE_S + 50, "waited for the long call to return"
    assert procs[0].returncode == EXIT_INTERNAL, err
    assert DEAD in err and "Traceback" not in err
    assert f"!!! {DEAD}" in out  # the console's closing words
    checks, outcome, stopped = finished_and_stopped(tmp_path / "r0.json")
    assert checks == ["quick_a", "quick_b"] and outcome == "interrupted"
    assert stopped.startswith(DEAD)


def test_a_cancelled_torchrun_is_terminated_not_a_failure(tmp_path: Path) -> None:
    """SIGTERM to torchrun (a cancelled CI job) reaches every process: rank 0 says
    "terminated", with the checks that finished; no process is blamed."""
    marker = tmp_path / "started"
    spec = write_toy(tmp_path, f"""\
  - {{id: quick, metric: constant}}
  - {{id: slow_1, metric: wait, params: {{seconds: 120, marker: '{marker}'}}}}
  - {{id: slow_2, metric: wait, params: {{seconds: 120, marker: '{marker}'}}}}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "robaudit", "run", str(spec), "--json", str(tmp_path / "r.json"), "-p",
         "toy_plugin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        cwd=ROOT)
    limit = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < limit:
        time.sleep(0.1)
    time.sleep(0.5)  # both processes inside a slow check
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=90)
    assert "!!! terminated (SIGTERM): the run stopped !!!" in out, out[-2000:] + err[-3000:]
    assert proc.returncode != 0 and "ERROR rank" not in err
    checks, outcome, stopped = finished_and_stopped(tmp_path / "r.json")
    assert checks == ["quick"] and outcome == "interrupted"
    assert stopped == "terminated (SIGTERM)"
