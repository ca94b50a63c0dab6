"""The pytest plugin (entry point ``pytest11``): robaudit checks as pytest items.

``pytest --robaudit specs/resnet.yaml`` (the option may repeat; it adds the spec to what the
session collects, so ``pytest`` with its usual test paths runs the tests and the audit), a
``.yaml`` / ``.yml`` file named on pytest's command line (``pytest specs/resnet.yaml`` runs
that audit alone), or any file named ``robaudit_*.yaml`` / ``robaudit_*.yml`` that pytest
collects, makes every check of the spec a pytest item ``SPEC::CHECK_ID``, so that a CI job
that already runs pytest gates on robaudit in the same step; ``-k``, ``-m`` (a check's tags are
its marks), ``-x``, ``--maxfail``, ``--junitxml`` and ``--durations`` then come from pytest
itself.

Outcomes: ``passed`` passes; ``failed`` is a pytest failure whose message is robaudit's
("0.31 < min 0.5") with the interval; ``error`` (the metric raised, timed out or was blocked
before running) is a pytest error (raised in the call phase, where the check computes, and
counted as an error by :func:`pytest_report_teststatus`; pytest's JUnit XML writes it as a
``<failure>``), as is a spec whose model or data cannot be set up (in setup); an
invalid spec is a collection error that names the file, key and problem; ``skipped`` skips and
``warned`` passes with a :class:`RobauditWarning`. The value, threshold, interval and metric of
each check are recorded as the item's user properties (``<properties>`` in pytest's JUnit XML).

The runner is robaudit's own :class:`robaudit.session.Session`, set up as ``robaudit run``
sets it up (:mod:`robaudit.runsetup`: OpenMP's passive waiting, SIGTERM as Ctrl-C, each spec's
checks on the threads chosen for its model): each spec is loaded and planned when it is
collected (nothing heavy), and prepared (models built, data loaded, params checked against the
data) once, in the setup of its first selected check; every check then computes in its call
phase (what ``--durations`` shows) in its own context (its seed depends on the spec's seed and
its id alone, as in ``robaudit run``) and shares the spec's per-run cache.
``--robaudit-set KEY=VALUE``, ``--robaudit-device``, ``--robaudit-timeout``,
``--robaudit-threads``, ``--robaudit-baseline``, ``--robaudit-cache-dir`` and
``--robaudit-cache-memory`` are ``robaudit run``'s ``--set``, ``--device``, ``--timeout``,
``--threads``, ``--baseline``, ``--cache-dir`` and ``--cache-memory``.

robaudit's plugins load as in ``robaudit run`` (built-ins, then the ``robaudit`` entry points);
besides, every module registered with pytest that implements a robaudit hook (``-p NAME``, a
``conftest.py``) is loaded as a robaudit plugin, so a project can keep its own metrics in its
conftest. This module imports neither torch nor robaudit's runner until a spec is collected, so
it costs nothing in a test session that runs no audit.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Generator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from robaudit.context import AuditContext
    from robaudit.pluginmanager import Plugins
    from robaudit.preparation import AuditPlan
    from robaudit.results import CheckResult
    from robaudit.session import Session
    from robaudit.spec import Check

PATTERNS = ("robaudit_*.yaml", "robaudit_*.yml")
_PLUGINS = pytest.StashKey["Plugins"]()
_SPECS = pytest.StashKey[set[Path]]()  # the --robaudit specs and the YAML files named as args
_SEEN = pytest.StashKey[set[Path]]()  # specs already collected (each is collected once)


class RobauditWarning(UserWarning):
    """A check whose ``warn`` threshold was violated (outcome ``warned``)."""


class SpecProblem(Exception):
    """A spec that cannot be run: invalid, or its model or data cannot be set up."""


class CheckFailed(Exception):
    """A check whose value is on the failing side of its threshold."""


class CheckError(Exception):
    """A check whose metric could not compute (robaudit's ``error``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("robaudit", "robaudit audits as pytest items")
    group.addoption("--robaudit", action="append", default=[], metavar="SPEC",
                    help="add the checks of robaudit spec SPEC to the session as test items "
                         "(may repeat); YAML files named as arguments and files named "
                         "robaudit_*.yaml are collected without it")
    group.addoption("--robaudit-set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a spec value, as `robaudit run --set`")
    group.addoption("--robaudit-device", default=None, metavar="DEVICE",
                    help="override the specs' device: auto, cpu, cuda, cuda:N")
    group.addoption("--robaudit-timeout", type=float, default=None, metavar="S",
                    help="seconds a check may run before it is an error")
    group.addoption("--robaudit-threads", type=int, default=None, metavar="N",
                    help="CPU threads for torch while a check runs, as `robaudit run --threads` "
                         "(default: chosen for each spec's model)")
    group.addoption("--robaudit-baseline", default=None, metavar="REPORT.json",
                    help="compare each check with the same check of an earlier JSON report, "
                         "as `robaudit run --baseline` (`expect.regression` gates on it)")
    group.addoption("--robaudit-cache-dir", default=None, metavar="DIR",
                    help="keep shared work in DIR between runs, as `robaudit run --cache-dir`")
    group.addoption("--robaudit-cache-memory", default=None, metavar="SIZE",
                    help="keep at most SIZE of input-sized shared work in memory, as "
                         "`robaudit run --cache-memory`")


def audits_named(early_config: pytest.Config, args: list[str]) -> bool:
    """Whether the command line names an audit: ``--robaudit SPEC`` or a YAML file argument."""
    named = [arg.split("::")[0] for arg in args if not arg.startswith("-")]
    return bool(early_config.known_args_namespace.robaudit) or any(
        Path(arg).suffix in (".yaml", ".yml") for arg in named)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, args: list[str]) -> None:
    """A session that names an audit waits passively in OpenMP, as ``robaudit run`` does: chosen
    here, before the conftests (which may import torch) are loaded. A session that names none
    is left alone (an audit found later by its file name chooses then, if torch is not imported
    yet: :func:`robaudit.runsetup.start_run`)."""
    if audits_named(early_config, args):
        from robaudit.runsetup import wait_passively

        wait_passively()


