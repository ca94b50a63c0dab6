"""Issue #19 (the run's own edges) and #20 (the interrupted outcome): a model that raises on
the audit split, a metric that returns a bare float, SIGTERM and SIGHUP: the affected checks are
``error`` or the run is ``interrupted``, the reports are written, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FIXTURES, ROOT, TOY_HEADER
from toy_plugin import Constant

from robaudit.context import KeepAlive
from robaudit.errors import EXIT_FAILED, EXIT_INTERRUPTED
from robaudit.guard import Terminated, shielded
from robaudit.metric import MetricResult
from robaudit.sharding import Inbox, Share


def checks(*lines: str) -> str:
    return TOY_HEADER + "checks:\n" + "".join(f"  - {line}\n" for line in lines)


def test_a_metric_that_returns_a_bare_float_is_that_checks_error(write_spec, robaudit_main,
                                                                 tmp_path):
    spec = write_spec(checks("{id: before, metric: constant, expect: {min: 0.1}}",
                             "{id: bare, metric: bare_float}",
                             "{id: after, metric: constant, expect: {min: 0.1}}"))
    code, out, err = robaudit_main("run", spec, "--json", tmp_path / "r.json")
    assert code == EXIT_FAILED, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    outcomes = {c["id"]: (c["outcome"], c["message"]) for c in report["checks"]}
    assert outcomes["before"][0] == outcomes["after"][0] == "passed"
    assert outcomes["bare"] == ("error", "bare_float returned float (0.5), not a MetricResult")
    assert "Traceback" not in out + err


def test_a_model_that_raises_on_the_split_errors_the_checks_that_read_it(write_spec,
                                                                         robaudit_main,
                                                                         tmp_path):
    """The model answers the one-sample fit check but raises on a batch of the split (as
    running out of memory would): the checks that use its outputs are ``error`` with the
    reason, a check that reads only the weights runs, the reports are written, exit 1."""
    spec = write_spec(checks("{id: accuracy, metric: clean_accuracy}",
                             "{id: weights, metric: parameter_count, expect: {min: 1}}").replace(
        "toy_model.py:linear", "toy_model.py:small_batches"))
    code, out, err = robaudit_main("run", spec, "--json", tmp_path / "r.json")
    assert code == EXIT_FAILED, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    outcomes = {c["id"]: (c["outcome"], c["message"]) for c in report["checks"]}
    assert outcomes["weights"][0] == "passed"
    assert outcomes["accuracy"] == (
        "error", "the model raised on the audit split (batch_size 256): RuntimeError: out of "
                 "memory on a batch of 64")
    assert "Traceback" not in out + err and "INTERNAL ERROR" not in err


def _spawn(spec: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "robaudit", "run", str(spec), "-p", "toy_plugin", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.mark.parametrize("sig, says", [(signal.SIGTERM, "terminated (SIGTERM)"),
                                       (signal.SIGHUP, "hangup (SIGHUP)")])
def test_a_terminated_run_is_interrupted_and_says_by_what(write_spec, tmp_path, sig, says):
    """SIGTERM (a cancelled CI job) and SIGHUP (a closed terminal): exit 2, the JSON's
    top-level outcome ``interrupted`` (not the ``passed`` of the check that finished), the
    signal named on the console and in ``stopped``."""
    marker = tmp_path / "started"
    spec = write_spec(checks("{id: quick, metric: constant, expect: {min: 0.1}}",
                             f"{{id: slow, metric: wait, params: {{seconds: 60, marker: "
                             f"'{marker}'}}}}"))
    report = tmp_path / "r.json"
    proc = _spawn(spec, "--json", str(report))
    limit = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < limit:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, out + err
    assert "Traceback" not in err
    assert f"!!! {says}: the run stopped !!!" in out
    assert "KeyboardInterrupt" not in out
    data = json.loads(report.read_text())
    assert data["outcome"] == "interrupted" and data["interrupted"] is True
    assert data["stopped"] == says
    assert [c["id"] for c in data["checks"]] == ["quick"]
    assert data["summary"]["passed"] == 1


def test_a_hangup_while_reports_are_written_waits_for_them():
    with pytest.raises(Terminated, match="SIGHUP"), shielded():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)


SLOW_UNIT = '''
"""A sample metric whose single unit blocks for ``pause`` seconds without advancing."""
import time
from typing import ClassVar

import numpy as np

from robaudit import MetricParams, MetricResult, hookimpl
from robaudit.metric import SampleMetric, UnitResult


class SlowUnitParams(MetricParams):
    pause: float = 1.0


class SlowUnit(SampleMetric):
    """One unit, one long call."""

    name: ClassVar[str] = "slow_unit"
    Params: ClassVar[type[MetricParams]] = SlowUnitParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "tests"

    def per_sample(self, ctx, params, unit, fitted):
        time.sleep(params.pause)
        return UnitResult({"one": np.ones(len(unit))})

    def reduce(self, params, gathered):
        return MetricResult(value=float(gathered.arrays["one"].mean()))


@hookimpl
def robaudit_register_metrics(register):
    register(SlowUnit())
'''


def test_a_long_single_unit_prints_heartbeats_while_it_runs(write_spec, robaudit_main,
                                                            tmp_path, monkeypatch):
    """The 64 toy samples are one unit of 256: the units task stays at 0/1 for the whole
    check, and the log still gets lines while it runs (each one second at most, the
    keep-alive's period), not only once it has ended."""
    (tmp_path / "slow_unit_plugin.py").write_text(SLOW_UNIT)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = write_spec(checks("{id: one_unit, metric: slow_unit, params: {pause: 2.6}}"))
    code, out, _ = robaudit_main("run", spec, "-p", "slow_unit_plugin", "--heartbeat", "0.5")
    assert code == 0, out
    during = [line for line in out.splitlines()
              if line.startswith("  ... one_unit: slow_unit units 0/1 (0%)")]
    assert 1 <= len(during) <= 3, out


def test_keepalive_ticks_the_unfinished_task_used_last_until_the_check_ends():
    ticks: list[tuple[str, float]] = []

    class Task:
        def __init__(self, name: str) -> None:
            self.name = name

        def advance(self, amount: float = 1) -> None:
            ticks.append((self.name, amount))

    def ticked(seconds: float = 0.1) -> set[str]:
        ticks.clear()
        time.sleep(seconds)
        return {name for name, amount in ticks if amount == 0}

    keep = KeepAlive(lambda total, description: Task(description), period=0.01)
    units = keep(2, "units")
    inner = keep(3, "inner")  # started inside a unit: now the task used last
    assert ticked() == {"inner"}
    inner.advance(3)  # done: the units task around it is shown again
    assert ticked() == {"units"}
    units.advance()
    units.advance()  # every unit done: nothing left to show
    assert ticked() == set()
    keep(5, "next check")
    keep.forget()  # a check starts
    assert ticked() == set()
    keep.close()


def test_a_bare_float_is_the_shares_error_not_a_crash(write_spec, robaudit_main, tmp_path):
    """Under --shard the whole check's result is encoded for merge: a bare float is its
    share's error (it used to crash the encoding)."""
    spec = write_spec(checks("{id: bare, metric: bare_float}"))
    code, out, err = robaudit_main("run", spec, "--shard", "0/2", "--json", tmp_path / "s.json")
    assert code == EXIT_FAILED, out + err
    (check,) = json.loads((tmp_path / "s.json").read_text())["checks"]
    assert check["outcome"] == "error"
    assert check["message"] == "shard 0/2: bare_float returned float (0.5), not a MetricResult"


def test_a_share_the_wire_cannot_carry_reaches_rank_zero_as_its_error():
    class Board:
        """A process group's store, for one process."""

        size = 1

        def __init__(self) -> None:
            self.posts: dict[str, str] = {}

        def post(self, topic: str, value: str) -> None:
            self.posts[topic] = value

        def posted(self, topic: str, rank: int) -> str | None:
            return self.posts.get(topic)

    check = SimpleNamespace(id="odd", metric=Constant())
    inbox = Inbox(Board(), "0", [check])  # type: ignore[arg-type]
    assert inbox.ready(set()) == []  # nothing posted yet
    inbox.post(check, Share(result=MetricResult(value=1.0, details={"x": object()}),
                            duration_s=1.5))
    ((ready, (share,)),) = inbox.ready(set())
    assert ready is check and share.result is None and share.duration_s == 1.5
    assert share.error.message == ("the result could not be sent between processes: cannot "
                                   "encode a object")
    assert inbox.ready({"odd"}) == []
