"""A metric's ``details.warnings`` (the attack preflight's findings) reach the console line,
the HTML card and the Markdown summary, escaped like every user-facing text."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from robaudit.plugins.reporters import html, markdown
from robaudit.plugins.reporters.console import ConsoleReporter
from robaudit.results import AuditResult, CheckResult, detail_warnings

WARNING = "preflight zero_gradients: 90% of the samples have a zero input gradient <b>"


def check(details: dict[str, object]) -> CheckResult:
    return CheckResult(id="pgd_linf", metric="pgd_accuracy", outcome="passed", value=0.8,
                       ci=(0.7, 0.9), expect={"min": 0.7}, params={}, details=details,
                       message="0.8 >= 0.7", duration_s=0.5)


def audit(*checks: CheckResult) -> AuditResult:
    return AuditResult(audit="gate", spec="specs/x.yaml", seed=0, device="cpu",
                       environment={}, checks=list(checks), duration_s=1.0)


def test_detail_warnings_reads_only_a_list() -> None:
    assert detail_warnings({"warnings": [WARNING]}) == [WARNING]
    assert detail_warnings({"warnings": "not a list"}) == []
    assert detail_warnings({}) == []


def test_console_prints_each_warning_under_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = ConsoleReporter(argparse.Namespace(verbose=0, quiet=0, heartbeat=0))
    reporter.robaudit_check_finished(check({"warnings": [WARNING]}))
    out = capsys.readouterr().out
    assert "PASSED" in out and f"WARNING {WARNING}" in out


def test_markdown_and_html_show_the_warning(tmp_path: Path) -> None:
    text = markdown.render_markdown([audit(check({"warnings": [WARNING]}), check({}))])
    assert "<summary>Warnings</summary>" in text
    assert text.count("zero\\_gradients") == 1 and "<b>" not in text
    assert "Warnings" not in markdown.render_markdown([audit(check({}))])
    html.robaudit_report(results=[audit(check({"warnings": [WARNING]}))],
                         options=argparse.Namespace(html_path=tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert "⚠ preflight zero_gradients" in page and "gradient &lt;b&gt;" in page
