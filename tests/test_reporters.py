"""The file reporters (JSON, JUnit XML, HTML) on hand-built results (design.md §5)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_HEADER

import robaudit
from robaudit.errors import UsageError
from robaudit.figures import Histogram, ImagePlot, LinePlot
from robaudit.plugins.reporters import html, json_report, junitxml
from robaudit.results import AuditResult, CheckResult, jsonable

CHECK_KEYS = ["id", "metric", "outcome", "value", "ci", "expect", "params", "details",
              "message", "duration_s"]
#: design §5's keys in its order, with the extensions it allows before `checks`
AUDIT_KEYS = ["robaudit", "audit", "spec", "outcome", "summary", "duration_s", "seed", "device",
              "environment", "interrupted", "model", "data", "checks"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {"python": "3.11.7", "torch": "2.14.1", "device_name": "cpu"}

LAYERS = [{"layer": "conv1", "kind": "Conv2d", "bound": np.float32(2.5)},
          {"layer": "fc", "kind": "Linear", "bound": 1.25}]
PERTURBATION = np.linspace(-0.3, 0.2, 64).reshape(8, 8)


def passed_check() -> CheckResult:
    """Samples, numpy types, NaN/inf in details and a figure of every kind: 1 + 4 plots."""
    return CheckResult(
        id="spearman", metric="rank_order_spearman", outcome="passed",
        value=0.31, ci=(0.29, 0.33), expect={"min": 0.2},
        params={"pairs": 100, "trials": 200, "radii": (0.1, 0.2)},
        details={"std": np.float64(0.08), "count": np.int64(7), "bad": float("nan"),
                 "big": float("inf"), "per_trial": np.array([0.3, 0.32]),
                 "nested": {"a": {"b": np.float32(1.5)}, "flag": np.bool_(True)},
                 "layers": LAYERS},
        message="0.31 >= min 0.2", duration_s=1.25, tags=("deformation",),
        samples=(0.1, 0.3, 0.35, 0.5, float("nan")),
        figures=(
            Histogram("distances", (1.0, 2.0, 2.5), xlabel="d", markers={"median": 2.0}),
            LinePlot("accuracy vs eps", (0.001, 0.01, 0.1), {"fgsm": (0.9, 0.7, 0.1),
                                                            "pgd": (0.9, 0.6, 0.0)}, logx=True),
            ImagePlot("perturbation", PERTURBATION, caption="signed"),
            ImagePlot("rgb image", np.random.default_rng(0).uniform(0, 255, (3, 6, 6))),
        ),
        higher_is_better=True,
    )


def failed_check() -> CheckResult:
    return CheckResult(
        id="lipschitz", metric="lipschitz_bound", outcome="failed", value=2.0e4, ci=None,
        expect={"max": 1.0e4}, params={}, details={"layers": LAYERS},
        message="20000 > max 1e4 <script>alert('x')</script>", duration_s=0.5,
        figures=(ImagePlot("broken", np.zeros(5)),), higher_is_better=False,
    )


def error_check() -> CheckResult:
    return CheckResult(
        id="boom", metric="boom", outcome="error", value=None, ci=None, expect={}, params={},
        details={}, message="RuntimeError: kaboom & <b>bold</b>", duration_s=0.1,
        traceback="Traceback (most recent call last):\n  \x1b[31mRuntimeError\x1b[0m: kaboom\n",
    )


def skipped_check() -> CheckResult:
    return CheckResult(
        id="gone", metric="clean_accuracy", outcome="skipped", value=None, ci=None,
        expect={"min": 0.9}, params={"split": "test"}, details={}, message="no GPU",
        duration_s=0.0,
    )


def audit(spec: str = "specs/resnet.yaml", checks: list[CheckResult] | None = None,
          **kwargs: object) -> AuditResult:
    checks = [passed_check(), failed_check(), error_check(), skipped_check()] \
        if checks is None else checks
    return AuditResult(audit="digits-resnet release gate", spec=spec, seed=0, device="cpu",
                       environment=ENV, checks=checks, duration_s=2.0, **kwargs)


def options(tmp_path: Path, **paths: str) -> argparse.Namespace:
    values = {"json_path": None, "junitxml_path": None, "html_path": None}
    values.update({k: tmp_path / v for k, v in paths.items()})
    return argparse.Namespace(**values)


# -- options ---------------------------------------------------------------------------------


def test_each_reporter_adds_its_option_defaulting_to_none():
    parser = argparse.ArgumentParser()
    for module in (json_report, junitxml, html):
        module.robaudit_addoption(parser=parser)
    assert vars(parser.parse_args([])) == {"json_path": None, "junitxml_path": None,
                                           "html_path": None}
    parsed = parser.parse_args(["--json", "a.json", "--junitxml", "b.xml", "--html", "c.html"])
    assert (parsed.json_path, parsed.junitxml_path, parsed.html_path) == (
        Path("a.json"), Path("b.xml"), Path("c.html"))


def test_nothing_is_written_without_the_option(tmp_path):
    for module in (json_report, junitxml, html):
        module.robaudit_report(results=[audit()], options=options(tmp_path))
    assert list(tmp_path.iterdir()) == []


# -- JSON ------------------------------------------------------------------------------------


def test_json_has_exactly_the_contract_keys_in_order_and_strict_values(tmp_path):
    json_report.robaudit_report(results=[audit()], options=options(tmp_path, json_path="a/r.json"))
    text = (tmp_path / "a" / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert list(data) == AUDIT_KEYS
    assert data["robaudit"] == robaudit.__version__
    assert data["outcome"] == "error"
    assert data["summary"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1, "warned": 0,
                               "measured": 0}
    assert list(data["environment"].items()) == list(ENV.items())
    assert [c["id"] for c in data["checks"]] == ["spearman", "lipschitz", "boom", "gone"]
    for check in data["checks"]:  # design §5's keys in its order, then the extensions
        extensions = ["severity"] + (["samples"] if check["id"] == "spearman" else [])
        assert list(check) == CHECK_KEYS + extensions, check["id"]
        assert check["severity"] == "fail"
    assert text.startswith('{\n  "robaudit"')  # indent 2


def test_json_values_round_trip(tmp_path):
    json_report.robaudit_report(results=[audit()], options=options(tmp_path, json_path="r.json"))
    first, failed, error, _ = json.loads((tmp_path / "r.json").read_text())["checks"]
    assert first["value"] == 0.31 and first["ci"] == [0.29, 0.33]
    assert first["expect"] == {"min": 0.2}
    assert first["params"] == {"pairs": 100, "trials": 200, "radii": [0.1, 0.2]}
    details = first["details"]
    assert details["std"] == 0.08 and type(details["count"]) is int and details["count"] == 7
    assert details["bad"] is None and details["big"] is None
    assert details["per_trial"] == [0.3, 0.32]
    assert details["nested"] == {"a": {"b": 1.5}, "flag": True}
    assert details["layers"][0] == {"layer": "conv1", "kind": "Conv2d", "bound": 2.5}
    assert first["message"] == "0.31 >= min 0.2" and first["duration_s"] == 1.25
    assert failed["ci"] is None and failed["expect"] == {"max": 1.0e4}
    assert error["value"] is None and error["outcome"] == "error"


def test_jsonable_converts_numpy_and_non_finite_values():
    converted = jsonable(
        {1: (np.float32(0.5), np.array([[1, 2]]), -math.inf), "x": {np.int8(3)}})
    assert converted == {"1": [0.5, [[1, 2]], None], "x": [3]}
    assert type(converted["1"][1][0][0]) is int


def test_json_several_specs_write_one_file_per_spec_stem(tmp_path):
    results = [audit("specs/resnet.yaml", [passed_check()]),
               audit("other/mlp.yml", [failed_check()]),
               audit("more/resnet.yaml", [])]
    json_report.robaudit_report(results=results, options=options(tmp_path, json_path="r.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "r.mlp.json", "r.resnet-2.json", "r.resnet.json"]
    mlp = json.loads((tmp_path / "r.mlp.json").read_text())
    assert mlp["spec"] == "other/mlp.yml" and mlp["outcome"] == "failed"
    again = json.loads((tmp_path / "r.resnet-2.json").read_text())
    assert again["spec"] == "more/resnet.yaml" and again["checks"] == []
    assert again["outcome"] == "skipped"


def test_interrupted_run_still_writes_every_report(tmp_path):
    result = audit(checks=[passed_check()], interrupted=True)
    opts = options(tmp_path, json_path="r.json", junitxml_path="r.xml", html_path="r.html")
    for module in (json_report, junitxml, html):
        module.robaudit_report(results=[result], options=opts)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["interrupted"] is True
    assert [c["id"] for c in data["checks"]] == ["spearman"]
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.find("properties/property[@name='interrupted']").get("value") == "true"
    assert "interrupted" in (tmp_path / "r.html").read_text()


# -- JUnit XML -------------------------------------------------------------------------------


def _junit(tmp_path: Path, results: list[AuditResult]) -> ET.Element:
    junitxml.robaudit_report(results=results, options=options(tmp_path, junitxml_path="j/r.xml"))
    return ET.parse(tmp_path / "j" / "r.xml").getroot()


def test_junit_counts_elements_and_properties(tmp_path):
    root = _junit(tmp_path, [audit()])
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "digits-resnet release gate"
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")} == {
        "tests": "4", "failures": "1", "errors": "1", "skipped": "1", "time": "2.000"}
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["spearman", "lipschitz", "boom", "gone"]
    assert {c.get("classname") for c in cases.values()} == {"robaudit.resnet"}
    assert cases["spearman"].get("time") == "1.250"
    assert [child.tag for child in cases["spearman"]] == ["properties", "system-out"]

    def props(case: ET.Element) -> dict[str, str]:
        return {p.get("name"): p.get("value") for p in case.findall("properties/property")}

    spearman = props(cases["spearman"])
    assert spearman["metric"] == "rank_order_spearman"
    assert float(spearman["value"]) == 0.31 and float(spearman["expect_min"]) == 0.2
    assert (float(spearman["ci_low"]), float(spearman["ci_high"])) == (0.29, 0.33)
    assert "expect_max" not in spearman
    assert json.loads(spearman["params"]) == {"pairs": 100, "radii": [0.1, 0.2], "trials": 200}
    assert float(props(cases["lipschitz"])["expect_max"]) == 1.0e4
    assert "value" not in props(cases["boom"]) and "ci_low" not in props(cases["lipschitz"])

    failure = cases["lipschitz"].find("failure")
    assert failure.get("message") == failed_check().message
    error = cases["boom"].find("error")
    assert error.get("message") == "RuntimeError: kaboom & <b>bold</b>"
    assert error.text.startswith("Traceback") and "kaboom" in error.text
    assert cases["gone"].find("skipped").get("message") == "no GPU"
    assert cases["spearman"].find("failure") is None and cases["spearman"].find("error") is None


def test_junit_one_suite_per_spec_with_totals(tmp_path):
    root = _junit(tmp_path, [audit("a/resnet.yaml", [passed_check(), failed_check()]),
                             audit("b/mlp.yaml", [error_check()])])
    suites = root.findall("testsuite")
    assert [s.get("tests") for s in suites] == ["2", "1"]
    assert [s.find("testcase").get("classname") for s in suites] == [
        "robaudit.resnet", "robaudit.mlp"]
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "3", "failures": "1", "errors": "1", "skipped": "0"}


# -- HTML ------------------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _html(tmp_path: Path, results: list[AuditResult]) -> str:
    html.robaudit_report(results=results, options=options(tmp_path, html_path="h/r.html"))
    return (tmp_path / "h" / "r.html").read_text()


@pytest.fixture(scope="module")
def full_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report of the four-check audit (rendered once: plots take a moment)."""
    return _html(tmp_path_factory.mktemp("html"), [audit()])


