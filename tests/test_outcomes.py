"""Issue #20 "Outcomes that say what happened" and #24 "Logs a person can read": the `measured`
outcome, strict numbers in specs, messages that say what decided, the regression bootstrap, and
the console's pytest habits (-x, --strict, -r, deselected, intervals, names never cut)."""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import TOY_HEADER, cli

from robaudit.baseline import Delta
from robaudit.gate import NO_BASELINE, VerdictError, decided_by, verdict
from robaudit.plugins.reporters import html, markdown
from robaudit.plugins.reporters.console import ConsoleReporter
from robaudit.results import AuditResult, CheckResult


def checks(*lines: str) -> str:
    return TOY_HEADER + "checks:\n" + "".join(f"  - {line}\n" for line in lines)


def result(check_id: str, outcome: str, value: float | None = 0.5, **fields: object
           ) -> CheckResult:
    entry: dict[str, object] = {"id": check_id, "metric": "constant", "outcome": outcome,
                                "value": value, "ci": None, "expect": {}, "params": {},
                                "details": {}, "message": f"{check_id} message",
                                "duration_s": 0.1}
    entry.update(fields)
    return CheckResult(**entry)  # type: ignore[arg-type]


def audit(*found: CheckResult, **fields: object) -> AuditResult:
    return AuditResult(audit="toy", spec="toy.yaml", seed=0, device="cpu",
                       environment={"python": "3"}, checks=list(found), duration_s=1.0,
                       **fields)  # type: ignore[arg-type]


# -- the verdict ---------------------------------------------------------------------------

def test_a_check_without_thresholds_is_measured_never_passed():
    assert verdict(3.0, None, {}, None) == ("measured", "3 (no threshold)")
    # severity and by alone judge nothing either
    assert verdict(3.0, (2.0, 4.0), {"severity": "warn", "by": "ci"}, None)[0] == "measured"


def test_regression_without_a_baseline_records_and_says_so():
    outcome, message = verdict(0.5, None, {"regression": 0.1}, None, baseline_given=False)
    assert outcome == "measured" and message == f"0.5; {NO_BASELINE}"
    assert "no --baseline given" in message
    # beside a threshold, the threshold still judges
    assert verdict(0.5, None, {"min": 0.6, "regression": 0.1}, None,
                   baseline_given=False)[0] == "failed"
    outcome, message = verdict(0.5, None, {"min": 0.4, "regression": 0.1}, None,
                               baseline_given=False)
    assert outcome == "passed" and message == f"0.5 >= 0.4; {NO_BASELINE}"
    # given a baseline, a check it cannot be compared with is not judged silently
    with pytest.raises(VerdictError):
        verdict(0.5, None, {"regression": 0.1}, None, baseline_given=True)


def test_a_by_ci_failure_says_the_interval_decided():
    # the value 0.6 is above min 0.5; the interval's low end 0.45 is not
    outcome, message = verdict(0.6, (0.45, 0.75), {"min": 0.5, "by": "ci"}, None)
    assert outcome == "failed"
    assert message.startswith("the interval decided (by: ci): 95% CI [0.45, 0.75] low end "
                              "0.45 < min 0.5")
    assert message.endswith("the value 0.6 alone passes")
    outcome, message = verdict(0.9, (0.45, 0.95), {"max": 0.8, "by": "ci"}, None)
    assert outcome == "failed" and "high end 0.95 > max 0.8" in message
    assert message.endswith("alone fails too")


def test_a_regression_failure_names_the_baseline_and_the_tolerance():
    delta = Delta(delta=-0.2, ci=(-0.25, -0.15), paired=True, worse=0.2, worse_ci=(0.15, 0.25))
    outcome, message = verdict(0.3, None, {"regression": 0.1}, delta)
    assert outcome == "failed"
    assert "worse than the baseline by 0.2 (paired mean) > tolerance 0.1" in message
    assert "baseline 0.5" in message and "95% CI [-0.25, -0.15]" in message
    # judged against a baseline, a check with only a regression passes or fails
    small = Delta(delta=-0.05, ci=None, paired=False, worse=0.05, worse_ci=None)
    assert verdict(0.45, None, {"regression": 0.1}, small)[0] == "passed"


