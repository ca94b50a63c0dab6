"""Model sources (issue #22, design §3): torchvision, timm, Hugging Face and torch.export
models load offline, and audit exactly as the same network loaded as a plain module does."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robaudit.model import as_logits

CHECKS = """\
checks:
  - metric: clean_accuracy
  - metric: noise_accuracy
    params: {sigma: 0.05}
  - metric: pgd_accuracy
    params: {eps: 0.03, steps: 3}
"""


def write_data(folder: Path, size: int = 16, n: int = 12) -> None:
    """Three classes of 3×size×size images: a brighter channel per class, plus noise."""
    g = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = 0.3 + 0.05 * g.standard_normal((n, 3, size, size))
    x[np.arange(n), y] += 0.4
    np.savez(folder / "data.npz", x=x.clip(0, 1).astype(np.float32), y=y.astype(np.int64))


def spec(folder: Path, name: str, model: str) -> Path:
    """A spec ``name``.yaml in ``folder`` with the given ``model`` section (YAML lines)."""
    text = (f"audit: {name}\nmodel:\n{textwrap.indent(textwrap.dedent(model), '  ')}"
            "data: {source: npz, path: data.npz, batch_size: 4}\ndevice: cpu\n" + CHECKS)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def audit(robaudit_main, path: Path) -> dict:
    report = path.with_suffix(".json")
    code, out, err = robaudit_main("run", path, "--json", report, "-q")
    assert code == 0, out + err
    return json.loads(report.read_text())


def values(report: dict) -> dict[str, float]:
    return {c["id"]: c["value"] for c in report["checks"]}


def same_audit(robaudit_main, a: Path, b: Path) -> dict:
    """Audit both specs; their checks' values must be equal. Returns the first report."""
    first, second = audit(robaudit_main, a), audit(robaudit_main, b)
    assert "error" not in [c["outcome"] for c in first["checks"]], first["checks"]
    assert values(first) == pytest.approx(values(second), rel=1e-5, abs=1e-7)
    return first


def logits_of(folder: Path, name: str) -> torch.Tensor:
    """The logits of the data under the spec ``name``.yaml's model, loaded as a run loads it."""
    import yaml

    from robaudit.model import ModelUnderAudit
    from robaudit.plugins.loaders.models import robaudit_load_model

    entry = yaml.safe_load((folder / f"{name}.yaml").read_text())["model"]
    module = robaudit_load_model(config=entry, base_dir=folder)
    normalize = entry.get("normalize")
    mua = ModelUnderAudit(module, normalize=(normalize["mean"], normalize["std"])
                          if normalize else None)
    x = torch.from_numpy(np.load(folder / "data.npz")["x"])
    with mua, torch.no_grad():
        return mua.logits(x)


def assert_same_logits(folder: Path, a: str, b: str) -> None:
    assert torch.equal(logits_of(folder, a), logits_of(folder, b))


def factory_file(folder: Path, body: str) -> None:
    (folder / "plain.py").write_text("import torch\nfrom torch import nn\n\n"
                                     + textwrap.dedent(body))


def test_torchvision_name_with_local_weights(tmp_path, robaudit_main):
    import torchvision

    write_data(tmp_path)
    torch.manual_seed(0)
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=3)
    torch.save(net.state_dict(), tmp_path / "rn.pt")
    factory_file(tmp_path, """\
        import torchvision

        def build():
            return torchvision.models.shufflenet_v2_x0_5(num_classes=3)
        """)
    report = same_audit(
        robaudit_main,
        spec(tmp_path, "tv", "torchvision: shufflenet_v2_x0_5\nkwargs: {num_classes: 3}\n"
                             "weights: rn.pt\n"),
        spec(tmp_path, "plain", "factory: plain.py:build\nweights: rn.pt\n"))
    assert report["model"]["torchvision"] == "shufflenet_v2_x0_5"
    assert_same_logits(tmp_path, "tv", "plain")
    assert report["model"]["weights_sha256"] is not None


def test_torchvision_never_downloads(tmp_path, robaudit_main):
    write_data(tmp_path)
    path = spec(tmp_path, "dl", "torchvision: resnet18\nkwargs: {weights: DEFAULT}\n")
    code, _, err = robaudit_main("run", path)
    assert code == 4
    assert "kwargs.weights: robaudit never downloads" in err and "`weights`" in err
    assert "Traceback" not in err
    code, _, err = robaudit_main("run", spec(tmp_path, "enum", "torchvision: resnet18\n"
                                                               "weights: IMAGENET1K_V1\n"))
    assert code == 4 and "model.weights: file not found" in err and "never does" in err
    code, _, err = robaudit_main("run", spec(tmp_path, "typo", "torchvision: resnet81\n"))
    assert code == 4 and "'resnet81' is not a torchvision" in err and "resnet18" in err


