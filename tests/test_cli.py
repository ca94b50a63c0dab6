"""The command line in a subprocess: exit codes (design.md §4), selection, overrides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import FIXTURES, ROOT, TOY_HEADER, cli


def test_all_passed_exits_0(write_spec):
    spec = write_spec(TOY_HEADER + """
checks:
  - metric: constant
    params: {value: 0.7}
    expect: {min: 0.5}
""")
    done = cli("run", spec)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout
    assert "1 passed" in done.stdout.splitlines()[-1]


def test_failed_check_exits_1_and_summarises(write_spec):
    spec = write_spec(TOY_HEADER + """
checks:
  - {id: good, metric: constant, params: {value: 0.7}, expect: {min: 0.5}}
  - {id: bad, metric: constant, params: {value: 0.2}, expect: {min: 0.5}}
""")
    done = cli("run", spec)
    assert done.returncode == 1
    assert "FAILED bad - 0.2 < min 0.5" in done.stdout
    assert "1 failed, 1 passed" in done.stdout.splitlines()[-1]


def test_metric_that_raises_is_an_error_and_others_still_run(write_spec):
    spec = write_spec(TOY_HEADER + """
checks:
  - metric: boom
  - metric: nan_metric
  - metric: constant
    expect: {min: 0.1}
""")
    done = cli("run", spec)
    assert done.returncode == 1
    assert "kaboom in the metric" in done.stdout
    assert "non-finite" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "1 passed, 2 errors" in done.stdout.splitlines()[-1]
    verbose = cli("run", spec, "-v")
    assert "Traceback" in verbose.stdout


def test_no_selected_check_exits_5(write_spec):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n")
    done = cli("run", spec, "-k", "nothing_matches")
    assert done.returncode == 5
    assert "no checks ran" in done.stdout


def test_bad_command_line_exits_4_without_traceback(write_spec):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n")
    done = cli("run", spec, "--no-such-option")
    assert done.returncode == 4
    assert "Traceback" not in done.stderr and "ERROR" in done.stderr


def test_bad_selection_or_override_is_a_usage_error(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n")
    for args in (("-k", "a and"), ("--set", "checks.5.expect.min=1"), ("--maxfail", "x")):
        code, _, err = robaudit_main("run", spec, *args)
        assert code == 4, args
        assert "ERROR" in err


def test_keyword_and_marker_selection(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER + """
checks:
  - {id: alpha, metric: constant, tags: [fast]}
  - {id: beta, metric: constant, tags: [slow]}
  - {id: gamma, metric: constant, tags: [fast, deformation]}
""")
    _, picked, _ = robaudit_main("run", spec, "-k", "alpha or gamma")
    assert "alpha" in picked and "gamma" in picked and "beta " not in picked
    _, marked, _ = robaudit_main("run", spec, "-m", "fast and not deformation")
    assert "alpha" in marked and "gamma " not in marked and "2 deselected" in marked


def test_exitfirst_and_maxfail_stop_the_run(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER + """
checks:
  - {id: one, metric: constant, params: {value: 0}, expect: {min: 1}}
  - {id: two, metric: constant, params: {value: 0}, expect: {min: 1}}
  - {id: three, metric: constant, params: {value: 0}, expect: {min: 1}}
""")
    code, first, _ = robaudit_main("run", spec, "-x")
    assert code == 1 and "1 failed" in first and "two" not in first
    _, two, _ = robaudit_main("run", spec, "--maxfail", "2")
    assert "2 failed" in two and "three" not in two


def test_set_overrides_a_threshold(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER + """
checks:
  - {metric: constant, params: {value: 0.7}, expect: {min: 0.5}}
""")
    assert robaudit_main("run", spec, "--set", "checks.0.expect.min=0.9")[0] == 1
    assert robaudit_main("run", spec, "--set", "checks.0.params.value=0.95",
                         "--set", "checks.0.expect.min=0.9")[0] == 0


def test_blocking_a_plugin_removes_its_metric(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: rank_order_spearman\n")
    code, _, err = robaudit_main("run", spec, "-p", "no:spearman")
    assert code == 4
    assert "unknown metric 'rank_order_spearman'" in err


def test_ctrl_c_exits_2_and_keeps_reports(write_spec, tmp_path):
    marker = tmp_path / "started"
    spec = write_spec(TOY_HEADER + f"""
checks:
  - {{id: quick, metric: constant, expect: {{min: 0.1}}}}
  - {{id: slow, metric: wait, params: {{seconds: 60, marker: "{marker}"}}}}
