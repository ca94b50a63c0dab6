"""Issue #19, the gate's side doors in what robaudit reads back (design §4, §8, §10): a NaN
baseline, a comparison with holes, a report with the wrong types, and shards that contradict
each other or their plan are errors, never passes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FIXTURES, TOY_HEADER

from robaudit.baseline import NotComparable, compare_values
from robaudit.cli import main
from robaudit.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from robaudit.wire import decode, encode

Main = Callable[..., tuple[int, str, str]]
Report = dict[str, Any]

SPEC = TOY_HEADER + """\
  batch_size: 8
checks:
  - id: acc
    metric: clean_accuracy
    expect: {min: 0.0}
  - id: df
    metric: deepfool_min_distortion
    expect: {min: 0.0}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy spec (64 test samples, units of 8) run once (one.json) and as two shards
    (s0.json, s1.json), and the shards of a ``-k acc`` run (k0.json, k1.json)."""
    out = tmp_path_factory.mktemp("doors")
    (out / "toy.yaml").write_text(SPEC)
    (out / "toy_model.py").write_text((FIXTURES / "toy_model.py").read_text())
    spec = str(out / "toy.yaml")
    assert main(["run", spec, "--json", str(out / "one.json"), "-q", "-p", "toy_plugin"]) == 0
    for index in (0, 1):
        for name, extra in ((f"s{index}", []), (f"k{index}", ["-k", "acc"])):
            code = main(["run", spec, "--shard", f"{index}/2", *extra, "--json",
                         str(out / f"{name}.json"), "-q", "-p", "toy_plugin"])
            assert code == EXIT_OK
    return out


def edit(source: Path, target: Path, change: Callable[[Report], Any]) -> Path:
    """``source``'s report changed by ``change`` (JSON, NaN written as the literal NaN)."""
    report = json.loads(source.read_text())
    change(report)
    target.write_text(json.dumps(report))
    return target


def check(report: Report, check_id: str) -> Report:
    return next(c for c in report["checks"] if c["id"] == check_id)


# -- --baseline ------------------------------------------------------------------------------

def gate_on(runs: Path, baseline: Path, robaudit_main: Main, out: Path) -> tuple[int, Report]:
    """``run -k acc`` with ``regression: 0.05`` against ``baseline``: the exit code and the
    acc check of the JSON report."""
    code, _, err = robaudit_main("run", runs / "toy.yaml", "-k", "acc", "--set",
                                 "checks.0.expect.regression=0.05", "--baseline", baseline,
                                 "--json", out)
    assert "Traceback" not in err
    return code, check(json.loads(out.read_text()), "acc")


def test_the_baseline_gate_passes_an_unchanged_run(runs: Path, robaudit_main: Main,
                                                   tmp_path: Path) -> None:
    code, acc = gate_on(runs, runs / "one.json", robaudit_main, tmp_path / "r.json")
    assert code == EXIT_OK and acc["outcome"] == "passed"
    assert acc["baseline"]["delta"] == 0 and acc["baseline"]["paired"] is True


def test_a_nan_baseline_value_is_an_error_not_a_pass(runs: Path, robaudit_main: Main,
                                                     tmp_path: Path) -> None:
    def nan_value(report: Report) -> None:
        check(report, "acc")["value"] = float("nan")
        del check(report, "acc")["samples"]  # unpaired: the difference of the values

    baseline = edit(runs / "one.json", tmp_path / "nan.json", nan_value)
    assert "NaN" in baseline.read_text()
    code, acc = gate_on(runs, baseline, robaudit_main, tmp_path / "r.json")
    assert code == EXIT_FAILED and acc["outcome"] == "error"
    assert "not finite" in acc["message"] and str(baseline) in acc["message"]


def test_all_nan_baseline_samples_are_an_error_not_a_pass(runs: Path, robaudit_main: Main,
                                                          tmp_path: Path) -> None:
    def nan_samples(report: Report) -> None:
        acc = check(report, "acc")
        acc["samples"] = [None] * len(acc["samples"])  # how a report writes NaN

    baseline = edit(runs / "one.json", tmp_path / "nan.json", nan_samples)
    code, acc = gate_on(runs, baseline, robaudit_main, tmp_path / "r.json")
    assert code == EXIT_FAILED and acc["outcome"] == "error"
    assert "0 of 64 per-sample differences are finite" in acc["message"]


