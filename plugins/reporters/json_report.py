"""The JSON report (``--json PATH``): design.md §5, key for key and in that order (the
``outcome`` of an interrupted run is ``interrupted``, design §5 and §10), then its
extensions: ``interrupted`` (whether the run was cut short; ``stopped`` says why when it was not
Ctrl-C, e.g. another process of a torchrun group failed), ``model`` (the factory or
TorchScript path, the weights and their sha256, the parameter count) and ``data`` (the source,
the split names and sizes used, the reference subset included, and a sha256 ``fingerprint`` of
the audited tensors); ``summary`` counts ``warned`` and ``measured`` (design §10) too. A
``--shard I/N`` run adds ``shard``: its share of each check, exactly encoded
(:mod:`robaudit.wire`), for ``robaudit merge``.

One spec writes its object to ``PATH``. Several specs in one run write one object per spec,
to ``PATH`` with the spec file's stem inserted before the suffix: ``--json r.json`` with
``specs/resnet.yaml`` and ``specs/mlp.yaml`` writes ``r.resnet.json`` and ``r.mlp.json``. Two
specs with the same stem get ``-2``, ``-3``, … after the stem (``r.resnet-2.json``), in the
order the specs were given.

Values are strict JSON: NaN and ±inf become ``null``, numpy and torch scalars and arrays become
numbers and lists, tuples become lists. An interrupted run writes the checks that finished.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import robaudit
from robaudit import hookimpl
from robaudit.errors import UsageError
from robaudit.reportpath import ensure_writable, write_atomic
from robaudit.results import AuditResult, CheckResult, jsonable

#: Per-sample values are written up to this many per check (design §5).
MAX_SAMPLES = 100_000


def check_json(check: CheckResult) -> dict[str, Any]:
    """One entry of the report's ``checks`` list: design §5's keys, then ``severity``, the
    per-sample ``samples`` (for a later ``--baseline`` run; left out above
    :data:`MAX_SAMPLES`) and, with ``--baseline``, ``baseline`` (its value, the delta and the
    delta's paired interval, and notes on what differs)."""
    entry = {
        "id": check.id,
        "metric": check.metric,
        "outcome": check.outcome,
        "value": jsonable(check.value),
        "ci": None if check.ci is None else jsonable(list(check.ci)),
        "expect": jsonable(check.expect),
        "params": jsonable(check.params),
        "details": jsonable(check.details),
        "message": check.message,
        "duration_s": jsonable(check.duration_s),
        "severity": check.severity,
    }
    if check.samples is not None and len(check.samples) <= MAX_SAMPLES:
        entry["samples"] = jsonable(list(check.samples))
    if check.baseline is not None:
        entry["baseline"] = jsonable(check.baseline)
    return entry


def audit_json(result: AuditResult) -> dict[str, Any]:
    """The report object of one spec (design.md §5)."""
    return {
        "robaudit": robaudit.__version__,
        "audit": result.audit,
        "spec": result.spec,
        "outcome": "interrupted" if result.interrupted else result.outcome,
        "summary": result.summary(),
        "duration_s": jsonable(result.duration_s),
        "seed": result.seed,
        "device": result.device,
        "environment": jsonable(result.environment),
        "interrupted": result.interrupted,
        **({"stopped": result.stopped} if result.stopped else {}),
        "model": jsonable(result.model),
        "data": jsonable(result.data),
        "checks": [check_json(c) for c in result.checks],
        **({"shard": result.shard} if result.shard is not None else {}),
    }


def report_paths(path: Path, results: list[AuditResult]) -> list[Path]:
    """Where each spec's report goes (see the module docstring)."""
    if len(results) == 1:
        return [path]
    paths: list[Path] = []
    used: set[str] = set()
    for result in results:
        stem = name = Path(result.spec).stem
        count = 1
        while name in used:
            count += 1
            name = f"{stem}-{count}"
        used.add(name)
        paths.append(path.with_name(f"{path.stem}.{name}{path.suffix}"))
    return paths


def write_json(path: Path, results: list[AuditResult]) -> list[Path]:
    """Write the report(s); returns the paths written."""
    written = report_paths(path, results)
    for target, result in zip(written, results, strict=True):
        text = json.dumps(audit_json(result), indent=2, ensure_ascii=False, allow_nan=False)
        write_atomic(target, text + "\n")
    return written


@hookimpl
def robaudit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", dest="json_path", type=Path, default=None, metavar="PATH",
                        help="write the JSON report to PATH (several specs: PATH with each "
                             "spec's stem before the suffix)")


@hookimpl
def robaudit_configure(options: argparse.Namespace, pluginmanager: object) -> None:
    if getattr(options, "json_path", None):
        ensure_writable("--json", options.json_path)


@hookimpl
def robaudit_report(results: list[AuditResult], options: argparse.Namespace) -> None:
    path = getattr(options, "json_path", None)
    if path is not None and results:
        try:
            write_json(Path(path), results)
        except OSError as exc:
            raise UsageError(f"--json {path}: cannot write the report: {exc}") from None
