"""Issue #7: a run never ends with checks silently missing, and its reports survive signals,
failing reporters and failed writes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, TOY_HEADER

from robaudit.guard import CheckTimeout, deadline, shielded
from robaudit.pluginmanager import load_plugins
from robaudit.reportpath import write_atomic


def checks(*lines: str) -> str:
    return TOY_HEADER + "checks:\n" + "".join(f"  - {line}\n" for line in lines)


def test_sys_exit_in_a_metric_is_an_error_and_the_others_run(write_spec, robaudit_main,
                                                             tmp_path):
    spec = write_spec(checks("{id: before, metric: constant}", "{id: quits, metric: exit_metric}",
                             "{id: after, metric: constant}"))
    report = tmp_path / "r.json"
    code, out, err = robaudit_main("run", spec, "--json", report)
    assert code == 1, out + err
    outcomes = {c["id"]: (c["outcome"], c["message"])
                for c in json.loads(report.read_text())["checks"]}
    assert outcomes == {"before": ("measured", "0.5 (no threshold)"),
                        "quits": ("error", "the metric called sys.exit(0)"),
                        "after": ("measured", "0.5 (no threshold)")}


def test_check_data_that_raises_blocks_that_check_only(write_spec, robaudit_main):
    spec = write_spec(checks("{id: ok, metric: constant}", "{id: bad, metric: bad_check_data}"))
    code, out, err = robaudit_main("run", spec)
    assert code == 1, out + err
    assert "ok " in out and "MEASURED" in out
    assert "bad_check_data.check_data raised RuntimeError: check_data exploded" in out


def test_a_factory_that_calls_sys_exit_is_a_usage_error(write_spec, robaudit_main):
    spec = write_spec(checks("{metric: constant}").replace("toy_model.py:linear",
                                                           "toy_model.py:exits"))
    code, _out, err = robaudit_main("run", spec)
    assert code == 4 and "Traceback" not in err
    assert "model: loading the model called sys.exit(0)" in err


def test_a_plugin_cannot_silently_replace_a_builtin_metric():
    plugins = load_plugins(extra=["clash_plugin"])
    assert type(plugins.metrics["clean_accuracy"]).__module__.startswith("robaudit.plugins.")
    [problem] = [p for p in plugins.problems if "clean_accuracy" in p]
    assert "plugin 'clash_plugin' registers metric 'clean_accuracy', which plugin 'accuracy' " \
           "already registered; 'clash_plugin''s is ignored" in problem


def test_the_clash_warning_is_visible(write_spec, robaudit_main):
    spec = write_spec(checks("{metric: clean_accuracy}"))
    _code, out, err = robaudit_main("run", spec, "-p", "clash_plugin")
    assert "WARNING" in err and "'clash_plugin''s is ignored" in err
    assert "1.0 " not in out.split("clean_accuracy", 1)[1].split("\n", 1)[0]


def test_a_check_past_its_timeout_is_an_error_and_the_run_goes_on(write_spec, robaudit_main,
                                                                  tmp_path):
    spec = write_spec(checks("{id: hangs, metric: wait, params: {seconds: 60}, timeout: 0.5}",
                             "{id: after, metric: constant}"))
    report = tmp_path / "r.json"
    started = time.monotonic()
    code, _out, _err = robaudit_main("run", spec, "--json", report)
    assert time.monotonic() - started < 30
    assert code == 1
    result = {c["id"]: c for c in json.loads(report.read_text())["checks"]}
    assert result["hangs"]["outcome"] == "error"
    assert result["hangs"]["message"] == "timed out after 0.5 s"
    assert result["after"]["outcome"] == "measured"


def test_command_line_timeout_applies_to_every_check(write_spec, robaudit_main):
    spec = write_spec(checks("{id: hangs, metric: wait, params: {seconds: 60}}"))
    code, out, _ = robaudit_main("run", spec, "--timeout", "0.3")
    assert code == 1 and "timed out after 0.3 s" in out
    assert robaudit_main("run", spec, "--timeout", "-1")[0] == 4


def test_deadline_is_not_swallowed_by_except_exception():
    # contextlib.suppress(Exception) is what a careless metric does
    with pytest.raises(CheckTimeout), deadline(0.2), contextlib.suppress(Exception):
        time.sleep(5)


def _spawn(spec: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(FIXTURES)}
    return subprocess.Popen(
        [sys.executable, "-m", "robaudit", "run", str(spec), "-p", "toy_plugin", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def test_sigterm_is_handled_like_ctrl_c(write_spec, tmp_path):
    marker = tmp_path / "started"
    spec = write_spec(checks("{id: quick, metric: constant}",
                             f"{{id: slow, metric: wait, params: {{seconds: 60, marker: "
                             f"'{marker}'}}}}"))
    report = tmp_path / "r.json"
    proc = _spawn(spec, "--json", str(report), "--junitxml", str(tmp_path / "r.xml"))
    limit = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < limit:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err
    data = json.loads(report.read_text())
    assert data["interrupted"] is True
    assert [c["id"] for c in data["checks"]] == ["quick"]
    assert (tmp_path / "r.xml").read_text().count("<testcase") == 1


def test_ctrl_c_during_start_up_exits_2_without_a_traceback(write_spec):
    spec = write_spec(checks("{metric: constant}"))
    proc = _spawn(spec)
    time.sleep(0.3)  # inside the imports: torch alone takes longer
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err


def test_interrupts_wait_until_the_reports_are_written(tmp_path):
    target = tmp_path / "r.txt"
    with pytest.raises(KeyboardInterrupt), shielded():
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while writing
        time.sleep(0.05)
        write_atomic(target, "complete report")
    assert target.read_text() == "complete report"


def test_a_failed_write_leaves_the_old_report_and_no_litter(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("valid old report")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "half a report \ud800 never written")
    assert target.read_text() == "valid old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_one_reporter_that_cannot_write_does_not_stop_the_others(write_spec, robaudit_main,
                                                                 tmp_path):
    spec = write_spec(checks("{metric: constant, expect: {min: 0.1}}"))
    code, out, err = robaudit_main("run", spec, "--json", "/dev/full", "--junitxml",
                                   tmp_path / "r.xml", "--html", tmp_path / "r.html")
    assert code == 3, out + err
    assert "report incomplete: --json /dev/full: cannot write the report" in err
    assert "No space left on device" in err
    assert (tmp_path / "r.xml").read_text().count("<testcase") == 1
    assert "constant" in (tmp_path / "r.html").read_text()
    assert Path("/dev/full").exists() and not Path("/dev/full").is_file()


def test_a_reporter_that_raises_does_not_kill_the_run(write_spec, robaudit_main, tmp_path):
    spec = write_spec(checks("{id: one, metric: constant}", "{id: two, metric: constant}"))
    report = tmp_path / "r.json"
    code, out, err = robaudit_main("run", spec, "-p", "broken_reporter", "--json", report)
    assert code == 3, out + err
    assert [c["id"] for c in json.loads(report.read_text())["checks"]] == ["one", "two"]
    assert err.count("plugin 'broken_reporter' failed in robaudit_check_finished") == 2


def test_a_report_gets_the_mode_a_plain_write_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        write_atomic(fresh, "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("old")
        kept.chmod(0o640)
        write_atomic(kept, "new")
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_text() == "new"
    finally:
        os.umask(old)