def test_html_is_self_contained_and_has_a_plot_per_expected_figure(full_html):
    text = full_html
    assert not EXTERNAL.search(text)
    assert "<script" not in text and "<link" not in text
    for check_id in ("spearman", "lipschitz", "boom", "gone"):
        assert f">{check_id}</h2>" in text
    images = IMAGE.findall(text)
    # spearman: the samples histogram + 4 figures; lipschitz: its one figure cannot be drawn
    assert len(images) == 5 == text.count("<img")
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert "could not draw" in text and "broken" in text


def test_html_escapes_user_text(full_html):
    text = full_html
    assert "<script>alert" not in text and "&lt;script&gt;alert(" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text


def test_html_renders_details_params_and_traceback(full_html):
    text = full_html
    # the list of per-layer records becomes a table with its keys as columns
    assert re.search(r"<th>layer</th>\s*<th>kind</th>\s*<th>bound</th>", text)
    assert re.search(r"<td>conv1</td>\s*<td>Conv2d</td>\s*<td>2.5</td>", text)
    # nested dicts are flattened to dotted keys; params are listed
    assert re.search(r"<td>nested\.a\.b</td>\s*<td>1.5</td>", text)
    assert re.search(r"<th>pairs</th>\s*<td>100</td>", text)
    assert "<details class=\"traceback\">" in text and "kaboom" in text
    assert "95% CI [0.29, 0.33]" in text