def test_the_paired_difference_leaves_out_pairs_with_a_missing_value() -> None:
    """By hand: the finite pairs are (1→2) and (2→2): mean difference 0.5."""
    delta = compare_values(2.0, [1.0, 2.0, math.nan, 4.0], 2.5, [2.0, 2.0, 5.0, math.nan],
                           True, same_data=True, seed=0, check_id="c")
    assert delta.paired and delta.pairs == 2 and delta.delta == 0.5 and delta.worse == -0.5
    with pytest.raises(NotComparable, match="1 of 4 per-sample differences"):
        compare_values(2.0, [1.0, math.nan, math.nan, 4.0], 2.5, [2.0, 2.0, 5.0, math.nan],
                       True, same_data=True, seed=0, check_id="c")
    with pytest.raises(NotComparable, match="the old value is not finite"):
        compare_values(math.inf, None, 1.0, None, True, same_data=False, seed=0, check_id="c")


# -- compare ---------------------------------------------------------------------------------

def compare(robaudit_main: Main, old: Path, new: Path, *options: str) -> tuple[int, str, str]:
    """``compare --tolerance 0.1``, in the console and in Markdown: the exit code (the same
    for both) and both outputs, whitespace collapsed."""
    code, out, err = robaudit_main("compare", old, new, "--tolerance", "0.1", *options)
    code_md, markdown, _ = robaudit_main("compare", old, new, "--tolerance", "0.1",
                                         "--markdown", *options)
    assert code == code_md and "Traceback" not in err
    return code, " ".join(out.split()), " ".join(markdown.split())


def test_compare_passes_an_unchanged_report(runs: Path, robaudit_main: Main) -> None:
    code, out, markdown = compare(robaudit_main, runs / "one.json", runs / "one.json")
    assert code == EXIT_OK
    assert "2 ok: passed" in out and "2 ok: passed" in markdown


@pytest.mark.parametrize("side", ["old", "new"])
def test_compare_fails_a_gated_check_with_a_nan_value(runs: Path, robaudit_main: Main,
                                                      tmp_path: Path, side: str) -> None:
    nan = edit(runs / "one.json", tmp_path / "nan.json",
               lambda r: check(r, "acc").update(value=float("nan")))
    old, new = (nan, runs / "one.json") if side == "old" else (runs / "one.json", nan)
    code, out, markdown = compare(robaudit_main, old, new)
    assert code == EXIT_FAILED
    assert f"| error (the {side} value is not finite (nan)) |" in markdown
    for text in (out, markdown):  # the same word for the state in both
        assert "error" in text and "1 error, 1 ok: FAILED" in text


def test_compare_fails_when_every_new_check_errored(runs: Path, robaudit_main: Main,
                                                    tmp_path: Path) -> None:
    def errored(report: Report) -> None:
        for entry in report["checks"]:
            entry.update(outcome="error", value=None, ci=None, message="model exploded")

    new = edit(runs / "one.json", tmp_path / "new.json", errored)
    code, markdown, _ = robaudit_main("compare", runs / "one.json", new, "--markdown")
    assert code == EXIT_FAILED  # no tolerance given: nothing is gated, yet nothing passed
    assert "| error (the new run errored: model exploded) |" in markdown
    assert "2 error: FAILED" in markdown


def test_a_removed_check_is_a_regression_unless_allowed(runs: Path, robaudit_main: Main,
                                                        tmp_path: Path) -> None:
    fewer = edit(runs / "one.json", tmp_path / "fewer.json",
                 lambda r: r.update(checks=[check(r, "acc")]))
    code, out, markdown = compare(robaudit_main, runs / "one.json", fewer)
    assert code == EXIT_FAILED
    assert "| removed (not in the new report) |" in markdown
    for text in (out, markdown):  # the same words in both
        assert "removed" in text
        assert "1 removed, 1 ok: FAILED (1 of 2 checks regressed, error or removed)" in text
    code, out, markdown = compare(robaudit_main, runs / "one.json", fewer, "--allow-removed")
    assert code == EXIT_OK
    assert "1 removed, 1 ok (removed allowed): passed" in out
    assert "1 removed, 1 ok (removed allowed): passed" in markdown


def test_a_new_report_without_checks_fails_even_with_allow_removed(
        runs: Path, robaudit_main: Main, tmp_path: Path) -> None:
    empty = edit(runs / "one.json", tmp_path / "empty.json", lambda r: r.update(checks=[]))
    for options in ((), ("--allow-removed",)):
        code, out, markdown = compare(robaudit_main, runs / "one.json", empty, *options)
        assert code == EXIT_FAILED, options
        assert "2 removed" in out and "the new report has no checks" in markdown


