"""The hooks of robaudit. Every built-in metric, data source and reporter uses them too.

A plugin is a module or object with functions named after these hooks and marked with
``@robaudit.hookimpl``. Third-party plugins are found through the ``robaudit`` entry-point group.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from robaudit.context import ProgressFactory
    from robaudit.datasource import DataSource
    from robaudit.metric import Metric
    from robaudit.preparation import AuditPlan
    from robaudit.results import AuditResult, CheckResult

PROJECT = "robaudit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def robaudit_addoption(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``robaudit run`` (e.g. a reporter's ``--json PATH``).

    Historic: a plugin registered late still receives the parser.
    """


@hookspec
def robaudit_configure(options: argparse.Namespace, pluginmanager: pluggy.PluginManager) -> None:
    """Receive the parsed command-line options once, before any spec is loaded.

    A plugin may register further plugin objects here (the console reporter registers its
    stateful reporter this way, as pytest's terminal reporter does).
    """


@hookspec
def robaudit_register_metrics(register: Callable[[Metric], None]) -> None:
    """Register metrics: call ``register(MyMetric())`` for each :class:`robaudit.Metric`.

    A name registered twice is reported as a plugin problem and the second is ignored.
    """


@hookspec
def robaudit_register_data_sources(register: Callable[[DataSource], None]) -> None:
    """Register data sources (the values of the spec's ``data.source``)."""


@hookspec(firstresult=True)
def robaudit_load_model(config: dict[str, Any], base_dir: Path) -> nn.Module | None:
    """Build the ``nn.Module`` of a validated ``model`` entry, or return None to pass.

    ``config`` is the entry as a dict (``factory``, ``kwargs``, ``weights``, ``torchscript``, …);
    paths in it are relative to ``base_dir``, the spec's folder. The first non-None result wins,
    so a plugin can take over loading for its own kind of entry. Raise
    :class:`robaudit.UsageError` with a located message for a model that cannot be built.
    """


@hookspec(firstresult=True)
def robaudit_progress(options: argparse.Namespace) -> ProgressFactory | None:
    """Return the factory that metrics use to show progress (the console's bar), or None."""


@hookspec
def robaudit_audit_start(plan: AuditPlan) -> None:
    """An audit (one spec) is about to run its selected checks."""


@hookspec
def robaudit_check_finished(result: CheckResult) -> None:
    """A check has finished (passed, failed, error or skipped)."""


@hookspec
def robaudit_report(results: list[AuditResult], options: argparse.Namespace) -> None:
    """Every spec has run (or the run was interrupted): write reports for ``results``."""
