"""The default audit end to end, as a user runs it: exit 0 and all three reports."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import yaml
from conftest import ROOT, cli

SPEC = ROOT / "specs" / "resnet.yaml"


def test_default_audit_passes_and_writes_every_report(tmp_path: Path):
    paths = {kind: tmp_path / f"r.{kind}" for kind in ("json", "xml", "html")}
    done = subprocess.run(
        [sys.executable, "-m", "robaudit", "run", str(SPEC), "--json", str(paths["json"]),
         "--junitxml", str(paths["xml"]), "--html", str(paths["html"])],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    spec_checks = yaml.safe_load(SPEC.read_text())["checks"]

    report = json.loads(paths["json"].read_text())
    # design §5's keys in its order, then the extensions it allows
    assert list(report) == ["robaudit", "audit", "spec", "outcome", "summary", "duration_s",
                            "seed", "device", "environment", "interrupted", "model", "data",
                            "checks"]
    assert report["interrupted"] is False
    assert report["data"]["sizes"] == {"train": 1347, "test": 450}
    assert report["outcome"] == "passed"
    assert report["summary"]["passed"] == len(spec_checks)
    for check in report["checks"]:
        assert list(check)[:11] == ["id", "metric", "outcome", "value", "ci", "expect", "params",
                                    "details", "message", "duration_s", "severity"]
        assert check["outcome"] == "passed"
        assert np.isfinite(check["value"])

    suite = ET.parse(paths["xml"]).getroot().find("testsuite")
    assert suite is not None and len(suite.findall("testcase")) == len(spec_checks)

    html = paths["html"].read_text()
    assert all(c.get("id", c["metric"]) in html for c in spec_checks)
    assert "data:image/png;base64," in html


def test_wrong_shapes_in_a_data_file_is_a_located_usage_error(write_spec, toy_dir):
    np.savez(toy_dir / "bad.npz", x=np.zeros((10, 8, 8), dtype=np.float32),
             y=np.zeros(10, dtype=np.int64))
    spec = write_spec("""\
audit: x
model: {factory: "toy_model.py:linear"}
data: {source: npz, path: bad.npz}
checks: [{metric: clean_accuracy}]
""")
    done = cli("run", spec)
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert str(spec) in done.stderr and "data.path" in done.stderr and "bad.npz" in done.stderr


def test_same_spec_and_seed_give_the_same_values():
    """Design §7: deterministic. Every check of the default audit, twice, on 64 samples and a
    reference of 200."""
    import argparse

    from robaudit.pluginmanager import load_plugins
    from robaudit.session import Session

    def values() -> dict[str, tuple]:
        options = argparse.Namespace(overrides=["data.limit=64", "data.reference_limit=200"],
                                     quiet=1, verbose=0)
        [result], code = Session(load_plugins(), options).run([str(SPEC)])
        assert code in (0, 1)
        return {c.id: (c.value, c.ci, json.dumps(c.details, default=str)) for c in result.checks}

    first, second = values(), values()
    assert first == second
    assert len(first) == len(yaml.safe_load(SPEC.read_text())["checks"])
