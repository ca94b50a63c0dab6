"""``robaudit init`` writes a gate that holds (issue #24): ``--measure`` measures the spec it
writes, so a rerun reproduces every measured value exactly; thresholds sit at the passing-side
end of each check's 95% interval; problems name the option to change; ``--split``, and a
folder of ``train/`` and ``val/`` audits ``val``."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from robaudit.init import gate_interval, measured, outwards


def test_a_rerun_of_the_measured_spec_reproduces_its_values_and_passes(toy_dir,
                                                                        cli_here):
    import toy_model

    torch.manual_seed(0)
    torch.save(toy_model.linear().state_dict(), toy_dir / "linear.pt")
    out = toy_dir / "gate.yaml"
    done = cli_here("init", "--model", "toy_model.py:linear", "--weights", "linear.pt",
               "--data", "toy", "--out", out, "--measure", cwd=toy_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passing-side end of the check's 95% interval" in done.stdout  # the rule, printed
    text = out.read_text()
    found = dict(re.findall(r"- id: (\w+).*?# measured (\S+?),", text, re.DOTALL))
    expects = {c: json.loads(e) for c, e in re.findall(r"- id: (\w+).*?expect: (\{.*?\})",
                                                       text, re.DOTALL)}
    assert set(found) == set(expects) == {"accuracy", "noise", "deepfool", "pgd_linf", "uap",
                                          "spearman"}
    run = cli_here("run", out, "--json", toy_dir / "r.json", cwd=toy_dir)
    assert run.returncode == 0, run.stdout + run.stderr  # the gate holds on the same model
    checks = {c["id"]: c for c in json.loads((toy_dir / "r.json").read_text())["checks"]}
    for check_id, value in found.items():
        check = checks[check_id]
        assert check["value"] == float(value), check_id  # exactly, not within a margin
        low, high = gate_interval(tuple(check["ci"]), tuple(check.get("samples") or ()))
        if "min" in expects[check_id]:  # the passing-side end of the interval, rounded out
            assert low - 1e-3 * abs(low) <= expects[check_id]["min"] <= low
        else:
            assert high <= expects[check_id]["max"] <= high + 1e-3 * abs(high)


def test_a_share_whose_samples_all_agree_gets_its_wilson_interval():
    z2 = 1.959963984540054 ** 2
    low, high = gate_interval((1.0, 1.0), (1.0,) * 64)  # the t interval has zero width
    assert high == pytest.approx(1.0) and low == pytest.approx(64 / (64 + z2))  # p̂ = 1
    assert measured(1.0, (1.0, 1.0), (1.0,) * 64, True, "").expect == {"min": 0.9433}
    assert gate_interval((0.3, 0.3), (0.3, 0.3)) is None  # not a share: no interval
    none = measured(0.3, (0.3, 0.3), (0.3, 0.3), True, "")
    assert none.expect is None and "no interval" in none.note
    assert measured(None, None, None, True, "boom").expect is None


@pytest.mark.parametrize(("value", "down", "expected"), [
    (0.38123, True, 0.3812), (0.38123, False, 0.3813), (0.9248, True, 0.9248),
    (0.99996, True, 0.9999), (0.056621, False, 0.05663), (-1.23456, True, -1.235),
    (12345.0, False, 12350.0), (0.0, True, 0.0),
])
def test_thresholds_round_outwards(value, down, expected):
    assert outwards(value, down) == expected
    assert (outwards(value, down) <= value) if down else (outwards(value, down) >= value)


@pytest.mark.parametrize(("args", "says"), [
    (["--data", "npz", "--data-option", "path=missing.npz"],
     "init: --data-option path=...: Value error, file not found: "),
    (["--weights", "nope.pt", "--data", "toy"], "init: --weights: file not found: "),
    (["--data", "toy", "--data-option", "n=2"], "init: --data-option n=...: "),
    (["--data", "toy", "--split", "nosuch"],
     "init: --split: split 'nosuch' does not exist in 'toy'; available: test, train"),
])
def test_problems_name_the_option_and_keep_the_old_file(toy_dir, cli_here, args,
                                                        says):
    out = toy_dir / "kept.yaml"
    out.write_text("# mine\n")
    done = cli_here("init", "--model", "toy_model.py:linear", *args, "--out", out, "--force",
               cwd=toy_dir)
    assert done.returncode == 4 and says in done.stderr, done.stderr
    assert "draft" not in done.stderr and "line" not in done.stderr
    assert "Traceback" not in done.stderr
    assert out.read_text() == "# mine\n"  # --force replaces it only with a written spec
    assert sorted(p.name for p in toy_dir.iterdir() if p.name.startswith(".")) == []


def _image_folder(root, splits):
    for split in splits:
        for label, shade in (("dark", 40), ("light", 220)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("L", (4, 4), shade + i).save(folder / f"{i}.png")


def test_train_and_val_folders_audit_val_and_split_chooses(toy_dir, cli_here):
    _image_folder(toy_dir / "images", ("train", "val"))
    data = ["--data", "imagefolder", "--data-option", "path=images", "--data-option", "size=4",
            "--data-option", "channels=1"]
    for extra, split in (([], "val"), (["--split", "train"], "train")):
        out = toy_dir / f"{split}.yaml"
        done = cli_here("init", "--model", "toy_model.py:linear", *data, *extra, "--out", out,
                   cwd=toy_dir)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"8 audit samples (split {split!r})" in out.read_text()
        assert f"split: {split}" in out.read_text()
        assert "(no --weights): unless it loads trained weights itself" in out.read_text()


def test_data_without_a_split_to_audit_asks_for_split(toy_dir, cli_here):
    _image_folder(toy_dir / "images", ("train",))
    done = cli_here("init", "--model", "toy_model.py:linear", "--data", "imagefolder",
               "--data-option", "path=images", "--data-option", "size=4",
               "--data-option", "channels=1", "--out", toy_dir / "x.yaml", cwd=toy_dir)
    assert done.returncode == 4
    assert "has no 'test' nor 'val' nor 'validation' split to audit (it has 'train')" \
        in done.stderr and "--split NAME" in done.stderr