def pytest_configure(config: pytest.Config) -> None:
    specs = [Path(s) for s in config.getoption("robaudit")]
    named = []
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        named = [Path(config.invocation_params.dir, arg.split("::")[0]) for arg in config.args]
    config.stash[_SPECS] = {s.resolve() for s in specs} | {
        p.resolve() for p in named if p.suffix in (".yaml", ".yml")}
    config.stash[_SEEN] = set()
    missing = [str(s) for s in specs if not s.is_file()]
    if missing:
        raise pytest.UsageError(f"--robaudit: no such spec file: {', '.join(missing)}")
    config.args.extend(str(s) for s in specs)
    check_session_options(session_options(config))  # a usage error at once, not per spec


def check_session_options(options: argparse.Namespace) -> None:
    """The run options (:func:`robaudit.runsetup.check_options`) and the baseline report, as
    pytest usage errors naming the ``--robaudit-*`` option."""
    from robaudit.errors import UsageError
    from robaudit.runsetup import check_options

    try:
        check_options(options)
        if options.baseline:
            from robaudit.baseline import load_baseline

            load_baseline(options.baseline)
    except UsageError as exc:
        raise pytest.UsageError(str(exc).replace("--", "--robaudit-", 1)) from None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SpecFile | None:
    path = file_path.resolve()
    config = parent.config
    if path not in config.stash[_SPECS] and not any(file_path.match(p) for p in PATTERNS):
        return None
    if path in config.stash[_SEEN]:  # given twice, or matched by name and named with --robaudit
        return None
    config.stash[_SEEN].add(path)
    return SpecFile.from_parent(parent, path=file_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A spec that cannot be set up (raised in setup) or a check's error (raised in the call)
    is shown as robaudit's message (pytest would show the plugin's traceback)."""
    report = yield
    if (isinstance(item, CheckItem) and call.excinfo is not None
            and isinstance(call.excinfo.value, (CheckError, SpecProblem))):
        report.longrepr = item.repr_failure(call.excinfo)
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> tuple[str, str, str] | None:
    """A check that could not compute is computed in the call phase (so that ``--durations``
    puts its time there), yet it is robaudit's ``error``: counted and shown as a pytest error.
    A ``measured`` check (values recorded, no baseline to judge them by) is counted as
    ``measured``, not as passed."""
    if (report.when == "call" and report.failed
            and ("robaudit_outcome", "error") in report.user_properties):
        return "error", "E", "ERROR"
    if (report.when == "call" and report.passed
            and ("robaudit_outcome", "measured") in report.user_properties):
        return "measured", "M", "MEASURED"  # a regression check without a baseline: no verdict
    return None


def robaudit_modules(config: pytest.Config) -> list[str]:
    """The modules registered with pytest (``-p``, conftests) that implement a robaudit hook."""
    from robaudit.hookspecs import PROJECT

    names = []
    for plugin in config.pluginmanager.get_plugins():
        name = getattr(plugin, "__name__", None)
        if name is None or sys.modules.get(name) is not plugin:  # modules, importable by name
            continue
        if any(attr.startswith("robaudit_") and hasattr(getattr(plugin, attr), f"{PROJECT}_impl")
               for attr in dir(plugin)):
            names.append(name)
    return names


def robaudit_plugins(config: pytest.Config) -> Plugins:
    """robaudit's plugins, loaded once per test session (at the first spec collected)."""
    if _PLUGINS not in config.stash:
        from robaudit.runsetup import start_run

        setup = ExitStack()  # what the run set up, undone when the test session ends
        config.add_cleanup(setup.close)
        start_run(session_options(config), setup)  # before torch loads, where it still can
        from robaudit.pluginmanager import load_plugins

        plugins = load_plugins(extra=robaudit_modules(config))
        for problem in plugins.problems:
            warnings.warn(RobauditWarning(problem), stacklevel=1)
        config.stash[_PLUGINS] = plugins
    return config.stash[_PLUGINS]


