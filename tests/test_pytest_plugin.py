"""The pytest plugin (issue 13, part 7): robaudit checks as pytest items, run by pytester in
fresh pytest sessions on the toy plugin's metrics and data."""

from __future__ import annotations

import importlib.metadata
import textwrap
import xml.etree.ElementTree as ET

import pytest
from conftest import FIXTURES

pytest_plugins = ["pytester"]

COUNTING_FACTORY = '''
"""A toy model whose factory counts its calls in calls.txt beside it."""
from pathlib import Path

import torch
from torch import nn


def make() -> nn.Module:
    with open(Path(__file__).with_name("calls.txt"), "a") as stream:
        stream.write("built\\n")
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def broken() -> nn.Module:
    raise ValueError("this factory always fails")
'''

CHECKS = """\
checks:
  - {id: good, metric: constant, params: {value: 0.7}, expect: {min: 0.5}, tags: [fast]}
  - {id: bad, metric: constant, params: {value: 0.2}, expect: {min: 0.5}}
  - {id: kaboom, metric: boom}
  - {id: acc, metric: clean_accuracy, expect: {min: 0.0}, tags: [fast]}
"""


def spec_text(checks: str = CHECKS, factory: str = "make", name: str = "toy audit") -> str:
    return f"audit: {name}\nmodel:\n  factory: counting.py:{factory}\ndata:\n  source: toy\n" \
        + checks


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run the toy audit once in this process: pytester's in-process runs drop the modules
    they import, and numpy's extension modules cannot be imported twice in one process."""
    from robaudit.cli import main

    folder = tmp_path_factory.mktemp("warm")
    (folder / "counting.py").write_text(textwrap.dedent(COUNTING_FACTORY))
    (folder / "spec.yaml").write_text(spec_text())
    assert main(["run", str(folder / "spec.yaml"), "-q", "-p", "toy_plugin"]) == 1