def test_a_gated_check_of_unknown_direction_is_an_error(runs: Path, robaudit_main: Main,
                                                       tmp_path: Path) -> None:
    """A metric that is not installed and a check with both bounds: which way is worse is
    unknown, so a tolerance cannot be judged (without one the row only says what changed)."""
    def foreign(report: Report) -> None:
        check(report, "acc").update(metric="not_installed", expect={"min": 0, "max": 1})

    old = edit(runs / "one.json", tmp_path / "old.json", foreign)
    code, _, markdown = compare(robaudit_main, old, old)
    assert code == EXIT_FAILED and "| error (direction unknown" in markdown
    code, markdown, _ = robaudit_main("compare", old, old, "--markdown")
    assert code == EXIT_OK and "| same (direction unknown) |" in markdown


# -- the one reader: type errors are usage errors --------------------------------------------

def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


#: an edit of a report, and the key that the error must name
BAD: dict[str, tuple[Callable[[Report], Any], str]] = {
    "a check without id": (lambda r: r["checks"][0].pop("id"), "`checks[0].id`: missing"),
    "a check without metric": (lambda r: r["checks"][1].pop("metric"),
                               "`checks[1].metric`: missing"),
    "a check that is a string": (lambda r: r["checks"].__setitem__(0, "acc"),
                                 "`checks[0]`: expected a check object, found str"),
    "a string seed": (lambda r: r.update(seed="abc"), "`seed`: expected an integer"),
    "string samples": (lambda r: r["checks"][0].update(samples=["0.5"] * 64),
                       "`checks[0].samples`: expected a list of numbers"),
    "a boolean value": (lambda r: r["checks"][0].update(value=True),
                        "`checks[0].value`: expected a number or null"),
    "a check id twice": (lambda r: r["checks"][1].update(id=r["checks"][0]["id"]),
                         "`checks[1].id`: check 'acc' appears twice"),
    "deep nesting": (lambda r: r["checks"][0].update(details={"x": _nested(300)}),
                     "`checks[0].details.x[0]"),
}


@pytest.mark.parametrize("reader", ["--baseline", "compare", "merge"])
@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_report_with_wrong_types_is_a_usage_error(runs: Path, robaudit_main: Main,
                                                    tmp_path: Path, reader: str,
                                                    bad: str) -> None:
    change, key = BAD[bad]
    source = runs / ("s0.json" if reader == "merge" else "one.json")
    broken = edit(source, tmp_path / "broken.json", change)
    if reader == "--baseline":
        code, _, err = robaudit_main("run", runs / "toy.yaml", "--baseline", broken)
    elif reader == "compare":
        code, _, err = robaudit_main("compare", runs / "one.json", broken)
    else:
        code, _, err = robaudit_main("merge", broken, runs / "s1.json")
    assert code == EXIT_USAGE, err
    assert f"{reader} {broken}: {key}" in err and "Traceback" not in err


def test_json_nested_beyond_the_parser_is_a_usage_error(runs: Path, robaudit_main: Main,
                                                        tmp_path: Path) -> None:
    broken = tmp_path / "deep.json"
    broken.write_text('{"checks": [' + "[" * 100_000 + "]" * 100_000 + "]}")
    for args in (("compare", runs / "one.json", broken), ("merge", broken),
                 ("run", runs / "toy.yaml", "--baseline", broken)):
        code, _, err = robaudit_main(*args)
        assert code == EXIT_USAGE and f"{broken}: nested too deeply" in err, args
        assert "Traceback" not in err


# -- merge -----------------------------------------------------------------------------------

def merge(robaudit_main: Main, tmp_path: Path, *shards: Path) -> tuple[int, str, Report]:
    code, _, err = robaudit_main("merge", *shards, "--json", tmp_path / "merged.json")
    assert "Traceback" not in err
    merged = json.loads((tmp_path / "merged.json").read_text()) if code in (0, 1) else {}
    return code, err, merged


def share_units(report: Report, check_id: str) -> list[list[Any]]:
    return report["shard"]["shares"][check_id]["units"]


def test_shards_merge_to_the_one_process_report(runs: Path, robaudit_main: Main,
                                                tmp_path: Path) -> None:
    """The control of the tests below: untouched shards pass, as one process does."""
    code, _, merged = merge(robaudit_main, tmp_path, runs / "s0.json", runs / "s1.json")
    one = json.loads((runs / "one.json").read_text())
    assert code == EXIT_OK
    for check_id in ("acc", "df"):
        assert check(merged, check_id)["value"] == check(one, check_id)["value"]
    assert check(merged, "df")["details"]["success_rate"] == 1.0