def test_html_one_section_per_spec(tmp_path):
    first = audit("a/resnet.yaml", [passed_check()])
    second = AuditResult(audit="second <audit>", spec="b/mlp.yaml", seed=3, device="cuda:0",
                         environment={}, checks=[skipped_check()])
    text = _html(tmp_path, [first, second])
    assert text.count('<section class="audit"') == 2
    assert 'href="#audit-0"' in text and 'href="#audit-1"' in text
    assert "second &lt;audit&gt;" in text and "cuda:0" in text


def test_gauge_positions_follow_the_value_and_thresholds():
    check = passed_check()
    gauge = html.gauge(check)
    assert gauge is not None
    lo, hi = gauge.zone
    # pass zone starts at the min threshold and runs to the right end; value lies inside it
    assert 0 < lo < gauge.value < hi == 100
    assert gauge.ci is not None and gauge.ci[0] < gauge.value < gauge.ci[1]
    failed = html.gauge(failed_check())
    assert failed is not None and failed.zone[0] == 0 and failed.value > failed.zone[1]
    assert html.gauge(error_check()) is None and html.gauge(skipped_check()) is None


def test_numbers_are_shown_with_four_significant_digits():
    shown = [html.fmt(v) for v in (20000.0, 0.0012345, -3.14159, 2.5e7, 1e-5, np.float32(0.5),
                                   float("nan"), None, True, list(range(20)))]
    assert shown[:9] == ["20000", "0.001234", "-3.142", "2.5e+07", "1e-05", "0.5", "—", "—",
                         "true"]
    assert shown[9].startswith("[0, 1, 2,") and shown[9].endswith("… (20 values)]")


