"""The zoo: the DigitsResNet structure, the training recipe, the registry, the shipped model."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import robaudit.zoo
from robaudit.errors import UsageError
from robaudit.plugins.loaders.data import digits_splits
from robaudit.zoo import ZOO, ZooEntry, digits_resnet, train_model
from robaudit.zoo.resnet import BasicBlock, DigitsResNet
from robaudit.zoo.training import accuracy, fit, random_shift

SHIPPED = Path(__file__).parent.parent / "specs" / "models" / "digits_resnet.pt"


def test_basic_block_attribute_contract() -> None:
    kept = BasicBlock(8, 8)
    assert isinstance(kept.shortcut, nn.Identity)
    assert [type(m) for m in kept.branch] == [
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d
    ]
    assert all(m.kernel_size == (3, 3) for m in kept.branch if isinstance(m, nn.Conv2d))

    down = BasicBlock(8, 16, stride=2)
    assert isinstance(down.shortcut, nn.Sequential)
    conv, bn = down.shortcut
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    assert down.branch[0].stride == (2, 2) and down.branch[3].stride == (1, 1)


def test_basic_block_forward_is_relu_of_branch_plus_shortcut() -> None:
    torch.manual_seed(0)
    block = BasicBlock(4, 6, stride=2).eval()
    x = torch.randn(3, 4, 8, 8)
    expected = torch.clamp(block.branch(x) + block.shortcut(x), min=0)
    out = block(x)
    assert out.shape == (3, 6, 4, 4)
    torch.testing.assert_close(out, expected)
    assert (out == 0).any() and (out > 0).any()


def test_digits_resnet_is_a_sequential_ending_in_pool_flatten_linear() -> None:
    model = digits_resnet()
    assert isinstance(model, DigitsResNet) and isinstance(model, nn.Sequential)
    layers = list(model)
    assert [type(m) for m in layers[:3]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in layers[-3:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert all(isinstance(m, BasicBlock) for m in layers[3:-3])
    assert model.fc.in_features == 32 and model.fc.out_features == 10
    assert model.eval()(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    deeper = digits_resnet(widths=(8, 16, 24), blocks=(2, 1, 1))
    assert sum(isinstance(m, BasicBlock) for m in deeper) == 4
    assert deeper.eval()(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_random_shift_matches_a_loop_over_samples() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(6, 2, 5, 4)
    shifted = random_shift(x, 2, generator)
    shifts = torch.randint(-2, 3, (6, 2), generator=torch.Generator().manual_seed(3))
    for i, (dy, dx) in enumerate(shifts.tolist()):
        expected = torch.zeros_like(x[i])
        for r in range(5):
            for c in range(4):
                if 0 <= r - dy < 5 and 0 <= c - dx < 4:
                    expected[:, r, c] = x[i, :, r - dy, c - dx]
        torch.testing.assert_close(shifted[i], expected)


def _tiny_run(seed: int) -> dict[str, torch.Tensor]:
    data = digits_splits()["train"]
    torch.manual_seed(0)
    model = digits_resnet(widths=(4,), blocks=(1,))
    fit(model, data.x[:96], data.y[:96], epochs=2, lr=0.05, batch_size=32, seed=seed,
        max_shift=1)
    return model.state_dict()


def test_training_is_deterministic_given_the_seed() -> None:
    first, again, other = _tiny_run(1), _tiny_run(1), _tiny_run(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fit_trains_any_classifier_on_vectors() -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 3, generator=generator) + 3.0 * (2 * y.float() - 1).unsqueeze(1)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    trained = fit(model, x, y, epochs=5, lr=0.1, batch_size=32, seed=0)
    assert not trained.training
    assert accuracy(trained, x, y) == 1.0


def test_zoo_collects_entries_of_every_submodule(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "robaudit_zoo_extra"
    extra.mkdir()
    (extra / "tiny_family.py").write_text(textwrap.dedent("""
        from torch import nn
        from robaudit.zoo import ZooEntry
        ENTRIES = {"tiny": ZooEntry(name="tiny", build=lambda: nn.Linear(2, 2), data=dict,
                                    epochs=1, lr=0.1, batch_size=4)}
    """))
    monkeypatch.setattr(robaudit.zoo, "__path__", [*robaudit.zoo.__path__, str(extra)])
    try:
        found = robaudit.zoo._collect()
    finally:
        sys.modules.pop("robaudit.zoo.tiny_family", None)
    assert isinstance(found["tiny"], ZooEntry) and found["tiny"].epochs == 1
    assert found["digits_resnet"] is ZOO["digits_resnet"]
    assert "tiny" not in ZOO


def test_unknown_zoo_model_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown model 'nope'; known: .*digits_resnet"):
        train_model("nope", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_zoo_recipe_reaches_95_percent(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "digits_resnet.pt"
    report = train_model("digits_resnet", out, seed=0)
    assert report["test_accuracy"] >= 0.95
    assert report["train_accuracy"] >= report["test_accuracy"] - 0.02
    model = digits_resnet()
    model.load_state_dict(torch.load(out, weights_only=True))
    test = digits_splits()["test"]
    assert accuracy(model, test.x, test.y) == report["test_accuracy"]


def test_shipped_checkpoint_loads_safely_and_reaches_95_percent() -> None:
    assert SHIPPED.stat().st_size < 1_000_000
    state = torch.load(SHIPPED, weights_only=True, map_location="cpu")
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    model = digits_resnet()
    model.load_state_dict(state)
    test = digits_splits()["test"]
    assert accuracy(model, test.x, test.y) >= 0.95