def test_exactly_one_source(tmp_path, robaudit_main):
    write_data(tmp_path)
    path = spec(tmp_path, "two", "torchvision: resnet18\ntimm: resnet18\n")
    code, _, err = robaudit_main("run", path)
    assert code == 4 and "exactly one of" in err and "found torchvision, timm" in err


def test_timm_model(tmp_path, robaudit_main):
    timm = pytest.importorskip("timm")
    write_data(tmp_path)
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "t.pt")
    factory_file(tmp_path, """\
        import timm

        def build():
            return timm.create_model("test_resnet", num_classes=3)
        """)
    report = same_audit(
        robaudit_main,
        spec(tmp_path, "timm", "timm: test_resnet\nkwargs: {num_classes: 3}\nweights: t.pt\n"),
        spec(tmp_path, "plain", "factory: plain.py:build\nweights: t.pt\n"))
    assert report["model"]["timm"] == "test_resnet"
    assert_same_logits(tmp_path, "timm", "plain")
    code, _, err = robaudit_main("run", spec(
        tmp_path, "pre", "timm: test_resnet\nkwargs: {pretrained: true}\n"))
    assert code == 4 and "kwargs.pretrained: robaudit never downloads" in err


def save_tiny_vit(folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)


def test_huggingface_folder_uses_the_processor_normalisation(tmp_path, robaudit_main):
    save_tiny_vit(tmp_path / "vit")
    write_data(tmp_path)
    # the plain module returns the ImageClassifierOutput itself: its logits are the output
    factory_file(tmp_path, """\
        from pathlib import Path

        from transformers import ViTForImageClassification

        def build():
            folder = Path(__file__).parent / "vit"
            return ViTForImageClassification.from_pretrained(folder, local_files_only=True)
        """)
    report = same_audit(
        robaudit_main, spec(tmp_path, "hf", "huggingface: vit\n"),
        spec(tmp_path, "plain", "factory: plain.py:build\n"
                                "normalize: {mean: [0.4, 0.5, 0.6], std: [0.2, 0.25, 0.3]}\n"))
    assert_same_logits(tmp_path, "hf", "plain")
    model = report["model"]
    assert model["huggingface"] == "vit"
    assert model["huggingface_config"]["model_type"] == "vit"
    assert "transformers_version" in model["huggingface_config"]
    assert len(model["weights_sha256"]) == 64
    without = audit(robaudit_main, spec(tmp_path, "raw", "huggingface: vit\n"
                                                         "normalize: {mean: [0, 0, 0], "
                                                         "std: [1, 1, 1]}\n"))
    assert values(without) != pytest.approx(values(report))  # the spec's normalize wins


def test_huggingface_folder_must_exist(tmp_path, robaudit_main):
    write_data(tmp_path)
    code, _, err = robaudit_main("run", spec(tmp_path, "hub", "huggingface: google/vit-base\n"))
    assert code == 4 and "model.huggingface: folder not found" in err
    assert "nothing is downloaded" in err


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(torch.flatten(self.body(x), 1))}