def session_options(config: pytest.Config) -> argparse.Namespace:
    """The options a robaudit Session reads, from the ``--robaudit-*`` options. Selection
    (``-k``, ``-m``) and ``--maxfail`` are pytest's, so robaudit's are left empty."""
    return argparse.Namespace(
        overrides=list(config.getoption("robaudit_set")),
        device=config.getoption("robaudit_device"), seed=None,
        timeout=config.getoption("robaudit_timeout"),
        threads=config.getoption("robaudit_threads"),
        baseline=config.getoption("robaudit_baseline"),
        cache_dir=config.getoption("robaudit_cache_dir"),
        cache_memory=config.getoption("robaudit_cache_memory"),
        keyword=None, markexpr=None, maxfail=0, verbose=0, quiet=0,
    )


class SpecFile(pytest.File):
    """One robaudit spec: its checks are the items; it is prepared once, on first use."""

    runner: Session
    plan: AuditPlan

    def collect(self) -> list[CheckItem]:
        from robaudit.errors import SpecError, UsageError
        from robaudit.session import Session

        self.runner = Session(robaudit_plugins(self.config), session_options(self.config))
        self.runner.warn = lambda message: warnings.warn(RobauditWarning(message), stacklevel=1)
        try:
            [spec] = self.runner.load([str(self.path)])
            self.plan = self.runner.plan(spec)
        except SpecError as exc:
            raise SpecProblem("invalid spec:\n" + "\n".join(exc.problems)) from None
        except UsageError as exc:
            raise SpecProblem(str(exc)) from None
        self._base: AuditContext | None = None
        self._problem: str | None = None
        items = []
        for check in self.plan.checks:
            item = CheckItem.from_parent(self, name=check.id, check=check)
            items.append(item)
        return items

    def base(self) -> AuditContext:
        """The spec's prepared context (models, data, cache), made at the first call; a spec
        that cannot be prepared raises :class:`SpecProblem` for each of its checks."""
        if self._problem is not None:
            raise SpecProblem(self._problem)
        if self._base is None:
            from robaudit.errors import SpecError, UsageError

            stack = ExitStack()
            self.config.add_cleanup(stack.close)  # the models' modes restored at the end
            try:
                self._base = self.runner.prepare(self.plan, stack)
            except SpecError as exc:
                self._problem = "the spec does not fit its data:\n" + "\n".join(exc.problems)
            except UsageError as exc:
                self._problem = str(exc)
            if self._problem is not None:
                raise SpecProblem(self._problem)
        assert self._base is not None
        return self._base

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, SpecProblem):
            return f"{self.path}: {excinfo.value}"
        return super().repr_failure(excinfo)


class CheckItem(pytest.Item):
    """One check. Setup prepares the spec (once: building models and loading data is the
    spec's fixture), so that a spec that cannot be prepared is a pytest error; the call computes
    the check on the threads chosen for the spec's model, as ``robaudit run`` does, and judges
    it against its threshold."""

    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.result: CheckResult | None = None
        self.extra_keyword_matches.add(check.metric.name)
        for tag in check.tags:
            self.config.addinivalue_line("markers", f"{tag}: robaudit tag")
            self.add_marker(tag)

    @property
    def spec_file(self) -> SpecFile:
        assert isinstance(self.parent, SpecFile)
        return self.parent

    def setup(self) -> None:
        self.spec_file.base()

    def runtest(self) -> None:
        from robaudit.runsetup import plan_threads

        spec_file = self.spec_file
        base, plan, runner = spec_file.base(), spec_file.plan, spec_file.runner
        with plan_threads(plan.threads):
            self.result = result = runner.run_check(
                self.check, runner.check_context(self.check, base), plan.blocked.get(self.check.id),
                plan.data_identity.get("fingerprint"))
        for key, value in (("metric", result.metric), ("value", result.value),
                           ("threshold", _threshold(result.expect)), ("ci", result.ci),
                           ("robaudit_outcome", result.outcome)):
            if value is not None:
                self.user_properties.append((key, value))
        if result.outcome == "error":
            raise CheckError(result.message)
        if result.outcome == "failed":
            raise CheckFailed(_with_ci(result))
        if result.outcome == "skipped":
            pytest.skip(result.message)
        if result.outcome == "warned":
            warnings.warn(RobauditWarning(f"{result.id}: {_with_ci(result)}"), stacklevel=1)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        error = excinfo.value
        if isinstance(error, CheckFailed):
            return f"{self.check.metric.name}: {error}"
        if isinstance(error, CheckError):
            trace = self.result.traceback if self.result is not None else None
            return f"{self.check.metric.name} could not compute: {error}" + (
                f"\n{trace}" if trace and self.config.getoption("verbose") > 0 else "")
        if isinstance(error, SpecProblem):
            return f"{self.spec_file.path}: {error}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"robaudit check {self.name} ({self.check.metric.name})"


def _threshold(expect: dict[str, Any]) -> str | None:
    parts = [f"{sign} {expect[key]:.4g}" for key, sign in (("min", ">="), ("max", "<="))
             if key in expect]
    return " and ".join(parts) or None


def _with_ci(result: CheckResult) -> str:
    ci = f" (95% CI {result.ci[0]:.4g}–{result.ci[1]:.4g})" if result.ci else ""
    return f"{result.message}{ci}"
