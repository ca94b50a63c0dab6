"""Scale-out (design §8, issue #14): every registered metric gives the report of one process
under ``torchrun`` with 2 processes and as 2 shards + ``robaudit merge``; a process that fails
ends the run on rank 0 with a clear message and exit code 3, never a hang."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, ROOT, TOY_HEADER, cli

from robaudit.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from robaudit.pluginmanager import load_plugins

Main = Callable[..., tuple[int, str, str]]
EVERY = FIXTURES / "every_metric.yaml"
TOL = 1e-6


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}


def torchrun(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m robaudit ARGS -p toy_plugin``."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "robaudit", *map(str, args), "-p", "toy_plugin"],
        capture_output=True, text=True, env=env(), cwd=ROOT, timeout=timeout)


def close(a: Any, b: Any, where: str) -> None:
    """a equals b, floats within a relative TOL (NaN equal to NaN), recursively."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), where
        else:
            assert abs(a - b) <= TOL * max(abs(a), abs(b), 1e-300), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def same_checks(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert [c["id"] for c in one["checks"]] == [c["id"] for c in other["checks"]]
    for a, b in zip(one["checks"], other["checks"], strict=True):
        for key in ("outcome", "value", "ci", "samples", "details", "message", "severity"):
            close(a.get(key), b.get(key), f"{a['id']}.{key}")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The small every-metric spec run in one process, under torchrun (2 processes), and as
    2 shards merged; each JSON report, and what the commands printed."""
    out = tmp_path_factory.mktemp("scale")
    runs = {
        "one": cli("run", EVERY, "--threads", "1", "--json", out / "one.json"),
        "torchrun": torchrun("run", EVERY, "--threads", "1", "--json", out / "torchrun.json"),
        "shard0": cli("run", EVERY, "--threads", "1", "--shard", "0/2", "--json",
                      out / "shard0.json"),
        "shard1": cli("run", EVERY, "--threads", "1", "--shard", "1/2", "--json",
                      out / "shard1.json"),
    }
    runs["merge"] = cli("merge", out / "shard1.json", out / "shard0.json", "--json",
                        out / "merged.json", "--junitxml", out / "merged.xml")
    for name, proc in runs.items():
        assert proc.returncode == EXIT_OK, f"{name}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    loaded = {name: json.loads((out / f"{name}.json").read_text())
              for name in ("one", "torchrun", "shard0", "shard1", "merged")}
    return {"json": loaded, "runs": runs, "dir": out}


def test_every_registered_metric_has_a_check_in_the_spec() -> None:
    """So that a metric added later cannot skip the equality tests below."""
    spec = yaml.safe_load(EVERY.read_text())
    in_spec = {check["metric"] for check in spec["checks"]}
    registered = set(load_plugins([], []).metrics)
    missing = sorted(registered - in_spec)
    assert not missing, f"add a small check of {missing} to {EVERY}"


def test_torchrun_two_processes_give_the_one_process_report(reports: dict[str, Any]) -> None:
    one, two = reports["json"]["one"], reports["json"]["torchrun"]
    assert len(one["checks"]) == len(load_plugins([], []).metrics)
    same_checks(one, two)
    assert one["environment"]["world_size"] == 1
    assert two["environment"]["world_size"] == 2
    assert one["summary"] == two["summary"]


def test_shards_merged_give_the_one_process_report(reports: dict[str, Any]) -> None:
    one, merged = reports["json"]["one"], reports["json"]["merged"]
    same_checks(one, merged)
    assert merged["environment"]["merged_shards"] == 2
    assert "shard" not in merged and one["summary"] == merged["summary"]
    assert merged["data"] == one["data"] and merged["model"] == one["model"]
    xml = (reports["dir"] / "merged.xml").read_text()
    assert xml.count("<testcase") == len(one["checks"]) and "<failure" not in xml


def test_a_shard_reports_its_share_and_judges_nothing(reports: dict[str, Any]) -> None:
    shard = reports["json"]["shard0"]
    assert shard["environment"]["shard"] == "0/2"
    assert {c["outcome"] for c in shard["checks"]} == {"skipped"}
    assert "robaudit merge" in reports["runs"]["shard0"].stdout
    shares = shard["shard"]["shares"]
    accuracy = next(c["id"] for c in shard["checks"] if c["metric"] == "clean_accuracy")
    # 40 samples in units of 16: units 0 and 2 are shard 0's, unit 1 is shard 1's
    assert [index for index, _ in shares[accuracy]["units"]] == [0, 2]
    other = reports["json"]["shard1"]["shard"]["shares"][accuracy]
    assert [index for index, _ in other["units"]] == [1]


def test_torchrun_prints_once(reports: dict[str, Any]) -> None:
    out = reports["runs"]["torchrun"].stdout
    assert out.count("robaudit session starts") == 1


def write_toy(tmp_path: Path, checks: str, name: str = "toy.yaml") -> Path:
    spec = tmp_path / name
    spec.write_text(TOY_HEADER + "  batch_size: 8\n" + "checks:\n" + checks)
    (tmp_path / "toy_model.py").write_text((FIXTURES / "toy_model.py").read_text())
    return spec


TOY_CHECKS = """\
  - metric: clean_accuracy
    expect: {min: 0.0}
  - metric: constant
    expect: {min: 0}
"""


def test_merge_refuses_shards_that_do_not_belong_together(tmp_path: Path,
                                                          robaudit_main: Main) -> None:
    spec = write_toy(tmp_path, TOY_CHECKS)
    for index, seed in ((0, "0"), (1, "0"), (1, "5")):
        code, _, err = robaudit_main("run", spec, "--shard", f"{index}/2", "--seed", seed,
                                     "--json", tmp_path / f"s{index}-{seed}.json")
        assert code == EXIT_OK, err
    s0, s1, other = (tmp_path / n for n in ("s0-0.json", "s1-0.json", "s1-5.json"))

    code, _, err = robaudit_main("merge", s0, other)
    assert code == EXIT_USAGE
    assert "different runs" in err and "`seed` differs" in err and "Traceback" not in err
    code, _, err = robaudit_main("merge", s0)
    assert code == EXIT_USAGE and "missing [1]" in err
    code, _, err = robaudit_main("merge", s0, s0, s1)
    assert code == EXIT_USAGE and "repeated [0]" in err

    report = json.loads(s1.read_text())
    report["shard"]["robaudit"] = "0.0.1"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report))
    code, _, err = robaudit_main("merge", s0, old)
    assert code == EXIT_USAGE and "`robaudit` differs" in err
    report = json.loads(s0.read_text())
    report["shard"]["shares"][report["checks"][0]["id"]]["units"] = [[0, {"arrays": 1}]]
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(json.dumps(report))
    code, _, err = robaudit_main("merge", corrupt, s1)
    assert code == EXIT_USAGE and "cannot be read" in err

    plain = tmp_path / "plain.json"
    assert robaudit_main("run", spec, "--json", plain)[0] == EXIT_OK
    code, _, err = robaudit_main("merge", plain)
    assert code == EXIT_USAGE and "not a shard report" in err

    assert robaudit_main("merge", s0, s1)[0] == EXIT_OK
    spec.write_text(spec.read_text().replace("min: 0.0", "min: 0.1"))
    code, _, err = robaudit_main("merge", s0, s1)
    assert code == EXIT_USAGE and "changed since the shards ran" in err


def test_a_shard_needs_a_json_report_and_a_valid_share(tmp_path: Path,
                                                       robaudit_main: Main) -> None:
    spec = write_toy(tmp_path, TOY_CHECKS)
    code, _, err = robaudit_main("run", spec, "--shard", "0/2")
    assert code == EXIT_USAGE and "--json" in err
    for bad in ("2/2", "x", "1/0", "-1/2"):
        code, _, err = robaudit_main("run", spec, "--shard", bad, "--json", tmp_path / "r.json")
        assert code == EXIT_USAGE and "--shard" in err, bad


def test_merge_judges_and_gates_like_a_run(tmp_path: Path, robaudit_main: Main) -> None:
    """The gate is at the merge: a failing check fails the merge (exit 1), as one run does,
    with 3 shards as with 2."""
    spec = write_toy(tmp_path, TOY_CHECKS.replace("min: 0.0", "min: 0.9")
                     + "  - metric: boom\n    expect: {min: 0}\n")
    codes = [robaudit_main("run", spec, "--shard", f"{index}/3", "--json",
                           tmp_path / f"{index}.json")[0] for index in range(3)]
    assert sorted(codes) == [0, 0, 1]  # the shard whose share raised (boom's) says so
    merged = robaudit_main("merge", *(tmp_path / f"{i}.json" for i in range(3)), "--json",
                           tmp_path / "m.json")[0]
    one = robaudit_main("run", spec, "--json", tmp_path / "one.json")[0]
    assert merged == one == 1
    outcomes = [c["outcome"] for c in json.loads((tmp_path / "m.json").read_text())["checks"]]
    assert outcomes == ["failed", "passed", "error"]  # accuracy < 0.9, constant, boom
    same_checks(json.loads((tmp_path / "one.json").read_text()),
                json.loads((tmp_path / "m.json").read_text()))


FAULT = """\
  - metric: constant
    expect: {min: 0}
  - metric: rank_fault
    params: {how: HOW}
    expect: {min: 0}
"""


def test_a_rank_that_raises_ends_the_torchrun_run_with_a_clear_error(tmp_path: Path) -> None:
    spec = write_toy(tmp_path, FAULT.replace("HOW", "raise"))
    start = time.monotonic()
    proc = torchrun("run", spec, "--json", tmp_path / "r.json", timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    assert "ERROR rank 1 failed: RankFault: rank 1 broke down" in proc.stderr
    assert "exitcode  : 3" in proc.stderr  # torchrun's summary: rank 0 exited with 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True
    assert report["stopped"] == "rank 1 failed: RankFault: rank 1 broke down"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("how, says", [
    ("raise", "rank 1 failed: RankFault: rank 1 broke down"),
    ("exit", "rank 1 stopped without a word"),
])
def test_rank_zero_exits_3_when_another_process_fails(tmp_path: Path, how: str,
                                                      says: str) -> None:
    """Launched by hand (any torch.distributed launcher): rank 0's own exit code is 3, its
    message is clean (no traceback), whether rank 1 raised or vanished (killed)."""
    spec = write_toy(tmp_path, FAULT.replace("HOW", how))
    port = str(free_port())
    procs = []
    start = time.monotonic()
    for rank in (0, 1):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "robaudit", "run", str(spec), "-p", "toy_plugin"],
            env={**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out, err = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=60)
    assert time.monotonic() - start < 60
    assert procs[0].returncode == EXIT_INTERNAL, err
    assert says in err and "Traceback" not in err
    assert procs[1].returncode != 0
    assert "run stopped" in out


def test_metric_help_says_how_a_metric_shards(robaudit_main: Main) -> None:
    assert "scale-out: per sample" in robaudit_main("metrics", "clean_accuracy")[1]
    assert "scale-out: runs whole" in robaudit_main("metrics", "lipschitz_bound")[1]


def test_a_shards_heartbeat_names_the_shard_and_the_check(tmp_path: Path,
                                                          robaudit_main: Main) -> None:
    spec = write_toy(tmp_path, TOY_CHECKS)
    code, out, _ = robaudit_main("run", spec, "--shard", "1/2", "--json", tmp_path / "r.json",
                                 "--heartbeat", "0.000001")
    assert code == EXIT_OK
    assert "... shard 1/2: clean_accuracy units 1/4 (25%)" in out  # units 1, 3, 5, 7 of 8