def test_decided_by_names_what_decides():
    assert decided_by({"min": 0.95}) == "≥ 0.95"
    assert decided_by({"min": 0.95, "max": 1.0, "by": "ci"}) == "whole 95% CI ≥ 0.95 and ≤ 1"
    assert decided_by({"regression": 0.02}, {"value": 0.81}) == \
        "regression ≤ 0.02 vs baseline 0.81"
    assert decided_by({"regression": 0.02}) == "regression ≤ 0.02 vs no baseline"
    assert decided_by({"max": 0.3, "severity": "warn"}) == "≤ 0.3; warn only"
    assert decided_by({}) == ""


# -- measured through the run and every report ------------------------------------------------

def test_measured_is_counted_shown_and_leaves_the_exit_code(write_spec, robaudit_main,
                                                            tmp_path):
    spec = write_spec(checks("{id: recorded, metric: constant}",
                             "{id: gated, metric: constant, expect: {min: 0.1}}"))
    out_json, out_xml = tmp_path / "r.json", tmp_path / "r.xml"
    out_md, out_html = tmp_path / "r.md", tmp_path / "r.html"
    code, out, err = robaudit_main("run", spec, "--json", out_json, "--junitxml", out_xml,
                                   "--md", out_md, "--html", out_html)
    assert code == 0, out + err
    assert re.search(r"recorded \.+ MEASURED 0\.5 \(no threshold\)", out)
    assert "1 passed, 1 measured in" in out.strip().splitlines()[-1]
    data = json.loads(out_json.read_text())
    assert data["summary"]["measured"] == 1 and data["summary"]["passed"] == 1
    assert data["checks"][0]["outcome"] == "measured" and data["outcome"] == "passed"
    case = ET.parse(out_xml).getroot().find(".//testcase[@name='recorded']")
    assert case is not None  # a passing testcase: no failure, error nor skipped
    assert not [child for child in case if child.tag in ("failure", "error", "skipped")]
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["measured"] == "0.5 (no threshold)"
    text = out_md.read_text()
    assert "| recorded | 📏 measured | 0.5 | — |" in text
    assert "**1 passed, 1 measured in" in text
    page = out_html.read_text()
    assert '<span class="badge measured">measured</span>' in page
    assert '<td class="why">no threshold</td>' in page


def test_a_spec_whose_thresholds_are_all_commented_out_is_not_passed(write_spec, robaudit_main):
    """What `robaudit init` writes without --measure: every check measured, exit 0."""
    spec = write_spec(checks("metric: constant\n    # expect: {min: ...}",
                             "metric: clean_accuracy\n    # expect: {min: ...}"))
    code, out, _ = robaudit_main("run", spec)
    assert code == 0
    assert "2 measured in" in out.strip().splitlines()[-1] and "passed" not in out


def test_a_regression_without_baseline_bootstraps_then_gates(write_spec, robaudit_main,
                                                             tmp_path):
    spec = write_spec(checks("{id: c, metric: constant, expect: {regression: 0.1}}"))
    first = tmp_path / "first.json"
    code, out, _ = robaudit_main("run", spec, "--json", first)
    assert code == 0, out
    check = json.loads(first.read_text())["checks"][0]
    assert check["outcome"] == "measured" and "no --baseline given" in check["message"]
    assert check["value"] == 0.5
    code, out, _ = robaudit_main("run", spec, "--baseline", first)
    assert code == 0 and "PASSED" in out and "baseline 0.5, Δ +0, within tolerance 0.1" in out
    code, out, _ = robaudit_main("run", spec, "--baseline", first,
                                 "--set", "checks.0.params.value=0.3")
    assert code == 1
    assert "regressed: worse than the baseline by 0.2 (value) > tolerance 0.1" in out


