"""Issue #13, each part from the command line in a subprocess, as a user or a CI job runs it:
--collect-only, metrics NAME, validation at once, the CI heartbeat, --md, --cache-dir, --html.
(init and the pytest plugin have their own files.)"""

from __future__ import annotations

import json
import re

from conftest import TOY_HEADER, cli

TICKING = """
checks:
  - {id: acc, metric: clean_accuracy, expect: {min: 0.0}}
  - {id: slow, metric: wait, params: {seconds: 2.5}}
  - {id: boom, metric: boom}
"""


def test_collect_only_and_metrics_name(write_spec):
    spec = write_spec(TOY_HEADER + TICKING)
    done = cli("run", spec, "--collect-only")
    assert done.returncode == 0 and "collected 3 checks" in done.stdout
    assert "floor: 64 forward" in done.stdout
    done = cli("metrics", "noise_accuracy")
    assert done.returncode == 0 and "sigma" in done.stdout and "Szegedy" in done.stdout
    done = cli("metrics", "noise_acuracy")
    assert done.returncode == 4 and "did you mean 'noise_accuracy'" in done.stderr


def test_validation_reports_every_problem_at_once(write_spec):
    spec = write_spec("audit: x\nseeed: 1\nmodel: {factory: 'toy_model.py:linear', weights: "
                      "no.pt}\ndata: {source: toy, n: 1}\nchecks:\n  - metric: constnt\n"
                      "  - {metric: constant, params: {valeu: 1}}\n")
    done = cli("validate", spec)
    assert done.returncode == 4 and "Traceback" not in done.stderr
    assert "(5 problems)" in done.stderr
    lines = [int(n) for n in re.findall(rf"{re.escape(str(spec))}:(\d+):", done.stderr)]
    assert lines == sorted(lines) and len(lines) == 5


def test_heartbeat_markdown_and_html_in_a_ci_log(write_spec, tmp_path):
    spec = write_spec(TOY_HEADER + TICKING)
    md, html = tmp_path / "summary.md", tmp_path / "r.html"
    done = cli("run", spec, "--heartbeat", "0.5", "--md", md, "--html", html)
    assert done.returncode == 1  # boom errors
    assert not done.stdout.count("\x1b")  # a log, not a terminal: no bar, no colours
    beats = [line for line in done.stdout.splitlines() if line.startswith("  ... slow:")]
    assert 2 <= len(beats) <= 6 and "elapsed" in beats[-1]  # every 0.5 s of 2.5 s
    table = md.read_text()
    assert "| boom |" in table and "| acc |" in table
    assert table.index("| boom |") < table.index("| acc |")  # failures first
    page = html.read_text()
    assert page.index('id="audit-0-2-boom"') < page.index('id="audit-0-0-acc"')


def test_cache_dir_reuses_work_and_keeps_values(write_spec, tmp_path):
    spec = write_spec(TOY_HEADER.replace("source: toy", "source: toy\n  n: 32")
                      + "checks:\n  - metric: deepfool_min_distortion\n")
    reports = []
    for name in ("first", "second"):
        report = tmp_path / f"{name}.json"
        assert cli("run", spec, "--cache-dir", tmp_path / "cache", "--json",
                   report).returncode == 0
        reports.append(json.loads(report.read_text())["checks"][0])
    assert reports[0]["value"] == reports[1]["value"]
    assert any((tmp_path / "cache").iterdir())
