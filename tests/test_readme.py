"""README.md stays true: its metric table is the registry's, its commands are CI's."""

from __future__ import annotations

import os

from conftest import ROOT

from robaudit.cli import metrics_markdown
from robaudit.pluginmanager import AUTOLOAD_ENV, load_plugins

README = (ROOT / "README.md").read_text()


def test_metric_table_lists_every_built_in_metric(monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert metrics_markdown(load_plugins()) in README


def test_the_two_setup_commands_and_ci_agree():
    assert "pip install -e . && robaudit run specs/resnet.yaml" in README
    assert 'pip install -e ".[dev]" && python -m pytest -n 2\n' in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet --disable-pip-version-check -e ".[dev]"' in ci
    assert "\npython -m pytest -n 2\n" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
