"""Issue #7: property-based fuzzing of the shipped specs. Each mutant (a value replaced by one of
another type, out of bounds or non-finite; a key deleted, added or renamed; structure changed)
either validates or exits 4 with a message that names the spec file, and never a traceback."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robaudit.cli import main

SPECS = Path(__file__).parent.parent / "specs"
SHIPPED = sorted(SPECS.glob("*.yaml"))

ODD_VALUES = [None, True, False, "x", "", -1, 0, 1, 2**70, -(2**70), 1e308, -1e-308,
              math.nan, math.inf, -math.inf, [], {}, [1, "a"], {"k": "v"}, "∞", "\x1b[31m",
              [[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]], 0.5, "1e-4"]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a YAML document."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


def mutate(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> None:
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "add_key" and isinstance(parent[last], dict):
        parent[last]["unexpected_key"] = value
    elif op == "rename" and isinstance(parent, dict):
        parent[f"{last}x"] = parent.pop(last)
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "unwrap" and isinstance(parent[last], (list, dict)) and parent[last]:
        inner = parent[last]
        parent[last] = inner[0] if isinstance(inner, list) else next(iter(inner.values()))


def validate(text: str, folder: Path) -> tuple[int, str, Path]:
    spec = folder / "mutant.yaml"
    spec.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(spec)])
    return code, out.getvalue() + err.getvalue(), spec


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        path = Path(name)
        (path / "models").symlink_to(SPECS / "models")
        yield path


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_spec_validates(shipped, folder):
    code, output, _ = validate(shipped.read_text(), folder)
    assert code == 0, output


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutants_validate_or_exit_4_located(shipped, folder, data):
    doc = yaml.safe_load(shipped.read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        candidates = paths(doc)
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates), label="path")
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "add_key", "rename",
                                        "wrap", "unwrap"]), label="op")
        # a copy: a later mutation of the document must not change ODD_VALUES' own lists and
        # dicts (hypothesis then sees its strategy change between examples)
        value = copy.deepcopy(data.draw(st.sampled_from(ODD_VALUES), label="value"))
        mutate(doc, path, op, value)
    code, output, spec = validate(yaml.safe_dump(doc, allow_unicode=True), folder)
    assert code in (0, 4), output
    assert "Traceback" not in output and "INTERNAL ERROR" not in output, output
    if code == 4:
        assert str(spec) in output or "--set" in output, output
