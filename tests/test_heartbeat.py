"""Heartbeat lines of long checks in a CI log (issue 13, part 5): a line now and then, rate
limited by wall time, naming the check, how far it is and the time elapsed; silent under -q,
with --heartbeat 0, and on a check shorter than the interval."""

from __future__ import annotations

import argparse
import io
import re
import textwrap
from pathlib import Path

import pytest
from conftest import TOY_HEADER
from rich.console import Console

from robaudit.plugins.reporters.console import HEARTBEAT_S, Heartbeat, heartbeat_seconds

TICKER = '''
"""A metric that advances a progress task ``steps`` times, ``pause`` seconds apart."""
import time
from typing import ClassVar

from robaudit import Metric, MetricParams, MetricResult, hookimpl


class TickerParams(MetricParams):
    steps: int = 10
    pause: float = 0.0


class Ticker(Metric):
    """Ticks."""

    name: ClassVar[str] = "ticker"
    Params: ClassVar[type[MetricParams]] = TickerParams
    higher_is_better: ClassVar[bool] = True
    source: ClassVar[str] = "tests"

    def compute(self, ctx, params):
        task = ctx.progress(params.steps, "ticking <steps>")
        for _ in range(params.steps):
            time.sleep(params.pause)
            task.advance()
        return MetricResult(value=1.0)


@hookimpl
def robaudit_register_metrics(register):
    register(Ticker())
'''


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_however_often_the_metric_advances():
    out = io.StringIO()
    clock = FakeClock()
    beat = Heartbeat(Console(file=out, highlight=False, soft_wrap=True), 30.0, clock)
    beat.start_check("deepfool")
    task = beat(400, "DeepFool (l2) on test")
    for _ in range(400):  # 400 advances over 100 s: lines at 30, 60 and 90 s only
        clock.now += 0.25
        task.advance()
    lines = out.getvalue().splitlines()
    assert lines == [
        "  ... deepfool: DeepFool (l2) on test 120/400 (30%), 30s elapsed",
        "  ... deepfool: DeepFool (l2) on test 240/400 (60%), 60s elapsed",
        "  ... deepfool: DeepFool (l2) on test 360/400 (90%), 90s elapsed",
    ]


def test_the_clock_restarts_with_each_check():
    out = io.StringIO()
    clock = FakeClock()
    beat = Heartbeat(Console(file=out, highlight=False, soft_wrap=True), 10.0, clock)
    beat.start_check("first")
    clock.now += 25  # the first check ran 25 s without advancing anything
    beat.start_check("second")
    task = beat(0, "open-ended")
    clock.now += 5
    task.advance()  # 5 s into the second check: no line yet
    assert out.getvalue() == ""
    clock.now += 6
    task.advance(3)
    assert out.getvalue().splitlines() == ["  ... second: open-ended 4/0, 11s elapsed"]


def test_heartbeat_option_takes_seconds_at_least_zero():
    assert heartbeat_seconds("0") == 0 and heartbeat_seconds("2.5") == 2.5
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match="seconds >= 0"):
            heartbeat_seconds(bad)
    assert HEARTBEAT_S == 30


@pytest.fixture
def ticker_spec(write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "heartbeat_ticker.py").write_text(textwrap.dedent(TICKER))
    monkeypatch.syspath_prepend(str(plugin_dir))
    return write_spec(TOY_HEADER + """
checks:
  - {id: slow_one, metric: ticker, params: {steps: 12, pause: 0.05}}
  - {id: quick_one, metric: constant}
""")


BEAT = re.compile(r"^  \.\.\. (\w+): ticking <steps> (\d+)/12 \((\d+)%\), (\d+)s elapsed$",
                  re.MULTILINE)


def test_a_run_in_a_log_prints_heartbeats_of_the_running_check(ticker_spec, robaudit_main):
    code, out, _ = robaudit_main("run", ticker_spec, "-p", "heartbeat_ticker",
                                 "--heartbeat", "0.1")
    assert code == 0, out
    beats = BEAT.findall(out)
    # 12 steps of 0.05 s: at most one line per 0.1 s, so between 1 and 6 lines
    assert 1 <= len(beats) <= 6, out
    assert {check for check, *_ in beats} == {"slow_one"}
    done = [int(d) for _, d, _, _ in beats]
    assert done == sorted(done) and all(1 <= d <= 12 for d in done)
    # every heartbeat comes before the check's own result line
    assert out.rindex("ticking <steps>") < out.index("slow_one ...")


@pytest.mark.parametrize("args", [(), ("-q", "--heartbeat", "0.1"), ("--heartbeat", "0")])
def test_no_heartbeat_when_quiet_off_or_shorter_than_the_interval(ticker_spec, robaudit_main,
                                                                  args):
    code, out, _ = robaudit_main("run", ticker_spec, "-p", "heartbeat_ticker", *args)
    assert code == 0, out
    assert "ticking" not in out
