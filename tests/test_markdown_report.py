"""The Markdown summary (``--md PATH``, issue 13 part 5): the outcome table, the closing line,
escaping, and GitHub's job summary appended to rather than replaced."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from conftest import TOY_HEADER

from robaudit.errors import UsageError
from robaudit.plugins.reporters import markdown
from robaudit.results import AuditResult, CheckResult

ENV = {"python": "3.11.7", "torch": "2.14.1", "device_name": "cpu"}


def check(check_id: str, outcome: str, value: float | None = 0.5, **kwargs: object
          ) -> CheckResult:
    fields: dict[str, object] = {
        "id": check_id, "metric": "constant", "outcome": outcome, "value": value, "ci": None,
        "expect": {"min": 0.4}, "params": {}, "details": {}, "message": f"{check_id} says why",
        "duration_s": 0.25,
    }
    fields.update(kwargs)
    return CheckResult(**fields)  # type: ignore[arg-type]


def audit(checks: list[CheckResult], name: str = "toy gate", **kwargs: object) -> AuditResult:
    return AuditResult(audit=name, spec="specs/toy.yaml", seed=3, device="cpu",
                       environment=ENV, checks=checks, duration_s=2.0, **kwargs)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row (header and separator left out), split at the pipes that
    are not backslash-escaped, as GitHub's table parser does."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| check |"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([cell.strip() for cell in cells])
    return rows


def test_table_has_a_row_per_check_failed_and_errored_first():
    text = markdown.render_markdown([audit([
        check("ok", "passed", ci=(0.41, 0.6)),
        check("gone", "skipped", value=None),
        check("low", "failed", value=0.123456, expect={"min": 0.4, "max": 2}),
        check("boom", "error", value=None, expect={}),
    ])])
    assert "| check | outcome | value | threshold | 95% CI | time |" in text
    assert table_rows(text) == [
        ["low", "❌ failed", "0.1235", "≥ 0.4 and ≤ 2", "—", "0.25 s"],
        ["boom", "💥 error", "—", "—", "—", "0.25 s"],
        ["ok", "✅ passed", "0.5", "≥ 0.4", "[0.41, 0.6]", "0.25 s"],
        ["gone", "⏭️ skipped", "—", "≥ 0.4", "—", "0.25 s"],
    ]
    assert "### 💥 error — toy gate" in text  # the spec's outcome, as the JSON report's
    assert "`specs/toy.yaml` · device cpu · seed 3" in text
    # what did not pass, and why; then the console's closing line
    assert "- ❌ failed **low**: low says why" in text
    assert "- 💥 error **boom**: boom says why" in text and "**ok**" not in text
    assert text.rstrip().endswith("**1 failed, 1 passed, 1 error, 1 skipped in 2.00s**")


def test_user_text_cannot_break_the_table_or_inject_html():
    hostile = "a|b <script>alert(1)</script> *x* \x1b[31m\nnext"
    text = markdown.render_markdown([audit([check(hostile, "failed", message=hostile)])])
    [row] = table_rows(text)
    assert len(row) == 6 and row[1] == "❌ failed"
    assert "<script" not in text and "\x1b" not in text
    assert row[0] == r"a\|b &lt;script&gt;alert\(1\)&lt;/script&gt; \*x\* \\x1b\[31m next"


def test_an_interrupted_or_empty_run_says_so():
    text = markdown.render_markdown([audit([check("ok", "passed")], interrupted=True),
                                     audit([], name="second")])
    assert "**The run was interrupted**: the table holds the 1 checks that finished." in text
    assert "### ⏭️ skipped — second" in text and "No check ran." in text
    assert markdown.render_markdown([audit([])]).rstrip().endswith("**no checks ran in 2.00s**")


def options(path: Path) -> argparse.Namespace:
    return argparse.Namespace(md_path=path)


def test_a_path_is_replaced_and_the_github_summary_appended_to(tmp_path, monkeypatch):
    result = [audit([check("ok", "passed")])]
    plain = tmp_path / "summary.md"
    plain.write_text("old\n")
    monkeypatch.delenv(markdown.SUMMARY_ENV, raising=False)
    markdown.robaudit_report(results=result, options=options(plain))
    assert plain.read_text() == markdown.render_markdown(result)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]  # no temporary left behind

    step = tmp_path / "step_summary"
    step.write_text("## an earlier step\n")
    monkeypatch.setenv(markdown.SUMMARY_ENV, str(step))
    markdown.robaudit_report(results=result, options=options(tmp_path / "." / "step_summary"))
    markdown.robaudit_report(results=result, options=options(step))
    assert step.read_text() == "## an earlier step\n" + 2 * markdown.render_markdown(result)


def test_option_and_unwritable_path(tmp_path):
    parser = argparse.ArgumentParser()
    markdown.robaudit_addoption(parser=parser)
    assert parser.parse_args([]).md_path is None
    assert parser.parse_args(["--md", "s.md"]).md_path == Path("s.md")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="--md"):
        markdown.robaudit_configure(options=options(tmp_path / "file" / "s.md"),
                                    pluginmanager=None)
    with pytest.raises(UsageError, match="cannot write the report"):
        markdown.robaudit_report(results=[audit([])], options=options(tmp_path / "file" / "x"))


def test_a_run_writes_the_summary_with_the_consoles_closing_line(write_spec, robaudit_main,
                                                                  tmp_path, monkeypatch):
    monkeypatch.delenv(markdown.SUMMARY_ENV, raising=False)
    spec = write_spec(TOY_HEADER + """
checks:
  - {id: good, metric: constant, params: {value: 0.7}, expect: {min: 0.5}}
  - {id: bad, metric: constant, params: {value: 0.2}, expect: {min: 0.5}}
  - metric: boom
""")
    out = tmp_path / "out" / "summary.md"
    code, stdout, _ = robaudit_main("run", spec, "--md", out)
    assert code == 1
    text = out.read_text()
    assert [row[:2] for row in table_rows(text)] == [
        ["bad", "❌ failed"], ["boom", "💥 error"], ["good", "✅ passed"]]
    closing = re.search(r"\*\*(.+) in [\d.]+s\*\*", text).group(1)
    console = re.search(r"=+ (.+) in [\d.]+s =+", stdout.splitlines()[-1]).group(1)
    assert closing == console == "1 failed, 1 passed, 1 error"
    # a report path that cannot be written stops the run before any check (exit 4)
    (tmp_path / "file").write_text("")
    code, _, err = robaudit_main("run", spec, "--md", tmp_path / "file" / "s.md")
    assert code == 4 and "--md" in err
