"""Start-up without torch (issue #24): loading the plugins, listing and describing the metrics
and validating the default spec import no torch; it comes in when a check runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import contextlib, io, sys
from robaudit.cli import main
from robaudit.pluginmanager import load_plugins
{body}
print(sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")))
"""


def loaded_torch_modules(body: str) -> str:
    """Run ``body`` in a fresh interpreter; the torch modules it left in ``sys.modules``."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [
    ["metrics"],
    ["metrics", "lipschitz_bound"],
    ["metrics", "autoattack_accuracy"],
    ["validate", "specs/resnet.yaml"],
    ["plugins"],
])
def test_command_does_not_import_torch(argv: list[str]) -> None:
    body = (f"with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main({argv!r}) == 0")
    assert loaded_torch_modules(body) == "[]"


def test_loading_the_plugins_does_not_import_torch() -> None:
    body = ("plugins = load_plugins()\n"
            "assert not plugins.problems, plugins.problems\n"
            "assert len(plugins.metrics) > 20 and plugins.data_sources\n"
            "for metric in plugins.metrics.values():\n"
            "    metric.Params.model_json_schema()\n"
            "for source in plugins.data_sources.values():\n"
            "    source.Options.model_json_schema()")
    assert loaded_torch_modules(body) == "[]"


def test_the_probe_sees_torch() -> None:
    """The probe can tell: what a check runs on (the zoo's models) imports torch."""
    assert "'torch'" in loaded_torch_modules("import robaudit.zoo")


def test_a_rule_registered_first_keeps_over_the_lazy_built_ins() -> None:
    """The Lipschitz rules of torch's modules register on the registry's first use (not at
    import); a plugin's rule for a built-in type, registered first, still replaces it."""
    body = """
from robaudit.plugins.metrics.bounds import lipschitz
from torch import nn
def rule(module, site):
    raise AssertionError
lipschitz.register_rule(nn.Linear, rule)
assert lipschitz.rule_for(nn.Linear(2, 2)) is rule
assert lipschitz.rule_for(nn.Conv2d(1, 1, 3)) is lipschitz._conv_rule
lipschitz.unregister_rule(nn.Linear)
assert not lipschitz.has_rule(nn.Linear(2, 2))
"""
    assert "'torch'" in loaded_torch_modules(body)