def test_exported_program(tmp_path, robaudit_main):
    write_data(tmp_path)
    torch.manual_seed(0)
    net = SmallCNN().eval()
    net.body[1].running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "cnn.pt")
    batch = torch.export.Dim("batch")
    x = torch.rand(2, 3, 16, 16)
    program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, tmp_path / "cnn.pt2")
    factory_file(tmp_path, "from test_model_sources import SmallCNN\n\n\ndef build():\n"
                           "    return SmallCNN()\n")
    report = same_audit(robaudit_main, spec(tmp_path, "ex", "export: cnn.pt2\n"),
                        spec(tmp_path, "plain", "factory: plain.py:build\nweights: cnn.pt\n"))
    assert len(report["model"]["export_sha256"]) == 64
    assert torch.allclose(logits_of(tmp_path, "ex"), logits_of(tmp_path, "plain"), atol=1e-6)
    fixed = torch.export.export(net, (x,))
    torch.export.save(fixed, tmp_path / "fixed.pt2")
    code, _, err = robaudit_main("run", spec(tmp_path, "fixed", "export: fixed.pt2\n"))
    assert code == 4 and "fixed batch size of 2" in err and "Dim('batch')" in err
    training = torch.export.export(SmallCNN().train(), (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(training, tmp_path / "train.pt2")
    code, _, err = robaudit_main("run", spec(tmp_path, "train", "export: train.pt2\n"))
    assert code == 4 and "exported in training mode (batch_norm" in err


def test_torchscript_loads_without_the_deprecation_warning(tmp_path):
    from robaudit.plugins.loaders.models import load_torchscript

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "m.ts"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_torchscript(tmp_path / "m.ts")
    assert not [w for w in caught if "deprecated" in str(w.message)]


def test_outputs_are_unwrapped_to_logits():
    logits = torch.randn(2, 3)
    assert as_logits(logits) is logits
    assert as_logits((logits, torch.zeros(2))) is logits
    assert as_logits({"logits": logits, "aux": 1}) is logits

    class Output:
        def __init__(self) -> None:
            self.logits = logits

    assert as_logits(Output()) is logits
    from robaudit.errors import UsageError

    for bad in ("text", {"scores": logits}, (), [None]):
        with pytest.raises(UsageError, match="expected logits"):
            as_logits(bad)


def test_an_output_without_logits_is_a_located_error(tmp_path, robaudit_main):
    write_data(tmp_path)
    factory_file(tmp_path, """\
        class Scores(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(768, 3)

            def forward(self, x):
                return {"scores": self.fc(x.flatten(1))}

        def build():
            return Scores()
        """)
    code, _, err = robaudit_main("run", spec(tmp_path, "bad", "factory: plain.py:build\n"))
    assert code == 4 and "model:" in err and "returned dict; expected logits" in err


def test_init_writes_each_kind(tmp_path, robaudit_main):
    """``robaudit init --model KIND:VALUE`` writes a spec of that source that validates."""
    import yaml

    pytest.importorskip("timm")
    save_tiny_vit(tmp_path / "vit")
    write_data(tmp_path)
    net = SmallCNN().eval()
    program = torch.export.export(net, (torch.rand(2, 3, 16, 16),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "cnn.pt2")
    kinds = {"torchvision:shufflenet_v2_x0_5": {"torchvision": "shufflenet_v2_x0_5"},
             "timm:test_resnet": {"timm": "test_resnet"},
             f"huggingface:{tmp_path / 'vit'}": {"huggingface": "vit"},
             f"{tmp_path / 'cnn.pt2'}": {"export": "cnn.pt2"}}
    for i, (model, entry) in enumerate(kinds.items()):
        out = tmp_path / f"init{i}.yaml"
        code, _, err = robaudit_main("init", "--model", model, "--data", "npz",
                                     "--data-option", "path=data.npz", "--out", out)
        assert code == 0, err
        text = out.read_text()
        written = yaml.safe_load(text)["model"]
        assert {k: written[k] for k in entry} == entry
        assert robaudit_main("validate", out)[0] == 0
        if "huggingface" in entry:
            assert "mean [0.4, 0.5, 0.6], std [0.2, 0.25, 0.3]" in text
            assert "input size: 16×16" in text
        if "timm" in entry:
            assert "timm's pretrained configuration of test_resnet: input 3×160×160" in text


def test_init_points_torchscript_users_to_export(tmp_path, robaudit_main):
    write_data(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(768, 3))).save(
            str(tmp_path / "m.ts"))
    out = tmp_path / "ts.yaml"
    code, _, err = robaudit_main("init", "--model", tmp_path / "m.ts", "--data", "npz",
                                 "--data-option", "path=data.npz", "--out", out)
    assert code == 0, err
    assert "TorchScript is deprecated upstream" in out.read_text()
    assert "`export: PATH`" in out.read_text()


def test_a_missing_extra_is_named(monkeypatch, tmp_path):
    import sys

    from robaudit.errors import UsageError
    from robaudit.plugins.loaders.models import load_huggingface, load_timm

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError, match=r"timm: needs the timm package: pip install "
                                         r"'robaudit\[timm\]'"):
        load_timm("resnet18", {})
    with pytest.raises(UsageError, match=r"huggingface: needs the transformers package: pip "
                                         r"install 'robaudit\[hf\]'"):
        load_huggingface(tmp_path, own_normalize=False)


def test_huggingface_loading_draws_no_progress_bar_of_its_own(tmp_path, robaudit_main):
    import transformers

    save_tiny_vit(tmp_path / "vit")
    write_data(tmp_path)
    code, out, err = robaudit_main("run", spec(tmp_path, "hf", "huggingface: vit\n"), "-q")
    assert code == 0, out + err
    assert "Loading weights" not in out + err  # transformers' tqdm bar
    assert transformers.utils.logging.is_progress_bar_enabled()  # restored for the caller


def test_a_torchvision_model_without_weights_warns_that_it_is_random(tmp_path, robaudit_main):
    write_data(tmp_path)
    report = tmp_path / "r.json"
    code, _, err = robaudit_main("run", spec(tmp_path, "rand", "torchvision: shufflenet_v2_x0_5\n"
                                                               "kwargs: {num_classes: 3}\n"),
                                 "--json", report)
    assert code == 0
    assert "torchvision: shufflenet_v2_x0_5 has no `weights`" in err
    assert "random initialisation" in err
    [warning] = json.loads(report.read_text())["model"]["warnings"]
    assert "shufflenet_v2_x0_5" in warning