# -- numbers in quotes ---------------------------------------------------------------------

@pytest.mark.parametrize(("line", "key"), [
    ('{metric: constant, expect: {min: "0.9"}}', "checks.0.expect.min"),
    ("{metric: constant, expect: {max: '1e3'}}", "checks.0.expect.max"),
    ('{metric: constant, expect: {regression: "0.1"}}', "checks.0.expect.regression"),
    ('{metric: constant, params: {value: "0.5"}}', "checks.0.params.value"),
    ('{metric: constant, timeout: "5"}', "checks.0.timeout"),
])
def test_a_number_written_as_a_string_is_a_located_spec_error(write_spec, robaudit_main, line,
                                                              key):
    spec = write_spec(checks(line))
    code, out, err = robaudit_main("run", spec)
    assert code == 4 and not out and "Traceback" not in err
    assert f"{spec}:7: {key}: expected a number, not the string" in err
    assert "write it without quotes" in err


def test_quoted_numbers_are_refused_in_every_section(write_spec, robaudit_main):
    spec = write_spec(TOY_HEADER.replace("source: toy", 'source: toy\n  limit: "10"')
                      + 'seed: "3"\nchecks:\n  - {metric: constant}\n')
    code, _, err = robaudit_main("validate", spec)
    assert code == 4
    assert "data.limit: expected a number, not the string '10'" in err
    assert "seed: expected a number, not the string '3'" in err
    # a word where a number is meant is pydantic's own error, not "without quotes"
    words = write_spec(checks("{metric: constant, params: {value: many}}"), "words.yaml")
    code, _, err = robaudit_main("validate", words)
    assert code == 4 and "checks.0.params.value: Input should be a valid number" in err


# -- the console ---------------------------------------------------------------------------

def test_long_names_are_never_cut_in_a_log(write_spec, tmp_path):
    """Through a pipe (a CI log): the check line and compare's table keep the full id."""
    long_id = "adversarial_likelihood_under_pgd_of_the_second_block_for_release"
    spec = write_spec(checks(f"{{id: {long_id}, metric: constant, expect: {{min: 0}}}}"))
    report = tmp_path / "r.json"
    done = cli("run", spec, "--json", report, "-r", "A")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{long_id} .. PASSED" in done.stdout and f"PASSED {long_id} -" in done.stdout
    done = cli("compare", report, report)
    assert done.returncode == 0 and long_id in done.stdout and "…" not in done.stdout


def test_maxfail_says_pytests_words_and_what_did_not_run(write_spec, robaudit_main):
    spec = write_spec(checks(*(f"{{id: c{i}, metric: constant, expect: {{min: 0.9}}}}"
                               for i in range(4))))
    code, out, _ = robaudit_main("run", spec, "-x")
    assert code == 1
    assert re.search(r"!+ stopping after 1 failures; 3 of 4 selected checks did not run !+",
                     out)
    code, out, _ = robaudit_main("run", spec, "--maxfail", "2")
    assert "stopping after 2 failures; 2 of 4 selected checks did not run" in out
    code, out, _ = robaudit_main("run", spec, "--maxfail", "5")
    assert "stopping after" not in out and "4 failed" in out


def test_strict_says_which_warned_checks_failed_the_run(write_spec, robaudit_main):
    spec = write_spec(checks("{id: soft, metric: constant, expect: {min: 0.9, severity: warn}}",
                             "{id: fine, metric: constant, expect: {min: 0.1}}"))
    code, out, _ = robaudit_main("run", spec)
    assert code == 0 and "--strict" not in out
    code, out, _ = robaudit_main("run", spec, "--strict")
    assert code == 1
    assert "WARNED soft - 0.5 < min 0.9 (--strict: counts as failed)" in out
    assert "--strict: 1 warned check made the run fail: soft" in out


