"""Bad input gets a located error (file, line, key, what was expected) and exit code 4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TOY_HEADER, cli
from torch import nn

from robaudit.errors import SpecError
from robaudit.pluginmanager import load_plugins
from robaudit.spec import load_spec


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(extra=["toy_plugin"])


def problems_of(path: Path, plugins) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, plugins)
    return info.value.problems


def test_yaml_syntax_error_names_file_and_line(write_spec, plugins):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\n    params: {pairs: [1, 2}\n")
    [problem] = problems_of(spec, plugins)
    assert problem.startswith(f"{spec}:8: invalid YAML")


def test_unknown_top_level_key(write_spec, plugins):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: constant\nthreshold: 3\n")
    [problem] = problems_of(spec, plugins)
    assert problem == f"{spec}:8: threshold: unknown key"


def test_unknown_metric_suggests_the_closest_name(write_spec, plugins):
    spec = write_spec(TOY_HEADER + "checks:\n  - metric: rank_order_spearmann\n")
    [problem] = problems_of(spec, plugins)
    assert f"{spec}:7: checks.0.metric: unknown metric 'rank_order_spearmann'" in problem
    assert "did you mean 'rank_order_spearman'?" in problem


def test_param_of_wrong_type_and_out_of_bounds(write_spec, plugins):
    spec = write_spec(TOY_HEADER + """\
checks:
  - metric: rank_order_spearman
    params: {pairs: many}
  - metric: rank_order_spearman
    params:
      trials: 0
""")
    problems = problems_of(spec, plugins)
    assert len(problems) == 2
    assert problems[0].startswith(
        f"{spec}:8: checks.0.params.pairs: Input should be a valid integer"
    )
    assert "(got 'many')" in problems[0]
    assert problems[1].startswith(f"{spec}:11: checks.1.params.trials: Input should be greater")


def test_unknown_param_and_bad_expect(write_spec, plugins):
    spec = write_spec(TOY_HEADER + """\
checks:
  - metric: rank_order_spearman
    params: {pears: 10}
    expect: {min: 2, max: 1}
""")
    problems = problems_of(spec, plugins)
    assert any("checks.0.expect: Value error, min (2.0) is greater than max" in p
               for p in problems)


def test_missing_weights_file(write_spec, plugins):
    spec = write_spec("""\
audit: x
model:
  factory: toy_model.py:linear
  weights: missing.pt
data: {source: toy}
checks: [{metric: constant}]
""")
    [problem] = problems_of(spec, plugins)
    assert problem.startswith(f"{spec}:4: model.weights: file not found")


def test_unknown_data_option_and_source(write_spec, plugins):
    spec = write_spec(TOY_HEADER.replace("source: toy", "source: toy\n  colour: red")
                      + "checks: [{metric: constant}]\n")
    assert problems_of(spec, plugins) == [f"{spec}:6: data.colour: unknown key"]
    spec = write_spec(TOY_HEADER.replace("source: toy", "source: tooy")
                      + "checks: [{metric: constant}]\n")
    [problem] = problems_of(spec, plugins)
    assert "data.source: unknown data source 'tooy'; did you mean 'toy'?" in problem


def test_every_problem_is_reported_at_once(write_spec, plugins):
    spec = write_spec("""\
audit: x
model: {factory: toy_model.py:linear, input_range: [1, 0]}
data: {source: toy, limit: -3}
device: tpu
checks: []
""")
    problems = problems_of(spec, plugins)
    keys = {p.split(": ")[1] for p in problems}
    assert {"model", "data.limit", "device", "checks"} <= keys


def test_weights_that_do_not_fit_the_model(write_spec, toy_dir):
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)).state_dict(), toy_dir / "wrong.pt")
    spec = write_spec("""\
audit: x
model:
  factory: toy_model.py:linear
  weights: wrong.pt
data: {source: toy}
checks: [{metric: constant}]
""")
    done = cli("run", spec)
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert str(spec) in done.stderr and "model.weights:" in done.stderr
    assert "does not fit the model" in done.stderr and "size mismatch" in done.stderr


def test_a_factory_that_raises(write_spec, robaudit_main):
    spec = write_spec("""\
audit: x
model: {factory: "toy_model.py:broken"}
data: {source: toy}
checks: [{metric: constant}]
""")
    code, _, err = robaudit_main("run", spec)
    assert code == 4
    assert f"{spec}: model.factory: toy_model.py:broken(**kwargs) raised ValueError" in err
    assert "this factory always fails" in err


def test_invalid_spec_runs_nothing_and_exits_4(write_spec, tmp_path):
    marker = tmp_path / "ran"
    spec = write_spec(TOY_HEADER + f"""\
checks:
  - {{metric: wait, params: {{seconds: 0, marker: "{marker}"}}}}
  - {{metric: constant, params: {{value: high}}}}
""")
    done = cli("run", spec)
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    assert f"{spec}:8: checks.1.params.value" in done.stderr
    assert not marker.exists()


def test_checkpoint_dicts_are_accepted(write_spec, toy_dir, robaudit_main):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, toy_dir / "ckpt.pt")
    spec = write_spec("""\
audit: x
model: {factory: "toy_model.py:linear", weights: ckpt.pt}
data: {source: toy}
checks: [{metric: constant}]
""")
    assert robaudit_main("run", spec)[0] == 0


def test_params_that_do_not_fit_the_data_are_located_before_anything_runs(
        write_spec, tmp_path, robaudit_main):
    marker = tmp_path / "ran"
    spec = write_spec(TOY_HEADER + f"""\
checks:
  - {{metric: wait, params: {{seconds: 0, marker: "{marker}"}}}}
  - metric: intertwinedness
    params:
      n: 500
  - metric: sphere_deformation
    params: {{radius: -1.0}}
""")
    code, _, err = robaudit_main("run", spec)
    assert code == 4
    assert f"{spec}:12: checks.2.params.radius" in err
    spec = write_spec(TOY_HEADER + f"""\
checks:
  - {{metric: wait, params: {{seconds: 0, marker: "{marker}"}}}}
  - metric: intertwinedness
    params:
      n: 500
""")
    code, _, err = robaudit_main("run", spec)
    assert code == 4
    assert f"{spec}:10: checks.1.params.n: 500 nearest neighbours asked for" in err
    assert "has only 64 candidates" in err
    assert not marker.exists()


def test_every_problem_is_reported_in_one_round_in_line_order(write_spec, plugins):
    spec = write_spec("""\
        audit: many problems
        seeed: 3
        model:
          factory: toy_model.py:linear
          weights: nope.pt
          input_range: [1, 0]
        data:
          source: toy
          limit: 0
          n: 2
        checks:
          - metric: constant_value
          - metric: constant
            params: {valeu: 3}
          - metric: constant
            expect: {min: .nan}
        """)
    problems = problems_of(spec, plugins)
    expected = [(2, "seeed: unknown key; did you mean 'seed'?"),
                (3, "model: Value error, input_range must be [low, high]"),
                (5, "model.weights: file not found"),
                (9, "data.limit: Input should be greater than 0"),
                (10, "data.n: Input should be greater than or equal to 4"),
                (12, "checks.0.metric: unknown metric 'constant_value'; did you mean "
                     "'constant'?"),
                (14, "checks.1.params.valeu: unknown key; did you mean 'value'?"),
                (16, "checks.2.expect.min: Input should be a finite number")]
    assert len(problems) == len(expected), problems
    for problem, (line, text) in zip(problems, expected, strict=True):
        assert problem.startswith(f"{spec}:{line}: {text}"), problem
