"""``robaudit init`` (issue #13), run in this process (``cli_here``): the starter spec
validates, says what it found, and with --measure sets thresholds that the same model
passes."""

from __future__ import annotations

import pytest
import torch
import yaml


def test_starter_spec_for_a_factory_file_validates(toy_dir, cli_here):
    out = toy_dir / "starter.yaml"
    done = cli_here("init", "--model", "toy_model.py:linear", "--data", "toy",
               "--data-option", "n=32", "--out", out, cwd=toy_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    assert "#   input 1×4×4, 2 classes, 32 audit samples" in text
    assert "deformation checks included" in text and "placeholders" in text
    spec = yaml.safe_load(text)
    assert spec["model"]["factory"] == "toy_model.py:linear"
    assert spec["data"] == {"source": "toy", "n": 32}
    assert [c["metric"] for c in spec["checks"]][-1] == "rank_order_spearman"
    assert all("expect" not in c for c in spec["checks"])  # placeholders are comments
    assert "# expect: {max: ...}" in text  # the fooling rate: lower is better
    assert cli_here("validate", out).returncode == 0


def test_measured_thresholds_pass_on_the_same_model(toy_dir, cli_here):
    import toy_model

    torch.manual_seed(0)  # saved weights: every process audits the same model
    torch.save(toy_model.all_conv().state_dict(), toy_dir / "conv.pt")
    out = toy_dir / "measured.yaml"
    done = cli_here("init", "--model", "toy_model.py:all_conv", "--weights", "conv.pt",
               "--data", "toy", "--out", out, "--measure", cwd=toy_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    spec = yaml.safe_load(out.read_text())
    assert "no feature layer" in out.read_text()
    assert "rank_order_spearman" not in [c["metric"] for c in spec["checks"]]
    assert all("min" in c["expect"] or "max" in c["expect"] for c in spec["checks"])
    run = cli_here("run", out)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the test's own torch.jit.script
def test_torchscript_model_and_no_overwrite(toy_dir, cli_here):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    torch.jit.script(model).save(str(toy_dir / "model.ts"))
    out = toy_dir / "ts.yaml"
    done = cli_here("init", "--model", toy_dir / "model.ts", "--data", "toy", "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(out.read_text())["model"]["torchscript"] == "model.ts"
    again = cli_here("init", "--model", toy_dir / "model.ts", "--data", "toy", "--out", out)
    assert again.returncode == 4 and "exists; pass --force" in again.stderr
