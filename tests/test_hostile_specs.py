"""Issue #7: bad input is exit 4 with a located message, never a pass on garbage, never exit 3
with a traceback. Each class of input the issue lists has an example here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOY_HEADER

LINEAR = TOY_HEADER
CHECK = "checks:\n  - metric: constant\n    expect: {min: 0.1}\n"


def usage_error(result: tuple[int, str, str]) -> str:
    """Assert exit 4 without a traceback; return stderr."""
    code, out, err = result
    assert code == 4, out + err
    assert "Traceback" not in out + err
    return err


@pytest.mark.parametrize("expect, key", [
    ("{min: .nan}", "min"), ("{max: .inf}", "max"), ("{min: -.inf}", "min"),
    ("{max: .NaN}", "max"),
])
def test_non_finite_thresholds_are_spec_errors(write_spec, robaudit_main, expect, key):
    spec = write_spec(LINEAR + f"checks:\n  - metric: constant\n    expect: {expect}\n")
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:8: checks.0.expect.{key}: Input should be a finite number" in err


def test_non_finite_param_is_a_spec_error(write_spec, robaudit_main):
    spec = write_spec(LINEAR + "checks:\n  - metric: constant\n    params: {value: .nan}\n")
    err = usage_error(robaudit_main("run", spec))
    assert "checks.0.params.value: Input should be a finite number" in err


@pytest.mark.parametrize("text, key", [
    ("seed: true\n" + CHECK, "seed"),
    (CHECK.replace("{min: 0.1}", "{min: true}"), "checks.0.expect.min"),
    ("checks:\n  - metric: constant\n    params: {value: false}\n", "checks.0.params.value"),
    ("checks:\n  - metric: constant\n    timeout: true\n", "checks.0.timeout"),
])
def test_booleans_are_not_numbers(write_spec, robaudit_main, text, key):
    spec = write_spec(LINEAR + text)
    err = usage_error(robaudit_main("run", spec))
    assert f"{key}: Value error, expected" in err and "got a boolean" in err


def test_boolean_inside_a_list_of_numbers(write_spec, robaudit_main):
    spec = write_spec(LINEAR.replace("source: toy\n", "source: toy\n")
                      + "  limit: 8\n" + CHECK.replace("constant", "constant")
                      + "models:\n  other: {factory: 'toy_model.py:linear', "
                        "input_range: [0, true]}\n")
    err = usage_error(robaudit_main("run", spec))
    assert "models.other.input_range" in err and "got a boolean" in err


@pytest.mark.parametrize("seed", [2**64, -1, 2**63])
def test_seed_beyond_63_bits(write_spec, robaudit_main, seed):
    spec = write_spec(LINEAR + f"seed: {seed}\n" + CHECK)
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:6: seed: Input should be" in err


def test_duplicate_keys_are_located(write_spec, robaudit_main):
    spec = write_spec(LINEAR + "seed: 1\n" + CHECK + "seed: 2\n")
    err = usage_error(robaudit_main("validate", spec))
    assert f"{spec}:10: duplicate key 'seed' (first on line 6)" in err


def test_alias_bomb_inside_kwargs_is_refused_quickly(write_spec, robaudit_main):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "\n".join("    " + line for line in levels)
    spec = write_spec(textwrap.dedent("""\
        audit: bomb
        model:
          factory: toy_model.py:linear
          kwargs:
        """) + bomb + "\ndata: {source: toy}\n" + CHECK)
    err = usage_error(robaudit_main("validate", spec))
    assert "expands to more than 100,000 nodes" in err


@pytest.mark.parametrize("depth", [80, 3000])
def test_deep_nesting(write_spec, robaudit_main, depth):
    spec = write_spec(LINEAR + "x: " + "[" * depth + "]" * depth + "\n" + CHECK)
    err = usage_error(robaudit_main("validate", spec))
    assert str(spec) in err and ("nested more than 64 levels" in err or "nested too deeply" in err)


def test_spec_that_is_not_utf8(toy_dir, robaudit_main):
    spec = toy_dir / "latin1.yaml"
    spec.write_bytes((LINEAR + "# caf\xe9\n" + CHECK).encode("latin-1"))
    err = usage_error(robaudit_main("validate", spec))
    assert f"{spec}:6: the spec is not UTF-8 text (byte 0xe9" in err


def test_malformed_set_value_blames_set(write_spec, robaudit_main):
    spec = write_spec(LINEAR + CHECK)
    err = usage_error(robaudit_main("run", spec, "--set", "seed=[1, 2"))
    assert "--set seed=[1, 2: the value is not valid YAML" in err
    assert str(spec) + ":" not in err


def test_torchvision_dataset_needing_other_arguments(write_spec, robaudit_main, toy_dir):
    (toy_dir / "data").mkdir()
    spec = write_spec(textwrap.dedent("""\
        audit: t
        model: {factory: "toy_model.py:linear"}
        data: {source: torchvision, dataset: Kinetics, root: data}
        """) + CHECK)
    err = usage_error(robaudit_main("run", spec))
    assert "data.dataset: torchvision.datasets.Kinetics needs constructor arguments" in err


def test_a_size_that_cannot_be_allocated(write_spec, robaudit_main):
    spec = write_spec(textwrap.dedent("""\
        audit: t
        model: {factory: "toy_model.py:linear", kwargs: {inputs: 10}}
        data: {source: gaussian_mixture, points: 1000000000}
        """) + CHECK)
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:3: data: Value error, the mixture needs about" in err


def test_cuda_without_a_gpu_names_the_spec(write_spec, robaudit_main):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    spec = write_spec(LINEAR + "device: cuda\n" + CHECK)
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:6: device: device: 'cuda' was asked for but no CUDA device" in err


def test_control_characters_never_reach_the_console(write_spec, robaudit_main):
    spec = write_spec('audit: "evil \\e]0;title\\a\\e[31m red"\n' + LINEAR.split("\n", 1)[1]
                      + "checks:\n  - metric: odd_details\n")
    code, out, err = robaudit_main("run", spec, "-v")
    assert code == 0, out + err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "evil \\x1b]0;title\\x07\\x1b[31m red" in out  # shown escaped, not acted on


def test_control_characters_in_a_spec_error(write_spec, robaudit_main):
    spec = write_spec(LINEAR + 'checks:\n  - metric: "con\\e[2Jstant"\n')
    err = usage_error(robaudit_main("validate", spec))
    assert "\x1b" not in err and "con\\x1b[2Jstant" in err


# -- the data must fit the model (design §3) -------------------------------------------------
def test_wrong_channels_is_a_located_usage_error(write_spec, robaudit_main):
    spec = write_spec(LINEAR.replace("toy_model.py:linear", "toy_model.py:three_channel")
                      + CHECK)
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:2: model: the model cannot take the data: a forward pass of one 1×4×4" in err


def test_three_channel_normalize_on_one_channel_data(write_spec, robaudit_main):
    spec = write_spec(LINEAR.replace(
        "toy_model.py:linear\n",
        "toy_model.py:linear\n  normalize: {mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}\n")
        + CHECK)
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:4: model.normalize: 3 channel(s) of mean/std, but the data's samples are " \
           "1×4×4" in err


def _npz_spec(write_spec, toy_dir: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(toy_dir / "d.npz", x_test=x, y_test=y, x_train=x, y_train=y)
    return write_spec(textwrap.dedent("""\
        audit: t
        model: {factory: "toy_model.py:linear"}
        data: {source: npz, path: d.npz}
        """) + CHECK)


@pytest.mark.parametrize("label", [2, 5, 2**40])
def test_labels_outside_the_models_outputs(write_spec, toy_dir, robaudit_main, label):
    x = np.random.default_rng(0).random((8, 1, 4, 4), dtype=np.float32)
    y = np.array([0, 1, 0, 1, 0, 1, 0, label], dtype=np.int64)
    spec = _npz_spec(write_spec, toy_dir, x, y)
    err = usage_error(robaudit_main("run", spec))
    assert f"{spec}:3: data: split 'test': 1 labels lie outside the model's 2 classes" in err


def test_nan_and_inf_inputs(write_spec, toy_dir, robaudit_main):
    x = np.random.default_rng(0).random((8, 1, 4, 4), dtype=np.float32)
    x[3, 0, 1, 1], x[5, 0, 0, 0] = np.nan, np.inf
    spec = _npz_spec(write_spec, toy_dir, x, np.arange(8) % 2)
    err = usage_error(robaudit_main("run", spec))
    assert "data: split 'test': 2 of 8 samples have NaN or infinite inputs" in err


def test_nan_logits_make_data_checks_error_not_pass(write_spec, robaudit_main):
    spec = write_spec(LINEAR.replace("toy_model.py:linear", "toy_model.py:nan_logits")
                      + "checks:\n  - metric: clean_accuracy\n    expect: {min: 0.05}\n"
                        "  - metric: noise_accuracy\n    expect: {min: 0.05}\n")
    code, out, err = robaudit_main("run", spec)
    assert code == 1, out + err
    assert out.count("ERROR") >= 2 and "PASSED" not in out
    assert "gives NaN or infinite logits on 64 of 64 audited samples" in out


def test_reference_equal_to_the_audit_split_is_said(write_spec, toy_dir, robaudit_main,
                                                    tmp_path):
    x = np.random.default_rng(0).random((16, 1, 4, 4), dtype=np.float32)
    np.savez(toy_dir / "only.npz", x=x, y=np.arange(16) % 2)
    spec = write_spec(textwrap.dedent("""\
        audit: t
        model: {factory: "toy_model.py:linear"}
        data: {source: npz, path: only.npz}
        checks:
          - metric: uap_fooling_rate
            params: {eps: 0.1, max_passes: 1}
        """))
    report = tmp_path / "r.json"
    code, out, err = robaudit_main("run", spec, "--json", report)
    assert code in (0, 1), out + err
    assert "WARNING" in out and "the reference is the audit split itself" in out
    import json

    data = json.loads(report.read_text())
    assert data["data"]["reference_is_split"] is True
    assert data["checks"][0]["details"]["held_out"] is False
