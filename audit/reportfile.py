"""Reading a JSON report back (design §4 ``--baseline``, ``compare``, ``merge``; §9): the one
reader of every report that robaudit takes as input.

A report read back is data from elsewhere, hand-edited perhaps: its keys are checked for the
types that the readers use before any of them looks inside, and a report that does not fit is
a usage error (exit 4) naming the file and the key, never a traceback. The checks are of shape
only; what the values mean (a NaN baseline, shards that contradict each other) is judged by
the code that uses them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robaudit.errors import UsageError

#: The deepest nesting of lists and objects that a report may have (robaudit writes < 30).
MAX_DEPTH = 100

Rule = Callable[[Any], bool]


def is_number(value: Any) -> bool:
    """An int or a float (NaN and ±inf included: their meaning is judged by the user of the
    value); never a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_sample(value: Any) -> bool:
    """A per-sample value: a number, or null (a sample that has no value)."""
    return value is None or is_number(value)


def optional(rule: Rule) -> Rule:
    return lambda value: value is None or rule(value)


def _found(value: Any) -> str:
    text = json.dumps(value)[:40] if not isinstance(value, float) else repr(value)
    return f"{type(value).__name__} {text}" if value is not None else "null"


class Reader:
    """Checks on one report file; every failure is a :class:`UsageError` that says who read
    it (``what``), the file, the key and what was expected."""

    def __init__(self, what: str, path: Path) -> None:
        self.what, self.path = what, path

    def fail(self, key: str, message: str) -> UsageError:
        return UsageError(f"{self.what} {self.path}: `{key}`: {message}")

    def need(self, data: dict[str, Any], key: str, where: str, rule: Rule, expected: str,
             required: bool = False) -> Any:
        """``data[key]`` when it fits ``rule`` (absent: None, or an error when ``required``)."""
        name = f"{where}.{key}" if where else key
        if key not in data:
            if required:
                raise self.fail(name, f"missing; expected {expected}")
            return None
        value = data[key]
        if not rule(value):
            raise self.fail(name, f"expected {expected}, found {_found(value)}")
        return value


def _depth_problem(value: Any) -> str | None:
    """The key path of the first place nested deeper than :data:`MAX_DEPTH`, if any."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            return where or "(top)"
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            name = f"{where}[{key}]" if isinstance(item, list) else (
                f"{where}.{key}" if where else str(key))
            stack.append((child, depth + 1, name))
    return None


def load_json(path: Path, what: str) -> Any:
    """The JSON value in ``path``, nested at most :data:`MAX_DEPTH` deep."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: file not found") from None
    except RecursionError:
        raise UsageError(f"{what} {path}: nested too deeply to be a robaudit report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} {path}: not a readable JSON report: {exc}") from None
    where = _depth_problem(data)
    if where is not None:
        raise UsageError(f"{what} {path}: `{where}`: nested deeper than {MAX_DEPTH} levels; "
                         "not a robaudit report")
    return data


