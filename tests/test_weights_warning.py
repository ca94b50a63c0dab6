"""A factory model without ``weights:`` is audited at its random initialisation: the run says
so (issue #24), on the console, in the JSON report's ``model.warnings`` and as a pytest
warning; a factory with weights is audited silently."""

from __future__ import annotations

import json

import torch
from conftest import TOY_HEADER
from test_pytest_plugin import audit_dir, run, spec_text, warm  # noqa: F401 (fixtures)

pytest_plugins = ["pytester"]

CHECKS = "checks:\n  - {id: acc, metric: clean_accuracy}\n"


def test_a_factory_without_weights_warns_on_the_console_and_in_the_json(
        robaudit_main, write_spec, toy_dir):
    code, _, err = robaudit_main("run", write_spec(TOY_HEADER + CHECKS), "--json",
                                 toy_dir / "r.json")
    assert code == 0
    assert "WARNING" in err and "factory toy_model.py:linear has no `weights`" in err
    assert "random initialisation" in err
    [warning] = json.loads((toy_dir / "r.json").read_text())["model"]["warnings"]
    assert "toy_model.py:linear" in warning and "random initialisation" in warning


def test_a_factory_with_weights_does_not_warn(robaudit_main, write_spec, toy_dir):
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).state_dict(),
               toy_dir / "linear.pt")
    spec = write_spec(TOY_HEADER.replace("linear\n", "linear\n  weights: linear.pt\n") + CHECKS)
    code, _, err = robaudit_main("run", spec, "--json", toy_dir / "r.json")
    assert code == 0 and "WARNING" not in err
    assert "warnings" not in json.loads((toy_dir / "r.json").read_text())["model"]


def test_under_pytest_it_is_a_pytest_warning(audit_dir):  # noqa: F811
    (audit_dir.path / "robaudit_gate.yaml").write_text(spec_text(CHECKS))
    result = run(audit_dir)
    assert result.parseoutcomes() == {"measured": 1, "warnings": 1}
    result.stdout.fnmatch_lines(["*RobauditWarning*factory counting.py:make has no `weights`*"])
