"""The ``robaudit`` command line (design.md §4).

Heavy modules (torch, the plugins, the runner) are imported only by the commands that use them,
so that ``robaudit --help`` and ``robaudit --version`` answer at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import robaudit
from robaudit.errors import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_CHECKS,
    EXIT_OK,
    EXIT_USAGE,
    SpecError,
    UsageError,
)
from robaudit.text import plural, printable

if TYPE_CHECKING:
    from robaudit.pluginmanager import Plugins
    from robaudit.session import Session

#: The width of tables (metrics, compare, zoo) when the output is not a terminal: a CI log has
#: no width, and metric names, check ids and factories are what users copy from it.
LOG_WIDTH = 200

#: The commands that read the plugins (their metrics, data sources and command-line options).
PLUGIN_COMMANDS = ("run", "validate", "metrics", "plugins", "schema", "compare", "init",
                   "merge")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a usage error (exit 4, as pytest)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _prescan_plugins(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``-p NAME`` / ``-p no:NAME`` must act before the parser exists (plugins add options)."""
    values: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "-p" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--"):
            values.append(arg[2:].lstrip("="))
    blocked = [v[3:] for v in values if v.startswith("no:")]
    extra = [v for v in values if not v.startswith("no:")]
    return blocked, extra


def _build_parser(plugins: Plugins | None) -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help="load plugin module NAME early; `-p no:NAME` blocks plugin NAME")
    parser = _Parser(prog="robaudit", description=robaudit.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"robaudit {robaudit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", parents=[common], help="run the checks of audit specs")
    run.add_argument("specs", nargs="+", metavar="SPEC")
    run.add_argument("-k", dest="keyword", metavar="EXPR",
                     help="select checks by id or metric name: 'spearman and not lipschitz'")
    run.add_argument("-m", dest="markexpr", metavar="EXPR", help="select checks by tags")
    run.add_argument("-x", "--exitfirst", action="store_const", const=1, dest="maxfail",
                     help="stop after the first failed or errored check (a warned one too "
                          "under --strict)")
    run.add_argument("--maxfail", type=int, default=0, metavar="N",
                     help="stop after N failed or errored checks")
    run.add_argument("-v", "--verbose", action="count", default=0,
                     help="show params, details and tracebacks")
    run.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    _add_report_chars(run)
    run.add_argument("--device", help="override the spec's device: auto, cpu, cuda, cuda:N")
    run.add_argument("--seed", type=int, help="override the spec's seed")
    run.add_argument("--threads", type=int, metavar="N",
                     help="CPU threads for torch (default: one per core available to the "
                          "process, waiting passively; see README)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY.PATH=VALUE", help="override a spec value (YAML value)")
    run.add_argument("--collect-only", action="store_true",
                     help="list the selected checks with resolved params and their cost in "
                          "model passes; run nothing")
    run.add_argument("--cache-dir", metavar="DIR",
                     help="keep shared work (DeepFool boundary points, universal perturbation "
                          "fits, features) in DIR between runs, keyed by the model entries "
                          "with their files and code, the data, the seed, the device and the "
                          "versions (see README)")
    run.add_argument("--cache-memory", metavar="SIZE",
                     help="keep at most SIZE of the shared work that grows with the split "
                          "times the input (DeepFool's and FAB-T's points) in memory, and "
                          "compute the rest again where a check needs it (default 1G; e.g. "
                          "512M, 8G, 0; see README)")
    run.add_argument("--strict", action="store_true",
                     help="a `warned` check (severity: warn) counts as failed")
    run.add_argument("--lf", "--last-failed", action="store_true", dest="last_failed",
                     help="rerun only the checks that failed (or were `error`) in the last "
                          "run, or all if none did (state in --cache-dir, else "
                          ".robaudit_cache/)")
    run.add_argument("--ff", "--failed-first", action="store_true", dest="failed_first",
                     help="run the checks that failed in the last run first, then the rest")
    run.add_argument("--baseline", metavar="REPORT.json",
                     help="compare each check with the same check of an earlier JSON report "
                          "(`expect.regression` gates on it)")
    run.add_argument("--timeout", type=float, metavar="S",
                     help="seconds a check may run before it is `error` (a check's own "
                          "`timeout` wins)")
    run.add_argument("--shard", metavar="I/N",
                     help="run share I of N (0-based) of every check without a process group, "
                          "e.g. one CI matrix job each; needs --json; `robaudit merge` "
                          "combines the shards' reports (see README, scaling out)")
    merge = sub.add_parser("merge", parents=[common],
                           help="combine the JSON reports of `run --shard I/N` into the report "
                                "one process writes, and judge its checks")
    merge.add_argument("shards", nargs="+", metavar="SHARD.json")
    merge.add_argument("-v", "--verbose", action="count", default=0,
                       help="show params, details and tracebacks")
    merge.add_argument("-q", "--quiet", action="count", default=0, help="less output")
    _add_report_chars(merge)
    merge.add_argument("--strict", action="store_true",
                       help="a `warned` check (severity: warn) counts as failed")
    merge.add_argument("--baseline", metavar="REPORT.json",
                       help="compare each check with the same check of an earlier JSON report")
    if plugins is not None:
        plugins.hook.robaudit_addoption.call_historic(kwargs={"parser": run})
        plugins.hook.robaudit_addoption.call_historic(kwargs={"parser": merge})

    validate = sub.add_parser("validate", parents=[common], help="validate specs, run nothing")
    validate.add_argument("specs", nargs="+", metavar="SPEC")
    validate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY.PATH=VALUE")
    metrics = sub.add_parser("metrics", parents=[common],
                             help="list every metric with its params, or show one in full")
    metrics.add_argument("name", nargs="?", metavar="NAME",
                         help="show this metric's docstring and every param in full")
    metrics.add_argument("--markdown", action="store_true",
                         help="print a Markdown table (the one in README.md)")
    sub.add_parser("plugins", parents=[common], help="list the loaded plugins")
    init = sub.add_parser("init", parents=[common],
                          help="write a starter spec for your model (it is loaded and inspected)")
    init.add_argument("--model", required=True,
                      help="`module:callable`, `path/to/file.py:callable`, torchvision:NAME, "
                           "timm:NAME, huggingface:DIR, export:PATH (or a .pt2 file) or a "
                           "TorchScript file (deprecated upstream: prefer export)")
    init.add_argument("--weights", help="a state_dict or checkpoint for a factory, torchvision "
                                         "or timm model")
    init.add_argument("--data", default="digits", metavar="SOURCE",
                      help="the data source (default: digits): digits, npz, imagefolder, "
                           "torchvision, gaussian_mixture or a plugin's")
    init.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                      help="an option of the data source, e.g. path=data.npz (repeatable)")
    init.add_argument("--split", metavar="NAME",
                      help="the split to audit (default: test, else val, else validation)")
    init.add_argument("--input-range", nargs=2, type=float, default=(0.0, 1.0),
                      metavar=("LOW", "HIGH"), help="the valid input box (default 0 1)")
    init.add_argument("--name", help="the audit's name (default: from the file name)")
    init.add_argument("--out", default="robaudit.yaml", help="where to write the spec")
    init.add_argument("--measure", action="store_true",
                      help="run the checks once and set each threshold at the passing-side end "
                           "of the check's 95%% interval")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    compare = sub.add_parser("compare", parents=[common],
                             help="compare two JSON reports check by check")
    compare.add_argument("old", metavar="OLD.json")
    compare.add_argument("new", metavar="NEW.json")
    compare.add_argument("--tolerance", type=float, metavar="TOL",
                         help="a check worse than OLD by more than TOL regressed (a check's own "
                              "`expect.regression` wins)")
    compare.add_argument("--markdown", action="store_true",
                         help="print a Markdown table (for a pull-request comment)")
    compare.add_argument("--allow-removed", action="store_true",
                         help="a check of OLD missing from NEW is not a regression")
    sub.add_parser("schema", parents=[common], help="print the JSON Schema of a spec")

    zoo = sub.add_parser("zoo", parents=[common], help="the models robaudit ships")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", parser_class=_Parser)
    zoo_sub.required = True
    zoo_sub.add_parser("list", parents=[common], help="list the zoo's models and recipes")
    train = zoo_sub.add_parser("train", parents=[common], help="train a zoo model with its recipe")
    train.add_argument("name")
    train.add_argument("--out", required=True, type=Path, help="where to save the state_dict")
    train.add_argument("--seed", type=int, default=0)
    return parser