@pytest.fixture
def audit_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, warm: None
              ) -> pytest.Pytester:
    """A pytester folder with the counting model; plugins only as named (no autoload), so the
    plugin is tested as ``-p robaudit.pytest_plugin`` whatever is installed."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.syspath_prepend(str(FIXTURES))
    (pytester.path / "counting.py").write_text(textwrap.dedent(COUNTING_FACTORY))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # the plugin module is imported already (by this session), so pytest cannot rewrite it
    return pytester.runpytest("-p", "robaudit.pytest_plugin", "-p", "toy_plugin",
                              "-p", "no:cacheprovider",
                              "-W", "ignore::pytest.PytestAssertRewriteWarning", *args)


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    """The summary line's counts without warnings; a check without a threshold is counted as
    ``measured`` (its value is recorded, not judged), which ``assert_outcomes`` cannot ask."""
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("warning", "warnings")}


def builds(pytester: pytest.Pytester) -> int:
    calls = pytester.path / "calls.txt"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_the_entry_point_is_declared():
    points = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in points if p.name == "robaudit"] == ["robaudit.pytest_plugin"]


def test_every_check_is_an_item_with_its_outcome(audit_dir):
    spec = audit_dir.path / "release.yaml"
    spec.write_text(spec_text())
    result = run(audit_dir, "--robaudit", str(spec), "-rA")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "ERROR release.yaml::kaboom - boom could not compute: RuntimeError: kaboom*",
        "FAILED release.yaml::bad - constant: 0.2 < min 0.5",
    ])
    assert "Traceback" not in result.stdout.str()
    assert builds(audit_dir) == 1  # the spec was prepared once for its four checks


def test_robaudit_files_are_collected_by_name_once(audit_dir):
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text())
    (audit_dir.path / "other.yaml").write_text(spec_text())  # not collected by name
    result = run(audit_dir, "--robaudit", "robaudit_gate.yaml", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["robaudit_gate.yaml::good", "robaudit_gate.yaml::bad",
                                 "robaudit_gate.yaml::kaboom", "robaudit_gate.yaml::acc",
                                 "4 tests collected*"])
    assert "other.yaml" not in result.stdout.str()
    assert builds(audit_dir) == 0  # collecting builds no model


def test_a_yaml_file_named_as_an_argument_is_a_spec(audit_dir):
    (audit_dir.path / "gate.yaml").write_text(spec_text())
    (audit_dir.path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    # named: only that audit runs (one check by its node id); with --robaudit: added to tests
    run(audit_dir, "gate.yaml::good").assert_outcomes(passed=1)
    run(audit_dir, "--robaudit", "gate.yaml", "-k", "good or plain").assert_outcomes(
        passed=2, deselected=3)
    run(audit_dir, "-k", "good or plain").assert_outcomes(passed=1)  # not named: not a spec


def test_selection_and_stopping_come_from_pytest(audit_dir):
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text())
    run(audit_dir, "-k", "good or acc").assert_outcomes(passed=2, deselected=2)
    run(audit_dir, "-m", "fast").assert_outcomes(passed=2, deselected=2)
    run(audit_dir, "-k", "constant").assert_outcomes(passed=1, failed=1, deselected=2)
    run(audit_dir, "-x").assert_outcomes(passed=1, failed=1)  # kaboom and acc never ran
    assert builds(audit_dir) == 4  # once per session that ran a check


def test_a_session_with_no_selected_check_builds_no_model(audit_dir):
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text())
    result = run(audit_dir, "-k", "nothing")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert builds(audit_dir) == 0


def test_junitxml_has_a_testcase_per_check_with_properties(audit_dir):
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text())
    run(audit_dir, "--junitxml", "out.xml")
    suite = ET.parse(audit_dir.path / "out.xml").getroot().find("testsuite")
    assert suite is not None
    # the check that could not compute ran in the call phase: pytest's JUnit writes a call
    # that raised as <failure>; its message and robaudit_outcome say it is robaudit's error
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "0")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["good", "bad", "kaboom", "acc"]
    props = {p.get("name"): p.get("value") for p in cases["bad"].iter("property")}
    assert props == {"metric": "constant", "value": "0.2", "threshold": ">= 0.5",
                     "robaudit_outcome": "failed"}
    assert cases["bad"].find("failure").get("message") == "constant: 0.2 < min 0.5"
    kaboom = cases["kaboom"].find("failure").get("message")
    assert kaboom.startswith("boom could not compute:") and "kaboom in the metric" in kaboom
    assert ("robaudit_outcome", "error") in {(p.get("name"), p.get("value"))
                                             for p in cases["kaboom"].iter("property")}


def test_two_specs_are_each_prepared_once(audit_dir):
    checks = "checks:\n  - {id: one, metric: constant}\n  - {id: two, metric: constant}\n"
    (audit_dir.path / "robaudit_a.yaml").write_text(spec_text(checks, name="a"))
    (audit_dir.path / "robaudit_b.yaml").write_text(spec_text(checks, name="b"))
    assert outcomes(run(audit_dir)) == {"measured": 4}
    assert builds(audit_dir) == 2


def test_an_invalid_spec_is_a_located_collection_error(audit_dir):
    (audit_dir.path / "robaudit_bad.yaml").write_text(spec_text(
        "checks:\n  - {metric: constant, params: {valeu: 1}}\n  - {metric: no_such_metric}\n"))
    result = run(audit_dir)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "invalid spec" in out and "valeu" in out and "no_such_metric" in out
    assert "Traceback" not in out


def test_a_model_that_cannot_be_built_errors_every_check_of_its_spec(audit_dir):
    checks = "checks:\n  - {id: one, metric: constant}\n  - {id: two, metric: constant}\n"
    (audit_dir.path / "robaudit_broken.yaml").write_text(spec_text(checks, factory="broken"))
    (audit_dir.path / "robaudit_fine.yaml").write_text(spec_text(checks))
    result = run(audit_dir)
    assert outcomes(result) == {"measured": 2, "errors": 2}
    assert result.stdout.str().count("this factory always fails") >= 2


def test_a_conftest_can_register_metrics(audit_dir):
    audit_dir.makeconftest("""
        from robaudit import Metric, MetricResult, hookimpl

        class Half(Metric):
            \"\"\"One half.\"\"\"
            name = "half"
            higher_is_better = True
            source = "conftest"

            def compute(self, ctx, params):
                return MetricResult(value=0.5)

        @hookimpl
        def robaudit_register_metrics(register):
            register(Half())
    """)
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text(
        "checks:\n  - {metric: half, expect: {max: 0.4}}\n"))
    result = run(audit_dir)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*half: 0.5 > max 0.4*"])


def test_a_missing_spec_is_a_usage_error(audit_dir):
    result = run(audit_dir, "--robaudit", "nowhere.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no such spec file: nowhere.yaml" in result.stderr.str()


def test_overrides_reach_the_spec(audit_dir):
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text())
    result = run(audit_dir, "-k", "bad", "--robaudit-set", "checks.1.params.value=0.9")
    result.assert_outcomes(passed=1, deselected=3)