def read_report(path: str | Path, what: str) -> dict[str, Any]:
    """A robaudit JSON report whose keys have the types that ``--baseline``, ``compare`` and
    ``merge`` use: ``robaudit``, ``spec``, ``device`` strings; ``seed`` an integer; ``data``,
    ``model``, ``environment`` objects (``data.fingerprint`` a string); ``interrupted`` a
    boolean; ``checks`` a list of objects, each with a unique string ``id``, a string
    ``metric``, a number or null ``value``, per-sample ``samples`` (numbers or nulls), and
    ``expect`` and ``params`` objects (``expect.regression`` a number, ``expect.by`` a
    string). Absent optional keys are left absent. ``what`` names the reader in errors."""
    path = Path(path)
    report = load_json(path, what)
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
        raise UsageError(f"{what} {path}: not a robaudit JSON report (no `checks` list)")
    reader = Reader(what, path)
    for key in ("robaudit", "spec", "device"):
        reader.need(report, key, "", optional(lambda v: isinstance(v, str)), "a string")
    reader.need(report, "seed", "", optional(is_int), "an integer")
    reader.need(report, "interrupted", "", optional(lambda v: isinstance(v, bool)), "a boolean")
    reader.need(report, "duration_s", "", optional(is_number), "a number")
    for key in ("data", "model", "environment"):
        reader.need(report, key, "", optional(lambda v: isinstance(v, dict)), "an object")
    if isinstance(report.get("data"), dict):
        reader.need(report["data"], "fingerprint", "data",
                    optional(lambda v: isinstance(v, str)), "a string")
    seen: set[str] = set()
    for index, check in enumerate(report["checks"]):
        where = f"checks[{index}]"
        if not isinstance(check, dict):
            raise reader.fail(where, f"expected a check object, found {_found(check)}")
        check_id = reader.need(check, "id", where, lambda v: isinstance(v, str) and v != "",
                               "a non-empty string", required=True)
        if check_id in seen:
            raise reader.fail(f"{where}.id", f"check {check_id!r} appears twice")
        seen.add(check_id)
        reader.need(check, "metric", where, lambda v: isinstance(v, str), "a string",
                    required=True)
        reader.need(check, "value", where, optional(is_number), "a number or null")
        reader.need(check, "samples", where,
                    optional(lambda v: isinstance(v, list) and all(map(is_sample, v))),
                    "a list of numbers (or nulls)")
        for key in ("outcome", "message"):
            reader.need(check, key, where, optional(lambda v: isinstance(v, str)), "a string")
        for key in ("expect", "params", "details"):
            reader.need(check, key, where, optional(lambda v: isinstance(v, dict)), "an object")
        expect = check.get("expect") or {}
        reader.need(expect, "regression", f"{where}.expect",
                    optional(lambda v: is_number(v) and math.isfinite(v) and v >= 0),
                    "a finite number >= 0")
        reader.need(expect, "by", f"{where}.expect", optional(lambda v: v in ("value", "ci")),
                    "`value` or `ci`")
    return report


def read_shard_report(path: str | Path) -> dict[str, Any]:
    """A ``--shard I/N`` report (:func:`read_report` for ``merge``) whose ``shard`` record
    has the types that ``merge`` uses (:func:`robaudit.sharding.shard_record`)."""
    report = read_report(path, "merge")
    shard = report.get("shard")
    if not isinstance(shard, dict):
        raise UsageError(f"merge {path}: not a shard report (run the spec with --shard I/N "
                         "--json PATH to write one)")
    reader = Reader("merge", Path(path))
    strings = lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)  # noqa: E731
    count = reader.need(shard, "count", "shard", lambda v: is_int(v) and v >= 1,
                        "an integer >= 1", required=True)
    reader.need(shard, "index", "shard", lambda v: is_int(v) and 0 <= v < count,
                f"an integer from 0 to {count - 1}", required=True)
    for key in ("robaudit", "spec_sha256"):
        reader.need(shard, key, "shard", lambda v: isinstance(v, str), "a string", required=True)
    reader.need(shard, "seed", "shard", is_int, "an integer", required=True)
    reader.need(shard, "overrides", "shard", strings, "a list of strings", required=True)
    selected = reader.need(shard, "selected", "shard", strings, "a list of check ids",
                           required=True)
    if len(set(selected)) != len(selected):
        raise reader.fail("shard.selected", "a check id appears twice")
    reader.need(shard, "selection", "shard",
                lambda v: isinstance(v, dict) and set(v) == {"keyword", "markexpr"}
                and all(s is None or isinstance(s, str) for s in v.values()),
                "an object with `keyword` and `markexpr` (strings or null)", required=True)
    reader.need(shard, "data_fingerprint", "shard", optional(lambda v: isinstance(v, str)),
                "a string or null", required=True)
    reader.need(shard, "model", "shard", lambda v: isinstance(v, dict), "an object",
                required=True)
    reader.need(shard, "blocked", "shard",
                lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
                "an object of check ids and reasons", required=True)
    reader.need(shard, "shares", "shard",
                lambda v: isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()),
                "an object of check ids and shares", required=True)
    return report