""")
    report = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(FIXTURES)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "robaudit", "run", str(spec), "-p", "toy_plugin",
         "--json", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "interrupted" in out
    data = json.loads(report.read_text())
    assert [c["id"] for c in data["checks"]] == ["quick"]


def test_validate_metrics_plugins_schema_commands(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n")
    assert robaudit_main("validate", spec)[0] == 0
    code, listing, _ = robaudit_main("metrics")
    assert code == 0 and "rank_order_spearman" in listing and "pairs" in listing
    _, plugins, _ = robaudit_main("plugins")
    assert "toy_plugin" in plugins and "spearman" in plugins
    schema = json.loads(robaudit_main("schema")[1])
    assert "checks" in schema["properties"]
    assert any(v["properties"]["metric"]["const"] == "rank_order_spearman"
               for v in schema["$defs"]["CheckSpec"]["anyOf"])


def test_missing_spec_file_exits_4(tmp_path: Path, robaudit_main):
    code, _, err = robaudit_main("run", tmp_path / "nope.yaml")
    assert code == 4 and "spec file not found" in err


def test_zoo_list_shows_every_model_and_its_factory(robaudit_main):
    code, out, _ = robaudit_main("zoo", "list")
    assert code == 0
    for name in ("digits_resnet", "ghorbani_cnn1", "ghorbani_cnn2", "ghorbani_cnn3"):
        assert name in out
    code, _, err = robaudit_main("zoo", "train", "no_such_model", "--out", "x.pt")
    assert code == 4 and "unknown" in err


def test_several_specs_run_in_one_session_and_fail_together(write_spec, robaudit_main, tmp_path):
    good = write_spec(TOY_HEADER + "checks:\n  - {id: g, metric: constant}\n", "good.yaml")
    bad = write_spec(TOY_HEADER + "checks:\n  - {id: b, metric: constant, expect: {min: 1}}\n",
                     "bad.yaml")
    code, out, _ = robaudit_main("run", good, bad, "--json", tmp_path / "r.json")
    assert code == 1
    assert "1 failed, 1 measured" in out.strip().splitlines()[-1]
    assert json.loads((tmp_path / "r.good.json").read_text())["outcome"] == "measured"
    assert json.loads((tmp_path / "r.bad.json").read_text())["outcome"] == "failed"
    invalid = write_spec("audit: x\n", "invalid.yaml")
    code, _, err = robaudit_main("run", good, invalid)
    assert code == 4 and "invalid.yaml" in err
    too_many = write_spec(TOY_HEADER + "checks:\n  - {metric: intertwinedness, params: {n: 500}}\n",
                          "too_many.yaml")
    report = tmp_path / "second.json"
    code, out, err = robaudit_main("run", good, too_many, "--json", report)
    assert code == 4 and "checks.0.params.n" in err
    assert "PASSED" not in out and not list(tmp_path.glob("second*.json"))


def test_an_unwritable_report_path_is_a_usage_error_before_any_check_runs(
        write_spec, robaudit_main, tmp_path):
    marker = tmp_path / "ran"
    spec = write_spec(TOY_HEADER + f"""
checks:
  - {{metric: wait, params: {{seconds: 0, marker: "{marker}"}}}}
""")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for option in ("--json", "--junitxml", "--html"):
        code, _, err = robaudit_main("run", spec, option, blocker / "sub" / "report")
        assert code == 4, option
        assert f"{option} {blocker / 'sub' / 'report'}" in err and "is a file" in err
    code, _, err = robaudit_main("run", spec, "--html", tmp_path)
    assert code == 4 and "is a folder" in err
    assert not marker.exists()


def test_threads_option_sets_torch_threads_and_rejects_zero(write_spec, robaudit_main):
    import torch

    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n")
    before = torch.get_num_threads()
    try:
        assert robaudit_main("run", spec, "--threads", "2")[0] == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    code, _, err = robaudit_main("run", spec, "--threads", "0")
    assert code == 4 and "--threads 0" in err


def test_metrics_name_shows_one_metric_in_full(robaudit_main):
    code, out, _ = robaudit_main("metrics", "pgd_accuracy")
    assert code == 0
    assert "Madry et al. (ICLR 2018), section 2" in out  # the docstring, not just its summary
    assert "linf | l2" in out and "'linf'" in out  # a Literal's choices and its default
    assert ">= 1, <= 10000" in out and "gradient" in out  # a bound, and the description
    code, _, err = robaudit_main("metrics", "pgd_acuracy")
    assert code == 4 and "did you mean 'pgd_accuracy'" in err


def test_collect_only_lists_checks_with_params_and_cost_and_runs_nothing(write_spec,
                                                                          robaudit_main,
                                                                          tmp_path):
    marker = tmp_path / "ran"
    spec = write_spec(TOY_HEADER + f"""
checks:
  - {{id: acc, metric: clean_accuracy}}
  - {{id: slow, metric: wait, params: {{seconds: 60, marker: "{marker}"}}}}
""")
    code, out, _ = robaudit_main("run", spec, "--collect-only")
    assert code == 0 and not marker.exists()
    assert 'acc (clean_accuracy) {"min_included": 0.8}' in out
    assert "floor: 64 forward + 0 gradient" in out
    assert '"seconds": 60.0' in out and "cost not stated" in out
    assert "collected 2 checks" in out
    code, out, _ = robaudit_main("run", spec, "--collect-only", "-k", "nothing")
    assert code == 5 and "collected 0 checks" in out
