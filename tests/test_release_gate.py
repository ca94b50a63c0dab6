"""Issue #12, from the command line (``robaudit.cli.main`` in this process, as
``robaudit_main``): warn severity and --strict, gating on the interval, baselines and
regressions, compare, and the identity of what was audited."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TOY_HEADER

SPEC = ROOT / "specs" / "resnet.yaml"
INDEX = {c["id"]: i for i, c in enumerate(yaml.safe_load(SPEC.read_text())["checks"])}


Run = Callable[..., tuple[int, dict, str]]


@pytest.fixture
def run_default(robaudit_main: Callable[..., tuple[int, str, str]], tmp_path: Path) -> Run:
    """``run_default(NAME, ARGS...)``: ``robaudit run specs/resnet.yaml --json NAME.json ARGS``
    → (exit code, the JSON report, what it printed)."""

    def run(name: str, *args: str) -> tuple[int, dict, str]:
        report = tmp_path / f"{name}.json"
        code, out, err = robaudit_main("run", SPEC, "--json", report, *args)
        assert "Traceback" not in err, err
        return code, json.loads(report.read_text()), out + err

    return run


def test_warn_severity_is_reported_and_leaves_the_exit_code(write_spec, tmp_path,
                                                           robaudit_main):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n"
                      "    expect: {min: 0.9, severity: warn}\n  - metric: constant\n"
                      "    id: fine\n")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    code, out, err = robaudit_main("run", spec, "--json", report, "--junitxml", junit)
    assert code == 0, out + err
    assert "WARNED" in out and "1 measured, 1 warned" in out
    data = json.loads(report.read_text())
    assert data["summary"]["warned"] == 1 and data["outcome"] == "warned"
    assert data["checks"][0]["outcome"] == "warned"
    assert data["checks"][0]["severity"] == "warn"
    xml = junit.read_text()
    assert "<failure" not in xml and 'name="warning" value="0.5 &lt; min 0.9"' in xml
    assert robaudit_main("run", spec, "--strict")[0] == 1


def test_a_threshold_inside_the_interval_passes_by_value_and_fails_by_ci(run_default):
    _, first, _ = run_default("first", "-k", "clean_accuracy")
    check = first["checks"][0]
    threshold = (check["ci"][0] + check["value"]) / 2
    key = f"checks.{INDEX['accuracy']}.expect"
    code, _, _ = run_default("by_value", "-k", "clean_accuracy",
                             "--set", f"{key}.min={threshold}")
    assert code == 0
    code, data, output = run_default("by_ci", "-k", "clean_accuracy",
                                     "--set", f"{key}.min={threshold}", "--set", f"{key}.by=ci")
    assert code == 1, output
    assert "low end" in data["checks"][0]["message"]


def test_by_ci_on_a_metric_without_an_interval_is_a_spec_error(robaudit_main):
    key = f"checks.{INDEX['lipschitz']}.expect.by"
    code, _, err = robaudit_main("validate", SPEC, "--set", f"{key}=ci")
    assert code == 4
    assert f"{SPEC}:" in err and "expect.by: `by: ci` needs an interval" in err


def test_baseline_self_delta_zero_a_worse_run_regresses_and_compare_agrees(
        tmp_path, run_default, robaudit_main):
    keyword = ["-k", "noise_accuracy or clean_accuracy"]
    regression = [f"--set=checks.{INDEX['noise']}.expect.regression=0.02"]
    code, old, _ = run_default("old", *keyword)
    assert code == 0 and len(old["checks"][0]["samples"]) == 450
    code, same, output = run_default("same", *keyword, *regression,
                                     "--baseline", str(tmp_path / "old.json"))
    assert code == 0, output
    noise = next(c for c in same["checks"] if c["id"] == "noise")
    assert noise["baseline"]["delta"] == 0 and noise["baseline"]["paired"] is True
    assert noise["baseline"]["ci"] == [0, 0] and noise["baseline"]["notes"] == []

    harsher = f"--set=checks.{INDEX['noise']}.params.sigma=0.5"
    code, worse, output = run_default("worse", *keyword, *regression, harsher,
                                      "--baseline", str(tmp_path / "old.json"))
    assert code == 1, output
    noise = next(c for c in worse["checks"] if c["id"] == "noise")
    assert noise["outcome"] == "failed" and "regressed" in noise["message"]
    assert noise["baseline"]["delta"] < -0.02 and noise["baseline"]["ci"][1] < 0
    assert noise["baseline"]["notes"] == ["the baseline ran with other params"]

    assert robaudit_main("compare", tmp_path / "old.json", tmp_path / "same.json",
                         "--tolerance", "0")[0] == 0
    code, out, _ = robaudit_main("compare", tmp_path / "old.json", tmp_path / "worse.json",
                                 "--markdown")
    assert code == 1, out  # the check's own `regression: 0.02`
    assert "| noise | noise_accuracy |" in out and "regressed" in out


def test_regression_without_a_baseline_is_measured_and_a_missing_check_an_error(
        write_spec, tmp_path, robaudit_main):
    spec = write_spec(TOY_HEADER + "checks:\n  - {id: c, metric: constant, "
                                   "expect: {regression: 0.1}}\n")
    code, out, _ = robaudit_main("run", spec)
    assert code == 0 and "MEASURED" in out
    assert "no --baseline given" in out
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"robaudit": "0.1.0", "checks": []}))
    code, out, _ = robaudit_main("run", spec, "--baseline", empty)
    assert code == 1 and f"{empty} has no check 'c'" in out
    code, _, err = robaudit_main("run", spec, "--baseline", tmp_path / "absent.json")
    assert code == 4 and "--baseline" in err


def test_the_report_names_what_was_audited(run_default):
    _, data, _ = run_default("identity", "-k", "clean_accuracy")
    weights = ROOT / "specs" / "models" / "digits_resnet.pt"
    if sys.platform.startswith("linux"):
        expected = subprocess.run(["sha256sum", str(weights)], capture_output=True,
                                  text=True, check=True).stdout.split()[0]
    else:
        expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert data["model"]["weights_sha256"] == expected
    assert data["model"]["factory"] == "robaudit.zoo:digits_resnet"
    assert data["model"]["parameters"] == 19706
    assert data["data"]["sizes"] == {"train": 1347, "test": 450}
    assert len(data["data"]["fingerprint"]) == 64


@pytest.mark.parametrize("limit", ["100", "101"])
def test_the_fingerprint_follows_the_audited_data(run_default, limit):
    _, a, _ = run_default("a", "-k", "clean_accuracy", "--set", "data.limit=100")
    _, b, _ = run_default("b", "-k", "clean_accuracy", "--set", f"data.limit={limit}")
    assert (a["data"]["fingerprint"] == b["data"]["fingerprint"]) == (limit == "100")