def _add_report_chars(parser: argparse.ArgumentParser) -> None:
    from robaudit.plugins.reporters._summary import DEFAULT_REPORT_CHARS, report_chars

    parser.add_argument("-r", dest="reportchars", type=report_chars,
                        default=DEFAULT_REPORT_CHARS, metavar="CHARS",
                        help="the checks of the short summary, as pytest's -r: f failed, "
                             "E error, s skipped, w warned, m measured, p passed, a all but "
                             f"passed, A all, N none (default: {DEFAULT_REPORT_CHARS})")


def _bounds(metadata: list[Any]) -> list[str]:
    """Readable bounds (``>= 1``, ``length >= 1``) from a field's constraint metadata."""
    bounds = []
    for item in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"),
                           ("min_length", "length >="), ("max_length", "length <=")):
            if getattr(item, attr, None) is not None:
                bounds.append(f"{sign} {getattr(item, attr)}")
    return bounds


def _type_name(annotation: Any) -> str:
    """A param's type as a user reads it: ``l2 | linf`` for a Literal, ``float | None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # a constrained member of a union: float > 0
        bounds = _bounds(list(args[1:]))
        for item in args[1:]:
            bounds += _bounds(list(getattr(item, "metadata", [])))
        return " ".join([_type_name(args[0]), *bounds])
    if origin is typing.Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__",
                                                           str(annotation))


def _param_rows(metric: robaudit.Metric) -> list[str]:
    rows = []
    for name, info in metric.Params.model_fields.items():
        text = (f"{name}: {_type_name(info.annotation)} "
                + ("(required)" if info.is_required() else f"= {info.default!r}"))
        bounds = _bounds(info.metadata)
        if bounds:
            text += f" ({', '.join(bounds)})"
        rows.append(text)
    return rows


def _cmd_metric(plugins: Plugins, console: Console, name: str) -> int:
    """One metric in full: its docstring, direction, source and every param."""
    import difflib
    import inspect

    metric = plugins.metrics.get(name)
    if metric is None:
        close = difflib.get_close_matches(name, list(plugins.metrics), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise UsageError(f"metrics: unknown metric {name!r}{hint} (`robaudit metrics` lists "
                         "them)")
    from robaudit.sharding import shards_samples

    better = "higher" if metric.higher_is_better else "lower"
    console.print(f"[bold]{name}[/] — {escape(metric.source)}; {better} is better")
    console.print("scale-out: " + ("per sample, its units shard across processes"
                                   if shards_samples(metric) else "runs whole on one process"))
    console.print(escape(inspect.cleandoc(type(metric).__doc__ or "")) + "\n")
    table = Table(title="params", show_lines=True)
    for column in ("param", "type", "default", "bounds", "description"):
        table.add_column(column)
    for param, info in metric.Params.model_fields.items():
        default = "(required)" if info.is_required() else repr(info.default)
        table.add_row(param, escape(_type_name(info.annotation)), escape(default),
                      escape(", ".join(_bounds(info.metadata)) or "—"),
                      escape(info.description or ""))
    console.print(table)
    return EXIT_OK


def metrics_markdown(plugins: Plugins) -> str:
    """The Markdown table of every metric, as README.md shows it."""
    lines = ["| metric | what `value` is | better | source |", "|---|---|---|---|"]
    for name, metric in sorted(plugins.metrics.items()):
        better = "higher" if metric.higher_is_better else "lower"
        summary = metric.summary.replace("|", "\\|")
        lines.append(f"| `{name}` | {summary} | {better} | {metric.source} |")
    return "\n".join(lines)


def _cmd_metrics(plugins: Plugins, console: Console, markdown: bool) -> int:
    if markdown:
        print(metrics_markdown(plugins))
        return EXIT_OK
    table = Table(title="robaudit metrics", show_lines=True)
    for column in ("metric", "better", "params (defaults, bounds)", "source"):
        table.add_column(column)
    for name, metric in sorted(plugins.metrics.items()):
        better = "higher" if metric.higher_is_better else "lower"
        table.add_row(f"[bold]{name}[/]\n{escape(metric.summary)}", better,
                      escape("\n".join(_param_rows(metric)) or "—"), escape(metric.source))
    console.print(table)
    return EXIT_OK


def _cmd_plugins(plugins: Plugins, console: Console) -> int:
    table = Table(title="robaudit plugins")
    for column in ("name", "origin", "module"):
        table.add_column(column)
    for info in plugins.loaded:
        table.add_row(info.name, escape(info.origin), info.module)
    console.print(table)
    console.print(f"metrics: {', '.join(sorted(plugins.metrics))}")
    console.print(f"data sources: {', '.join(sorted(plugins.data_sources))}")
    return EXIT_OK


def _cmd_compare(plugins: Plugins, console: Console, options: argparse.Namespace) -> int:
    from robaudit.compare import HEADER, compare_reports, failure, markdown, summary, table_rows
    from robaudit.reportfile import read_report

    if options.tolerance is not None and not options.tolerance >= 0:
        raise UsageError(f"--tolerance {options.tolerance}: expected a number >= 0")
    directions = {name: m.higher_is_better for name, m in plugins.metrics.items()}
    rows = compare_reports(read_report(options.old, "compare"),
                           read_report(options.new, "compare"), options.tolerance, directions)
    if options.markdown:
        print(markdown(rows, options.old, options.new, options.allow_removed))
    else:
        table = Table(title=f"robaudit compare {escape(options.old)} → {escape(options.new)}")
        for column in HEADER:
            table.add_column(column)
        styles = {"regressed": "red", "error": "red", "removed": "red", "worse": "yellow",
                  "better": "green", "ok": "green"}
        for row, cells in zip(rows, table_rows(rows), strict=True):
            table.add_row(*map(safe_cell, cells), style=styles.get(row.verdict))
        console.print(table)
        console.print(escape(summary(rows, options.allow_removed)))
    return EXIT_OK if failure(rows, options.allow_removed) is None else EXIT_FAILED


def _cmd_collect(session: Session, console: Console, specs: list[str]) -> int:
    """``run --collect-only``: the selected checks of each spec with resolved params and the
    model work of each where its metric states a floor (samples through forward passes,
    through forward and backward passes, and through further backward passes)."""
    total = 0
    collected = session.collect(specs)
    if collected and collected[0][0].rerun:
        console.print(escape(collected[0][0].rerun))
    for plan, floors in collected:
        total += len(plan.checks)
        deselected = f", {plan.deselected} deselected" if plan.deselected else ""
        console.print(f"[bold]{escape(printable(plan.spec.path))}[/] — "
                      f"{escape(printable(plan.spec.name))} ({len(plan.checks)} selected"
                      f"{deselected}, device {plan.device})")
        for check, floor in zip(plan.checks, floors, strict=True):
            params = json.dumps(check.params.model_dump(mode="json"))
            cost = "cost not stated"
            if floor is not None:
                cost = f"floor: {floor.describe()}"
                cost += f" ({floor.note})" if floor.note else ""
            console.print(f"  {escape(check.id)} [dim]({check.metric.name})[/] "
                          f"{escape(printable(params))}\n      [dim]{escape(cost)}[/]")
    console.print(f"[bold]collected {plural(total, 'check')}[/]")
    return EXIT_OK if total else EXIT_NO_CHECKS


def safe_cell(text: str) -> str:
    return escape(printable(text))


def _cmd_zoo(options: argparse.Namespace, console: Console) -> int:
    from robaudit import zoo

    if options.zoo_command == "list":
        table = Table(title="robaudit zoo (train with `robaudit zoo train NAME --out PATH`)")
        for column in ("name", "factory", "recipe", "description"):
            table.add_column(column)
        for name, entry in sorted(zoo.ZOO.items()):
            recipe = (f"{entry.epochs} epochs, lr {entry.lr}, batch {entry.batch_size}, "
                      f"weight decay {entry.weight_decay}")
            table.add_row(name, entry.factory, recipe, escape(entry.description))
        console.print(table)
        return EXIT_OK
    if options.name not in zoo.ZOO:
        raise UsageError(f"zoo train: unknown model {options.name!r}; "
                         f"known: {', '.join(sorted(zoo.ZOO))}")
    report = zoo.train_model(options.name, options.out, seed=options.seed)
    console.print(f"saved {options.out}: {json.dumps(report)}")
    return EXIT_OK


def _dispatch(argv: list[str], console: Console) -> int:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command not in PLUGIN_COMMANDS:  # --help, --version, zoo: no plugins needed
        options = _build_parser(None).parse_args(argv)
        return _cmd_zoo(options, console)

    from robaudit.pluginmanager import load_plugins

    blocked, extra = _prescan_plugins(argv)
    plugins = load_plugins(blocked, extra)
    parser = _build_parser(plugins)
    options = parser.parse_args(argv)
    for problem in plugins.problems:
        Console(stderr=True).print(f"[yellow]WARNING[/] {escape(printable(problem))}")
    if options.command == "metrics":
        if options.name:
            return _cmd_metric(plugins, console, options.name)
        return _cmd_metrics(plugins, console, options.markdown)
    if options.command == "plugins":
        return _cmd_plugins(plugins, console)
    if options.command == "init":
        from robaudit.init import MARGIN_RULE, write_starter

        out = write_starter(options, plugins)
        if options.measure:
            console.print(f"thresholds from the measured values: {escape(MARGIN_RULE)}")
        console.print(f"wrote {escape(str(out))}; check it with `robaudit validate {out}` and "
                      f"run it with `robaudit run {out}`")
        return EXIT_OK
    if options.command == "compare":
        return _cmd_compare(plugins, console, options)
    if options.command == "schema":
        from robaudit.spec import spec_json_schema

        print(json.dumps(spec_json_schema(plugins), indent=2))
        return EXIT_OK
    if options.command == "validate":
        return _cmd_validate(plugins, console, options)
    import torch

    from robaudit.session import Session

    if options.command == "merge":
        from robaudit.merge import merge_shards

        session = Session(plugins, options)
        plugins.hook.robaudit_configure(options=options, pluginmanager=plugins.pm)
        _, code = merge_shards(session, options.shards)
        _print_hook_failures(session)
        return code
    if options.command == "run" and not options.collect_only:
        from robaudit.runsetup import start_run

        with ExitStack() as setup:
            start_run(options, setup)  # the setup the pytest plugin makes too
            return _cmd_run(plugins, options)
    session = Session(plugins, options)
    _check_run_options(options)
    if options.threads:
        torch.set_num_threads(options.threads)  # else chosen per audited model (prepare)
    from robaudit.distributed import launched

    if launched() and os.environ.get("RANK") != "0":
        return EXIT_OK  # under a launcher, rank 0 lists the checks
    return _cmd_collect(session, console, options.specs)


def _cmd_validate(plugins: Plugins, console: Console, options: argparse.Namespace) -> int:
    """``validate``: every spec checked as ``run`` checks it (:func:`robaudit.spec.load_specs`,
    as ``Session.load``), without importing torch or the runner (issue #24)."""
    from robaudit.spec import load_specs, option_overrides

    specs = load_specs(options.specs, plugins, option_overrides(options))
    for spec in specs:
        console.print(f"{escape(printable(spec.path))}: valid ({len(spec.checks)} checks)")
    return EXIT_OK


def _check_run_options(options: argparse.Namespace) -> None:
    from robaudit.runsetup import check_options

    check_options(options)
    if options.shard is not None and getattr(options, "json_path", None) is None:
        raise UsageError(f"--shard {options.shard}: a shard writes its share into its JSON "
                         "report: give --json PATH (then `robaudit merge` the shards' reports)")


def _cmd_run(plugins: Plugins, options: argparse.Namespace) -> int:
    """``run``: alone, as one process of a torch.distributed group, or as a ``--shard``. In
    a group only rank 0 prints; a process that fails tells the others, and rank 0 says which
    and why (exit code 3)."""
    import torch

    from robaudit import lastrun
    from robaudit.distributed import PeerFailure, join
    from robaudit.session import Session

    _check_run_options(options)
    if options.threads:
        torch.set_num_threads(options.threads)  # else chosen per audited model (prepare)
    world = join(options.shard)
    if not world.reports:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process' life)
    try:
        session = Session(plugins, options, world)
        plugins.hook.robaudit_configure(options=options, pluginmanager=plugins.pm)
        results, code = session.run(options.specs)
        lastrun.record(results, options, world, session.warn)
        _print_hook_failures(session)
    except (KeyboardInterrupt, PeerFailure):
        if world.failure is None:
            world.fail("interrupted")
            raise
        code = EXIT_INTERNAL
    except BaseException as exc:
        world.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        world.close()
    if world.failure is not None:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[red]ERROR[/] {escape(printable(world.failure))}; the run stopped (the reports "
            "hold what finished before)")
        world.said()
    return code


def _print_hook_failures(session: Session) -> None:
    for failure in session.hook_failures:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[red]ERROR[/] report incomplete: {escape(printable(failure))}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robaudit`` console script; returns the exit code."""
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH  # a CI log or a pipe: tables never cut a name short
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv), console)
    except SpecError as exc:
        errors.print(f"[red]ERROR[/] invalid spec ({len(exc.problems)} problem"
                     f"{'s' if len(exc.problems) != 1 else ''}):")
        for problem in exc.problems:
            errors.print(f"  {escape(printable(problem))}")
        return EXIT_USAGE
    except UsageError as exc:
        errors.print(f"[red]ERROR[/] {escape(printable(exc))}")
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        from robaudit.guard import Terminated

        said = exc.reason.capitalize() if isinstance(exc, Terminated) else "Interrupted"
        errors.print(f"[red]{said}[/]")
        return EXIT_INTERRUPTED
    except Exception:
        errors.print("[red]INTERNAL ERROR[/] in robaudit itself; please report it with this "
                     "traceback:")
        errors.print(escape(traceback.format_exc()))
        return EXIT_INTERNAL


