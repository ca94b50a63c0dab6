"""The HTML report as people read it (issue 13, part 6): the filter by outcome, failed and
errored checks first, what each metric means, histograms only where they inform, long tables
collapsed, captions that fit the image. The look itself is checked in headless Chromium by
``bench/screenshot_report.py``."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pluggy
from conftest import TOY_HEADER

from robaudit import hookspecs
from robaudit.figures import Histogram, ImagePlot
from robaudit.plugins.reporters import html
from robaudit.results import AuditResult, CheckResult

ENV = {"python": "3.11.7", "torch": "2.14.1", "device_name": "cpu"}


def check(check_id: str, outcome: str, metric: str = "clean_accuracy", **kwargs: object
          ) -> CheckResult:
    fields: dict[str, object] = {
        "id": check_id, "metric": metric, "outcome": outcome, "value": 0.5, "ci": None,
        "expect": {"min": 0.4}, "params": {}, "details": {}, "message": f"{check_id} message",
        "duration_s": 0.1, "higher_is_better": True,
    }
    fields.update(kwargs)
    return CheckResult(**fields)  # type: ignore[arg-type]


def audit(checks: list[CheckResult]) -> AuditResult:
    return AuditResult(audit="gate", spec="specs/x.yaml", seed=0, device="cpu",
                       environment=ENV, checks=checks, duration_s=1.0)


def card_ids(text: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", text)


def overview_ids(text: str) -> list[str]:
    table = text.split('<table class="overview">')[1].split("</table>")[0]
    return re.findall(r'<a href="#[^"]+">([^<]+)</a>', table)


# -- order and filter ------------------------------------------------------------------------


def test_failed_and_errored_checks_come_first_in_spec_order_within_an_outcome():
    checks = [check("p1", "passed"), check("s1", "skipped"), check("e1", "error", value=None),
              check("f1", "failed"), check("p2", "passed"), check("f2", "failed")]
    text = html.render_html([audit(checks)])
    assert card_ids(text) == ["f1", "f2", "e1", "p1", "p2", "s1"]
    assert overview_ids(text) == card_ids(text)
    # anchors keep the spec's index, so a link to a check survives a change of outcome
    assert 'id="audit-0-3-f1"' in text and 'href="#audit-0-3-f1"' in text


def test_filter_is_a_checkbox_per_present_outcome_styled_by_css_without_script():
    text = html.render_html([audit([check("p1", "passed"), check("f1", "failed"),
                                    check("f2", "failed")])])
    assert "<script" not in text.lower()
    boxes = re.findall(r'<input type="checkbox" class="filter-box" id="show-(\w+)" checked>',
                       text)
    assert sorted(boxes) == ["failed", "passed"]  # none for outcomes with no check
    assert '<label for="show-failed" class="count failed"' in text and "2 failed</label>" in text
    assert '<label for="show-passed"' in text and '<label for="show-error"' not in text
    # the checkboxes precede <main> as siblings, so `~ main` reaches the cards and rows
    assert text.index('id="show-failed"') < text.index("<main>")
    for outcome in ("failed", "passed"):
        rule = (f"#show-{outcome}:not(:checked) ~ main .check.{outcome}, "
                f"#show-{outcome}:not(:checked) ~ main tr.{outcome} {{ display: none; }}")
        assert rule in text
    assert '<tr class="failed">' in text and '<article class="card check failed"' in text


# -- what the metric means ---------------------------------------------------------------------


def test_each_card_says_what_the_metric_means_and_which_way_is_better():
    infos = {"clean_accuracy": html.MetricInfo("Accuracy on the unperturbed split", "tests")}
    checks = [check("acc", "passed"),
              check("lip", "failed", metric="lipschitz_bound", higher_is_better=False)]
    text = html.render_html([audit(checks)], infos)
    assert ('<p class="about">Accuracy on the unperturbed split. Higher is better. '
            '<span class="muted">Source: tests.</span></p>') in text
    # a metric the report knows nothing about still says which way is better
    assert '<p class="about">Lower is better.</p>' in text


def test_metric_info_comes_from_every_plugin_that_registers_metrics():
    import toy_plugin

    from robaudit.plugins.metrics.general import accuracy

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(accuracy, name="accuracy")
    pm.register(toy_plugin, name="toy_plugin")
    infos = html.collect_metric_info(pm)
    # the docstring's first paragraph, RST literals unquoted; the metric's source
    assert infos["constant"] == html.MetricInfo("Returns the value param.", "tests")
    assert infos["clean_accuracy"].summary.startswith("Accuracy on the unperturbed audit split")
    assert infos["clean_accuracy"].source


def test_a_run_with_html_describes_its_metrics(write_spec, robaudit_main, tmp_path):
    spec = write_spec(TOY_HEADER + """