def test_a_nan_at_a_converged_sample_makes_the_check_error(runs: Path, robaudit_main: Main,
                                                           tmp_path: Path) -> None:
    """Half of unit 0's ρ made NaN while its ``converged`` flags still say True: a nanmean
    over the rest would pass with ``success_rate: 1.0``."""
    def hole(report: Report) -> None:
        unit = share_units(report, "df")[0][1]
        arrays = decode(unit["arrays"])
        assert arrays["converged"].all()
        arrays["rho"][:4] = np.nan
        unit["arrays"] = encode(arrays)

    edited = edit(runs / "s0.json", tmp_path / "s0.json", hole)
    code, _, merged = merge(robaudit_main, tmp_path, edited, runs / "s1.json")
    assert code == EXIT_FAILED
    df = check(merged, "df")
    assert df["outcome"] == "error" and df["value"] is None
    assert df["message"] == (f"{edited}: unit 0: `rho` is NaN at 4 samples that its own "
                             "`converged` flag marks converged")
    assert check(merged, "acc")["outcome"] == "passed"


def test_a_unit_outside_the_shards_part_makes_the_check_error(runs: Path, robaudit_main: Main,
                                                              tmp_path: Path) -> None:
    """Unit 1 is shard 1's (units k ≡ 1 mod 2): moved to shard 0, the merge sees every unit
    once, yet not as planned."""
    moved = share_units(json.loads((runs / "s1.json").read_text()), "acc")[0]
    assert moved[0] == 1
    s0 = edit(runs / "s0.json", tmp_path / "s0.json",
              lambda r: share_units(r, "acc").append(moved))
    s1 = edit(runs / "s1.json", tmp_path / "s1.json", lambda r: share_units(r, "acc").pop(0))
    code, _, merged = merge(robaudit_main, tmp_path, s0, s1)
    assert code == EXIT_FAILED
    assert check(merged, "acc")["message"].startswith(
        f"{s0}: unit 1 is not shard 0/2's part of the plan")


def test_shards_run_with_k_merge(runs: Path, robaudit_main: Main, tmp_path: Path) -> None:
    code, _, merged = merge(robaudit_main, tmp_path, runs / "k0.json", runs / "k1.json")
    assert code == EXIT_OK and [c["id"] for c in merged["checks"]] == ["acc"]


def _drop_df(report: Report) -> None:
    """What an edit that hides the df check from the merge changes."""
    report["shard"]["selected"].remove("df")
    del report["shard"]["shares"]["df"]
    report["checks"] = [check(report, "acc")]


@pytest.mark.parametrize("edited", ["both", "one"])
def test_a_shard_whose_selected_checks_were_edited_is_refused(
        runs: Path, robaudit_main: Main, tmp_path: Path, edited: str) -> None:
    s0 = edit(runs / "s0.json", tmp_path / "s0.json", _drop_df)
    s1 = (edit(runs / "s1.json", tmp_path / "s1.json", _drop_df) if edited == "both"
          else runs / "s1.json")
    code, err, _ = merge(robaudit_main, tmp_path, s0, s1)
    assert code == EXIT_USAGE
    if edited == "both":
        assert (f"merge {s0}: its `selected` checks ['acc'] are not what "
                f"{runs / 'toy.yaml'} selects with (every check): ['acc', 'df']") in err
    else:
        assert f"{s0} and {s1}" in err and "`selected` differs" in err


@pytest.mark.parametrize(("what", "change", "key"), [
    ("selection", lambda r: r["shard"]["selection"].update(keyword="acc"), "`selected`"),
    ("selected only", lambda r: r["shard"]["selected"].remove("df"), "its shares"),
    ("top-level seed", lambda r: r.update(seed=7), "its `seed` (7)"),
    ("recorded seed", lambda r: (r.update(seed=7), r["shard"].update(seed=7)), "its seed 7"),
    ("fingerprint", lambda r: r["data"].update(fingerprint="0" * 64), "`data.fingerprint`"),
    ("model", lambda r: r["model"].update(parameters=35), "its `model`"),
    ("shard name", lambda r: r["environment"].update(shard="1/2"), "`environment.shard`"),
])
def test_a_shard_that_contradicts_its_plan_is_refused(
        runs: Path, robaudit_main: Main, tmp_path: Path, what: str,
        change: Callable[[Report], Any], key: str) -> None:
    """Every shard edited alike (so that they agree with each other): merge checks each
    against its own record and the spec."""
    shards = [edit(runs / f"s{i}.json", tmp_path / f"s{i}.json", change) for i in (0, 1)]
    code, err, _ = merge(robaudit_main, tmp_path, *shards)
    assert code == EXIT_USAGE, what
    assert f"merge {shards[0]}: " in err and key in err, err
