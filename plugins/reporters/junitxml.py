"""The JUnit XML report (``--junitxml PATH``), the format CI servers read (design.md §5).

One ``<testsuites>`` holds one ``<testsuite name=AUDIT>`` per spec and one ``<testcase
classname="robaudit.SPEC_STEM" name=CHECK_ID>`` per check. A failed check carries
``<failure message=…>``, a warned one (``severity: warn``) is a passing testcase with the
warning in its ``warning`` property and ``<system-out>``, a measured one (no threshold, design
§10) a passing testcase whose ``measured`` property holds its message, an errored one
``<error message=…>`` (its body is the traceback when there is one), a skipped one
``<skipped message=…>``. Each testcase's ``<properties>`` hold the metric, the value, the
thresholds (``expect_min`` / ``expect_max``), the confidence interval (``ci_low`` /
``ci_high``), the resolved params (JSON) and, with ``--baseline``, the baseline comparison; its
details (JSON) go to ``<system-out>``. Each testsuite's ``<properties>`` hold the spec, seed,
device and whether the run was interrupted (an interrupted run writes the checks that
finished).
"""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from robaudit import hookimpl
from robaudit.errors import UsageError
from robaudit.reportpath import ensure_writable, write_atomic
from robaudit.results import AuditResult, CheckResult, jsonable

#: Characters that XML 1.0 forbids (control characters such as the ESC of ANSI colours).
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object) -> str:
    """``value`` as text that XML 1.0 can hold."""
    return _INVALID_XML.sub("?", str(value))


def _number(value: float) -> str:
    return repr(float(value))


def _properties(parent: ET.Element, items: list[tuple[str, str]]) -> None:
    if items:
        properties = ET.SubElement(parent, "properties")
        for name, value in items:
            ET.SubElement(properties, "property", name=name, value=_text(value))


def testcase(check: CheckResult, classname: str) -> ET.Element:
    """The ``<testcase>`` of one check."""
    case = ET.Element("testcase", classname=classname, name=_text(check.id),
                      time=f"{check.duration_s:.3f}")
    items = [("metric", check.metric)]
    if check.value is not None:
        items.append(("value", _number(check.value)))
    for key in ("min", "max"):
        if key in check.expect:
            items.append((f"expect_{key}", _number(check.expect[key])))
    if check.ci is not None:
        items += [("ci_low", _number(check.ci[0])), ("ci_high", _number(check.ci[1]))]
    items.append(("params", json.dumps(jsonable(check.params), sort_keys=True)))
    if check.outcome in ("warned", "measured"):  # passing testcases that say what they are
        items.append(("warning" if check.outcome == "warned" else "measured", check.message))
    if check.baseline is not None:
        items.append(("baseline", json.dumps(jsonable(check.baseline), sort_keys=True)))
    _properties(case, items)
    message = _text(check.message)
    if check.outcome == "failed":
        ET.SubElement(case, "failure", message=message).text = message
    elif check.outcome == "error":
        ET.SubElement(case, "error", message=message).text = _text(check.traceback or message)
    elif check.outcome == "skipped":
        ET.SubElement(case, "skipped", message=message)
    out = [f"WARNING: {check.message}"] if check.outcome == "warned" else []
    if check.details:
        out.append(json.dumps(jsonable(check.details)))
    if out:
        ET.SubElement(case, "system-out").text = _text("\n".join(out))
    return case


def testsuite(result: AuditResult) -> ET.Element:
    """The ``<testsuite>`` of one spec."""
    counts = result.summary()
    suite = ET.Element(
        "testsuite", name=_text(result.audit), tests=str(len(result.checks)),
        failures=str(counts["failed"]), errors=str(counts["error"]),
        skipped=str(counts["skipped"]), time=f"{result.duration_s:.3f}",
    )
    _properties(suite, [("spec", result.spec), ("seed", str(result.seed)),
                        ("device", result.device),
                        ("interrupted", str(result.interrupted).lower())])
    classname = f"robaudit.{Path(result.spec).stem}"
    for check in result.checks:
        suite.append(testcase(check, classname))
    return suite


def junit_tree(results: list[AuditResult]) -> ET.ElementTree:
    """The whole report: ``<testsuites>`` with totals over every spec."""
    suites = [testsuite(r) for r in results]
    root = ET.Element("testsuites", name="robaudit")
    for total in ("tests", "failures", "errors", "skipped"):
        root.set(total, str(sum(int(s.get(total, "0")) for s in suites)))
    root.set("time", f"{sum(r.duration_s for r in results):.3f}")
    root.extend(suites)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junitxml(path: Path, results: list[AuditResult]) -> None:
    tree = junit_tree(results)
    ET.indent(tree)
    text = ET.tostring(tree.getroot(), encoding="unicode")
    write_atomic(path, f"<?xml version='1.0' encoding='utf-8'?>\n{text}\n")


@hookimpl
def robaudit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--junitxml", dest="junitxml_path", type=Path, default=None,
                        metavar="PATH", help="write a JUnit XML report to PATH (for CI)")


@hookimpl
def robaudit_configure(options: argparse.Namespace, pluginmanager: object) -> None:
    if getattr(options, "junitxml_path", None):
        ensure_writable("--junitxml", options.junitxml_path)


@hookimpl
def robaudit_report(results: list[AuditResult], options: argparse.Namespace) -> None:
    path = getattr(options, "junitxml_path", None)
    if path is not None:
        try:
            write_junitxml(Path(path), results)
        except OSError as exc:
            raise UsageError(f"--junitxml {path}: cannot write the report: {exc}") from None
