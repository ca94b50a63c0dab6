"""The pytest plugin runs as ``robaudit run`` does (issue #24): one run setup for both entry
points (threads, OpenMP's wait policy, SIGTERM), each check's compute in its call phase (what
``--durations`` shows), and ``--robaudit-baseline`` / ``--robaudit-cache-dir`` as ``run``'s
``--baseline`` / ``--cache-dir``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_pytest_plugin import audit_dir, outcomes, run, spec_text, warm  # noqa: F401 (fixtures)

pytest_plugins = ["pytester"]

PROBE = '''
"""A metric that writes what it runs under (torch's threads, OpenMP's wait policy, whether
SIGTERM is handled) to the file named by $PROBE_OUT."""
import json
import os
import signal

import torch

from robaudit import Metric, MetricResult, hookimpl


class Probe(Metric):
    """Records its environment; value 1."""

    name = "probe"
    higher_is_better = True
    source = "tests"

    def compute(self, ctx, params):
        seen = {"threads": torch.get_num_threads(), "wait": os.environ.get("OMP_WAIT_POLICY"),
                "sigterm_handled": signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL}
        with open(os.environ["PROBE_OUT"], "w") as stream:
            json.dump(seen, stream)
        return MetricResult(value=1.0)


@hookimpl
def robaudit_register_metrics(register):
    register(Probe())
'''

MODEL = '''
from torch import nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''

PROBE_SPEC = """\
audit: probe
model:
  factory: model.py:make
data:
  source: digits
  limit: 16
checks:
  - {id: probe, metric: probe}
"""


def test_a_check_runs_under_the_same_setup_under_pytest_as_under_run(tmp_path: Path):
    """Fresh processes, as a CI job starts them: the threads, the wait policy and the SIGTERM
    handling a check sees are the same whichever entry point ran it (before the shared setup,
    pytest left torch's default threads, OpenMP's default policy and SIGTERM unhandled)."""
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    (tmp_path / "conftest.py").write_text("from probe import robaudit_register_metrics  "
                                          "# noqa: F401\n")
    (tmp_path / "spec.yaml").write_text(PROBE_SPEC)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
                        "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    seen = {}
    for name, command in (("run", ["-m", "robaudit", "run", "spec.yaml", "-p", "probe"]),
                          ("pytest", ["-m", "pytest", "spec.yaml", "-p", "no:cacheprovider"])):
        out = tmp_path / f"{name}.json"
        done = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**env, "PROBE_OUT": str(out)})
        assert done.returncode == 0, done.stdout + done.stderr
        seen[name] = json.loads(out.read_text())
    assert seen["pytest"] == seen["run"]
    # a 640-multiply-add model runs on one thread (robaudit.threads.default_threads)
    assert seen["run"] == {"threads": 1, "wait": "PASSIVE", "sigterm_handled": True}


def test_the_compute_is_in_the_call_phase_of_durations(audit_dir):  # noqa: F811
    checks = ("checks:\n  - {id: slow, metric: wait, params: {seconds: 0.5}}\n"
              "  - {id: quick, metric: constant}\n")
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text(checks))
    result = run(audit_dir, "--durations=0", "--durations-min=0", "-vv")
    assert outcomes(result) == {"measured": 2}  # no thresholds: values recorded
    times = {(m["when"], m["item"]): float(m["seconds"]) for m in re.finditer(
        r"^(?P<seconds>[\d.]+)s (?P<when>setup|call|teardown)\s+\S+::(?P<item>\w+)$",
        result.stdout.str(), re.MULTILINE)}
    assert times[("call", "slow")] >= 0.5
    assert times.get(("setup", "slow"), 0.0) < 0.5  # setup prepares the spec, nothing more


def test_a_check_that_cannot_compute_is_an_error_in_its_call(audit_dir):  # noqa: F811
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text(
        "checks:\n  - {id: kaboom, metric: boom}\n"))
    result = run(audit_dir, "-rE")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ERROR at call of robaudit check kaboom*",
                                 "boom could not compute: RuntimeError: kaboom in the metric"])


def test_a_baseline_regression_fails_under_pytest_as_under_run(audit_dir):  # noqa: F811
    from robaudit.cli import main

    folder = audit_dir.path
    (folder / "before.yaml").write_text(spec_text(
        "checks:\n  - {id: score, metric: constant, params: {value: 0.7}}\n"))
    assert main(["run", str(folder / "before.yaml"), "-q", "-p", "toy_plugin",
                 "--json", str(folder / "base.json")]) == 0
    (folder / "gate.yaml").write_text(spec_text(
        "checks:\n  - {id: score, metric: constant, params: {value: 0.2}, "
        "expect: {regression: 0.1}}\n"))
    assert main(["run", str(folder / "gate.yaml"), "-q", "-p", "toy_plugin",
                 "--baseline", str(folder / "base.json"), "--json",
                 str(folder / "after.json")]) == 1
    [check] = json.loads((folder / "after.json").read_text())["checks"]
    assert check["outcome"] == "failed" and "regressed" in check["message"]

    result = run(audit_dir, "gate.yaml", "--robaudit-baseline", "base.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*constant: {check['message']}*"])
    # without a baseline the value is
    # recorded, not judged: outcome measured, which pytest counts as `measured` (not as a pass)
    # and which does not fail the session, as `run` exits 0
    assert outcomes(run(audit_dir, "before.yaml", "--robaudit-baseline", "base.json")) \
        == {"measured": 1}  # no threshold: its value is recorded, as by `run`
    unjudged = run(audit_dir, "gate.yaml", "-v")
    assert unjudged.ret == pytest.ExitCode.OK
    assert outcomes(unjudged) == {"measured": 1}
    unjudged.stdout.fnmatch_lines(["*score MEASURED*"])
    assert main(["run", str(folder / "gate.yaml"), "-q", "-p", "toy_plugin", "--json",
                 str(folder / "unjudged.json")]) == 0
    [check] = json.loads((folder / "unjudged.json").read_text())["checks"]
    assert check["outcome"] == "measured" and "no --baseline given" in check["message"]


def test_a_cache_dir_gets_the_shared_work(audit_dir):  # noqa: F811
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).state_dict(),
               audit_dir.path / "linear.pt")
    (audit_dir.path / "robaudit_gate.yaml").write_text(
        "audit: cached\nmodel:\n  factory: toy_model.py:linear\n  weights: linear.pt\n"
        "data:\n  source: toy\n  n: 16\nchecks:\n  - metric: deepfool_min_distortion\n")
    (audit_dir.path / "toy_model.py").write_text(
        (Path(__file__).parent / "fixtures" / "toy_model.py").read_text())
    cache = audit_dir.path / "cache"
    assert outcomes(run(audit_dir, "--robaudit-cache-dir", str(cache))) == {"measured": 1}
    assert [p for p in cache.rglob("*") if p.is_file()]


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--robaudit-cache-dir", "a_file", "--robaudit-cache-dir a_file: names a file"),
    ("--robaudit-baseline", "nowhere.json", "--robaudit-baseline"),
    ("--robaudit-threads", "0", "--robaudit-threads 0: expected a positive number"),
    ("--robaudit-cache-memory", "lots", "--robaudit-cache-memory lots: expected a size"),
])
def test_bad_run_options_are_usage_errors(audit_dir, option, value, expected):  # noqa: F811
    (audit_dir.path / "a_file").write_text("")
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text())  # found by its name
    result = run(audit_dir, option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str()
