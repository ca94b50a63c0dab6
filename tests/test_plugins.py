"""Third-party plugins through the ``robaudit`` entry-point group: the README's example is
installed with pip and run; a broken plugin is reported, not fatal; autoload can be disabled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT, TOY_HEADER
from torch import nn

from robaudit.testing import make_context, run_metric

EXAMPLE = ROOT / "examples" / "robaudit-margin"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed with pip into a folder, plus a broken entry point."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True,
    )
    broken = target / "robaudit_broken-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: robaudit-broken\n"
                                     "Version: 0.1\n")
    (broken / "entry_points.txt").write_text("[robaudit]\nbroken = no_such_module_anywhere\n")
    return target


def robaudit(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(FIXTURES)]), **env}
    return subprocess.run([sys.executable, "-m", "robaudit", *args], capture_output=True,
                          text=True, env=environ, cwd=ROOT, timeout=300)


def test_installed_example_plugin_is_listed_and_runs(site, write_spec):
    listing = robaudit(site, "metrics")
    assert "logit_margin" in listing.stdout
    assert "plugin 'broken'" in listing.stderr and "failed to load" in listing.stderr
    spec = write_spec(TOY_HEADER + "checks:\n  - {metric: logit_margin, expect: {min: -100}}\n")
    done = robaudit(site, "run", str(spec), "-p", "toy_plugin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "logit_margin" in done.stdout and "PASSED" in done.stdout


def test_autoload_can_be_disabled_and_plugins_blocked(site, write_spec):
    spec = write_spec(TOY_HEADER + "checks:\n  - {metric: logit_margin}\n")
    off = robaudit(site, "run", str(spec), "-p", "toy_plugin",
                   ROBAUDIT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert off.returncode == 4 and "unknown metric 'logit_margin'" in off.stderr
    assert "broken" not in off.stderr
    blocked = robaudit(site, "run", str(spec), "-p", "toy_plugin", "-p", "no:margin")
    assert blocked.returncode == 4


def test_example_metric_against_the_closed_form(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    from robaudit_margin import LogitMargin

    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x, y = torch.randn(50, 5), torch.randint(0, 4, (50,))
    result = run_metric(LogitMargin(), make_context(model, x, y))
    with torch.no_grad():
        z = model(x).numpy()
    expected = [z[i, y[i]] - max(z[i, j] for j in range(4) if j != y[i]) for i in range(50)]
    np.testing.assert_allclose(result.samples, expected, rtol=1e-5)
    assert result.value == pytest.approx(np.mean(expected), rel=1e-5)