def test_deselected_checks_are_counted_in_the_closing_line(write_spec, robaudit_main):
    spec = write_spec(checks("{id: one, metric: constant, expect: {min: 0}}",
                             "{id: two, metric: constant}", "{id: three, metric: constant}"))
    code, out, _ = robaudit_main("run", spec, "-k", "one")
    assert code == 0
    assert "collected 1 check / 2 deselected" in out  # singular
    assert "1 passed, 2 deselected in" in out.strip().splitlines()[-1]


@pytest.mark.parametrize(("chars", "listed"), [
    ("fEw", ["FAILED low", "ERROR boom", "WARNED soft"]),  # the default
    ("m", ["MEASURED free"]),
    ("p", ["PASSED high"]),
    ("fm", ["FAILED low", "MEASURED free"]),
    ("a", ["FAILED low", "ERROR boom", "WARNED soft", "MEASURED free"]),
    ("A", ["FAILED low", "ERROR boom", "WARNED soft", "MEASURED free", "PASSED high"]),
    ("N", []),
])
def test_report_chars_pick_the_short_summary_as_pytest(write_spec, robaudit_main, chars,
                                                       listed):
    spec = write_spec(checks("{id: high, metric: constant, expect: {min: 0}}",
                             "{id: free, metric: constant}",
                             "{id: soft, metric: constant, expect: {min: 0.9, severity: warn}}",
                             "{id: boom, metric: boom}",
                             "{id: low, metric: constant, expect: {min: 0.9}}"))
    code, out, _ = robaudit_main("run", spec, "-r", chars)
    assert code == 1
    summary = out.split("short summary info")[1] if listed else ""
    found = [" ".join(line.split()[:2]) for line in summary.splitlines()[1:]
             if line.split() and line.split()[0].isupper() and not line.startswith("=")]
    assert found == listed
    assert ("short summary info" in out) == bool(listed)


def test_unknown_report_chars_are_a_usage_error(write_spec, robaudit_main):
    spec = write_spec(checks("{metric: constant}"))
    code, _, err = robaudit_main("run", spec, "-r", "fz")
    assert code == 4 and "-r" in err and "expected characters of" in err


def test_an_interval_is_printed_once_and_negative_ends_readably(capsys):
    reporter = ConsoleReporter(argparse.Namespace(verbose=0, quiet=0, heartbeat=0))
    reporter.robaudit_check_finished(result(
        "curvature", "passed", -0.07899, ci=(-0.1016, -0.0564), expect={"min": -0.5},
        message="-0.07899 >= -0.5"))
    by_ci = "the interval decided (by: ci): 95% CI [0.45, 0.75] low end 0.45 < min 0.5"
    reporter.robaudit_check_finished(result("acc", "failed", 0.6, ci=(0.45, 0.75),
                                            expect={"min": 0.5, "by": "ci"}, message=by_ci))
    out = capsys.readouterr().out
    first, second = out.splitlines()
    assert "-0.07899 >= -0.5 (95% CI [-0.1016, -0.0564])" in first and "–" not in first
    assert second.count("95% CI") == 1 and by_ci in second


# -- HTML and Markdown say why ----------------------------------------------------------------

