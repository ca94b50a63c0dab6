"""``run --lf`` / ``--ff`` (issue #24): rerun the checks that failed last time, as pytest's
cacheprovider does, from the state kept in the cache folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, TOY_HEADER

from robaudit.lastrun import state_path

SPEC = TOY_HEADER + """\
checks:
  - {id: good, metric: constant, params: {value: 0.7}, expect: {min: 0.5}}
  - {id: bad, metric: constant, params: {value: 0.2}, expect: {min: 0.5}}
  - {id: other, metric: constant, params: {value: 0.9}, expect: {min: 0.5}, tags: [slow]}
"""


def ran(out: str) -> list[str]:
    """The check ids of the run's result lines (``id .... PASSED ...``), in the order they
    ran."""
    return [words[0] for words in map(str.split, out.splitlines())
            if len(words) > 2 and set(words[1]) == {"."} and words[2] in ("PASSED", "FAILED",
                                                                           "ERROR")]


@pytest.fixture
def spec(write_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the default cache folder is in the working directory
    return write_spec(SPEC)


def test_lf_reruns_the_failure_then_all_once_it_is_fixed(spec, robaudit_main, tmp_path):
    code, out, _ = robaudit_main("run", spec, "--lf", "-v")
    assert code == 1 and "no previously failed checks, running all" in out
    assert ran(out) == ["good", "bad", "other"]
    state = json.loads(state_path(tmp_path / ".robaudit_cache", spec).read_text())
    assert state["outcomes"] == {"good": "passed", "bad": "failed", "other": "passed"}

    code, out, _ = robaudit_main("run", spec, "--lf", "-v")
    assert code == 1 and ran(out) == ["bad"]
    assert "collected 1 check / 2 deselected" in out
    assert "run-last-failure: rerun previous 1 failure" in out

    fixed = ("--set", "checks.1.params.value=0.6")
    code, out, _ = robaudit_main("run", spec, "--lf", "-v", *fixed)
    assert code == 0 and ran(out) == ["bad"]
    code, out, _ = robaudit_main("run", spec, "--lf", "-v", *fixed)
    assert code == 0 and ran(out) == ["good", "bad", "other"]
    assert "no previously failed checks, running all" in out


def test_ff_runs_the_failures_first_then_the_rest(spec, robaudit_main):
    robaudit_main("run", spec)
    code, out, _ = robaudit_main("run", spec, "--ff", "-v")
    assert code == 1 and ran(out) == ["bad", "good", "other"]
    assert "run-last-failure: rerun previous 1 failure first" in out


def test_an_error_counts_as_a_failure_and_lf_intersects_with_k_and_m(write_spec, tmp_path,
                                                                     robaudit_main):
    spec = write_spec(SPEC + "  - {id: broken, metric: boom}\n")
    cache = tmp_path / "elsewhere"
    robaudit_main("run", spec, "--cache-dir", cache)
    assert (json.loads(state_path(cache, spec).read_text())["outcomes"]["broken"] == "error")
    _, out, _ = robaudit_main("run", spec, "--cache-dir", cache, "--lf", "-v", "-k", "bad")
    assert ran(out) == ["bad"] and "3 deselected" in out
    _, out, _ = robaudit_main("run", spec, "--cache-dir", cache, "--lf", "-v")
    assert ran(out) == ["bad", "broken"]
    # -m slow selects only `other`, which passed: none of the selected failed, so all run
    _, out, _ = robaudit_main("run", spec, "--cache-dir", cache, "--lf", "-v", "-m", "slow")
    assert ran(out) == ["other"] and "running all" in out


def test_a_deselected_failure_is_remembered(spec, robaudit_main):
    robaudit_main("run", spec)
    robaudit_main("run", spec, "-k", "good")  # `bad` does not run: its failure stays
    _, out, _ = robaudit_main("run", spec, "--lf", "-v")
    assert ran(out) == ["bad"]


def test_a_corrupt_state_file_is_ignored_with_a_warning(spec, robaudit_main, tmp_path):
    robaudit_main("run", spec)
    path = state_path(tmp_path / ".robaudit_cache", spec)
    for text in ("{not json", '{"outcomes": {"bad": 3}}', "[]"):
        path.write_text(text)
        code, out, err = robaudit_main("run", spec, "--lf", "-v")
        assert code == 1 and ran(out) == ["good", "bad", "other"]
        assert "WARNING" in err and "ignored" in err and "Traceback" not in err
    # the run wrote a good state again
    assert json.loads(path.read_text())["outcomes"]["bad"] == "failed"


def test_a_state_that_cannot_be_written_is_a_warning(write_spec, tmp_path, robaudit_main):
    spec = write_spec(SPEC)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "lastrun").write_text("")  # a file where the state folder goes
    code, out, err = robaudit_main("run", spec, "--cache-dir", cache, "--lf")
    assert code == 1 and "1 failed, 2 passed" in out
    assert "could not be stored" in err and "Traceback" not in err


def test_only_shard_0_records_and_its_placeholders_keep_the_last_outcomes(spec, robaudit_main,
                                                                          tmp_path):
    path = state_path(tmp_path / ".robaudit_cache", spec)
    robaudit_main("run", spec, "--shard", "1/2", "--json", tmp_path / "s1.json")
    assert not path.exists()  # shard 1 is not rank 0
    robaudit_main("run", spec)
    before = json.loads(path.read_text())["outcomes"]
    code, _, _ = robaudit_main("run", spec, "--shard", "0/2", "--json", tmp_path / "s0.json",
                               "--set", "checks.1.params.value=0.6")
    assert code == 0  # a shard's checks are placeholders (`skipped`) until `robaudit merge`
    assert json.loads(path.read_text())["outcomes"] == before == {
        "good": "passed", "bad": "failed", "other": "passed"}


def test_collect_only_lists_what_lf_would_run(spec, robaudit_main):
    robaudit_main("run", spec)
    code, out, _ = robaudit_main("run", spec, "--lf", "--collect-only")
    assert code == 0 and "run-last-failure: rerun previous 1 failure" in out
    assert "(1 selected, 2 deselected" in out and "collected 1 check" in out


def test_lf_over_several_specs_skips_the_specs_without_failures(spec, write_spec,
                                                                robaudit_main):
    passing = write_spec(TOY_HEADER + "checks:\n  - {id: fine, metric: constant, "
                         "expect: {min: 0.1}}\n", name="passing.yaml")
    robaudit_main("run", spec, passing)
    code, out, _ = robaudit_main("run", spec, passing, "--lf", "-v")
    assert code == 1 and ran(out) == ["bad"]
    assert "run-last-failure: rerun previous 1 failure (skipped 1 spec)" in out
    assert "1 failed, 3 deselected" in out.splitlines()[-1]


def test_lf_under_torchrun_runs_the_same_selection_on_every_rank(spec, robaudit_main, tmp_path):
    robaudit_main("run", spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "robaudit", "run", spec, "--lf", "-v", "--set", "checks.1.params.value=0.6",
         "-p", "toy_plugin"], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120)
    assert done.returncode == 0, done.stderr
    assert ran(done.stdout) == ["bad"] and "2 processes" in done.stdout
    outcomes = json.loads(state_path(tmp_path / ".robaudit_cache", spec).read_text())
    assert outcomes["outcomes"]["bad"] == "passed"