# -- through the command line ----------------------------------------------------------------


def test_run_writes_all_three_reports(write_spec, robaudit_main, tmp_path):
    spec = write_spec(TOY_HEADER + """
checks:
  - {id: good, metric: constant, params: {value: 0.7}, expect: {min: 0.5}}
  - {id: bad, metric: constant, params: {value: 0.2}, expect: {min: 0.5}}
  - metric: boom
""", name="toy.yaml")
    out = tmp_path / "out"
    code, _, _ = robaudit_main("run", spec, "-q", "--json", out / "r.json",
                               "--junitxml", out / "r.xml", "--html", out / "r.html")
    assert code == 1
    data = json.loads((out / "r.json").read_text())
    assert data["summary"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 0, "warned": 0,
                               "measured": 0}
    assert data["checks"][0]["params"] == {"value": 0.7}
    suite = ET.parse(out / "r.xml").getroot().find("testsuite")
    assert suite.get("name") == "toy audit" and suite.get("errors") == "1"
    assert "kaboom" in suite.find("testcase[@name='boom']/error").text
    text = (out / "r.html").read_text()
    assert ">good</h2>" in text and ">boom</h2>" in text and "Traceback" in text


def test_an_unwritable_report_path_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    for module, option in ((json_report, "json_path"), (junitxml, "junitxml_path"),
                           (html, "html_path")):
        with pytest.raises(UsageError, match="cannot write the report"):
            module.robaudit_report(results=[audit(checks=[])],
                                   options=options(tmp_path, **{option: "file/r.out"}))


# -- plotting --------------------------------------------------------------------------------


def _pixels(figure: object) -> np.ndarray:
    from matplotlib.image import imread

    from robaudit.plotting import render_png

    return imread(io.BytesIO(base64.b64decode(render_png(figure))), format="png")[..., :3]


def test_images_are_grey_when_unsigned_and_diverging_when_signed():
    ramp = np.arange(64.0).reshape(8, 8) * 4  # any range, scaled for display
    grey = _pixels(ImagePlot("unsigned", ramp))
    assert grey.shape[:2] == (260, 400)  # 4 × 2.6 in at 100 dpi
    assert np.allclose(grey[..., 0], grey[..., 1]) and np.allclose(grey[..., 1], grey[..., 2])
    signed = _pixels(ImagePlot("signed", np.where(np.arange(64).reshape(8, 8) < 32, -1e-3,
                                                  2e-3)))
    red = (signed[..., 0] > 0.6) & (signed[..., 2] < 0.3)
    blue = (signed[..., 2] > 0.5) & (signed[..., 0] < 0.3)
    assert red.sum() > 100 and blue.sum() > 100
    rgb = _pixels(ImagePlot("rgb", np.stack([np.ones((4, 4)), np.zeros((4, 4)),
                                            np.zeros((4, 4))]) * 7.0 + 3.0))
    assert ((rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)).sum() > 1000