def test_html_has_a_why_column_and_card_and_a_failed_badge_beside_errors(tmp_path):
    by_ci = result("acc", "failed", 0.6, ci=(0.45, 0.75), expect={"min": 0.5, "by": "ci"},
                   message="the interval decided (by: ci): 95% CI [0.45, 0.75] low end 0.45")
    regressed = result("reg", "failed", 0.3, expect={"regression": 0.1},
                       baseline={"value": 0.5, "delta": -0.2, "ci": None, "paired": False,
                                 "notes": []},
                       message="0.3; regressed: worse than the baseline by 0.2 (value)")
    boom = result("boom", "error", None, message="kaboom")
    page = html.render_html([audit(by_ci, regressed, boom)])
    for why in ("whole 95% CI ≥ 0.5", "regression ≤ 0.1 vs baseline 0.5"):
        assert f'<td class="why">{why}</td>' in page
        assert f'<span class="label">why</span> {why}</p>' in page
    assert "the interval decided (by: ci)" in page
    # the page's badge: failed, with the error counted beside it (as pytest's closing line)
    topbar = page.split('<header class="topbar">')[1].split("</header>")[0]
    assert '<span class="badge failed">failed</span>' in topbar
    assert '<span class="badge-note error">1 error</span>' in topbar
    only_errors = html.render_html([audit(boom)])
    topbar = only_errors.split('<header class="topbar">')[1].split("</header>")[0]
    assert '<span class="badge error">error</span>' in topbar and "badge-note" not in topbar


def test_html_plots_at_their_own_size_and_histograms_say_what_they_show():
    css = (html.Path(html.__file__).parents[2] / "templates" / "report.css").read_text()
    rule = re.search(r"\.plots img \{([^}]*)\}", css)
    assert rule is not None and "width: 400px" not in rule.group(1)  # a gallery is not shrunk
    spread = result("dist", "passed", 0.5, metric="deepfool_min_distortion",
                    samples=tuple(i / 50 for i in range(50)), expect={"min": 0.1})
    [plot] = html.plots(spread)
    assert plot.title == "dist: the 50 values whose mean is the value"


def test_markdown_says_what_decided():
    by_ci = result("acc", "failed", 0.6, ci=(-0.45, 0.75), expect={"min": 0.5, "by": "ci"})
    regressed = result("reg", "failed", 0.3, expect={"regression": 0.1},
                       baseline={"value": 0.5, "delta": -0.2})
    text = markdown.render_markdown([audit(by_ci, regressed, deselected=2)])
    assert "| acc | ❌ failed | 0.6 | whole 95% CI ≥ 0.5 | [-0.45, 0.75] |" in text
    assert "| reg | ❌ failed | 0.3 | regression ≤ 0.1 vs baseline 0.5 | — |" in text
    assert "**2 failed, 2 deselected in 1.00s**" in text


def test_the_readme_sample_is_what_the_console_prints(capsys):
    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()

    def took(check_id: str) -> float:  # the sample's own durations: they vary by machine
        return float(re.search(rf"\n{check_id} \.+ .*\[([0-9.]+)s\]\n", readme).group(1))

    reporter = ConsoleReporter(argparse.Namespace(verbose=0, quiet=0, heartbeat=0))
    reporter.robaudit_check_finished(result(
        "curvature", "passed", -0.08462, ci=(-0.10510, -0.064140), expect={"min": -0.5},
        message="-0.08462 >= -0.5", duration_s=took("curvature")))
    reporter.robaudit_check_finished(result(
        "lipschitz", "passed", 2.934e4, expect={"max": 5e4}, message="2.934e+04 <= 5e+04",
        duration_s=took("lipschitz")))
    for line in capsys.readouterr().out.splitlines():
        assert f"\n{line}\n" in readme


def test_a_gallery_has_room_for_its_captions_at_a_readable_size():
    """A panel per sample at least 90 px wide: an 8-pt caption (`y=3, pred 3`, about 70 px)
    fits under it, and the page shows the image at that size (no CSS width forced)."""
    import base64
    import io

    import numpy as np
    import torch
    from matplotlib.image import imread

    from robaudit.ops.perclass import gallery
    from robaudit.plotting import render_png

    clean = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8)
    grid = gallery("fgsm", clean, (clean + 0.1).clamp(0, 1), labels, labels, labels.flip(0))
    pixels = imread(io.BytesIO(base64.b64decode(render_png(grid))))
    assert pixels.shape[1] >= 8 * 90 and np.isfinite(pixels).all()