checks:
  - {id: fine, metric: constant, params: {value: 0.7}, expect: {min: 0.5}}
  - {id: bad, metric: constant, params: {value: 0.2}, expect: {min: 0.5}}
""")
    out = tmp_path / "r.html"
    code, _, _ = robaudit_main("run", spec, "-q", "--html", out)
    assert code == 1
    text = out.read_text()
    assert text.count('<p class="about">Returns the value param. Higher is better.') == 2
    assert card_ids(text) == ["bad", "fine"]


# -- plots -------------------------------------------------------------------------------------


def test_per_sample_histogram_only_where_it_informs():
    spread = np.random.default_rng(0).normal(size=200)
    assert html.histogram_informs(spread.tolist(), [])
    # correct / fooled flags: the value and its interval say it all
    assert not html.histogram_informs([0.0, 1.0] * 50, [])
    assert not html.histogram_informs([1.0] * 100, [])
    # one value holds 95% of the samples: a single bar
    assert not html.histogram_informs([1.0] * 95 + [0.9, 0.8, 0.7, 0.6, 0.5], [])
    # the metric already plots the same values (its NaNs left out): no duplicate
    with_nan = [*spread.tolist(), float("nan")]
    own = Histogram("mine", tuple(spread[::-1].tolist()))
    assert not html.histogram_informs(with_nan, [own])
    assert html.histogram_informs(with_nan, [Histogram("other", (1.0, 2.0, 3.0))])


def test_accuracy_card_has_no_histogram_and_a_spread_card_has_one():
    flags = tuple(float(v) for v in np.arange(100) % 7 != 0)
    accuracy = check("acc", "passed", samples=flags)
    spread = check("sp", "passed", samples=tuple(np.linspace(0, 1, 50).tolist()))
    assert html.plots(accuracy) == []
    shown = html.plots(spread)
    assert [p.title for p in shown] == ["sp: the 50 values whose mean is the value"]
    assert shown[0].src


def test_long_tables_are_collapsed_and_short_ones_open():
    layers = [{"layer": f"l{i}", "bound": float(i)} for i in range(html.COLLAPSE_ROWS + 4)]
    few = layers[:3]
    text = html.render_html([audit([check("lip", "passed", details={
        "layers": layers, "curve": few, "scalar": 1.0})])])
    folded = re.findall(r'<details class="table">\s*<summary><h5>(\w+)</h5>', text)
    assert folded == ["layers"]
    assert f"{html.COLLAPSE_ROWS + 4} rows</span></summary>" in text
    assert "<h5>curve</h5>" in text
    # every row of the folded table is still in the file
    assert all(f"<td>l{i}</td>" in text for i in range(len(layers)))


def test_a_long_caption_wraps_inside_the_image():
    from matplotlib.image import imread

    from robaudit.plotting import render_png

    caption = "ℓ∞ norm 0.1 (budget 0.1); fools 10.0% of the audit split, " * 3
    pixels = imread(io.BytesIO(base64.b64decode(render_png(
        ImagePlot("perturbation", np.linspace(-1, 1, 64).reshape(8, 8), caption=caption)))),
        format="png")[..., :3]
    ink = pixels.min(axis=2) < 0.6  # dark pixels: text and image
    rows = np.flatnonzero(ink.any(axis=1))
    bottom = ink[rows[-1] - 30 : rows[-1] + 1]  # the caption's lines
    assert bottom.any()
    # clipped text runs into the image's edges; wrapped text keeps a margin on both sides
    assert not bottom[:, :3].any() and not bottom[:, -3:].any()


def test_the_report_names_what_was_audited_and_each_checks_baseline():
    result = audit([check("acc", "passed", baseline={
        "value": 0.95, "delta": -0.0123, "ci": [-0.02, -0.004], "paired": True,
        "notes": ["the baseline ran with other params"]})])
    result.model = {"factory": "pkg.models:net", "weights": "net.pt",
                    "weights_sha256": "ab" * 32, "parameters": 1234567}
    result.data = {"source": "npz", "split": "test", "reference": "train",
                   "sizes": {"train": 10, "test": 5}, "reference_is_split": False,
                   "fingerprint": "cd" * 32}
    text = re.sub(r"\s+", " ", html.render_html([result]))
    assert "<code>pkg.models:net</code>" in text and "1,234,567" in text
    assert f'title="{"ab" * 32}"' in text and f'title="{"cd" * 32}"' in text
    assert "train 10, test 5" in text
    assert "baseline 0.95, Δ -0.0123 (95% CI -0.02 … -0.004, paired)" in text
    assert "the baseline ran with other params" in text
