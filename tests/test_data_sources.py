"""The built-in data sources: digits, npz, imagefolder, torchvision."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from sklearn.datasets import load_digits

from robaudit.errors import SpecError, UsageError
from robaudit.pluginmanager import Plugins, load_plugins
from robaudit.plugins.loaders.data import (
    DigitsSource,
    ImageFolderOptions,
    ImageFolderSource,
    NpzOptions,
    NpzSource,
    TorchvisionOptions,
    TorchvisionSource,
)
from robaudit.spec import load_spec


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    monkeypatch.setenv("ROBAUDIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    return load_plugins()


def test_every_source_is_registered(plugins: Plugins) -> None:
    assert {"digits", "npz", "imagefolder", "torchvision"} <= set(plugins.data_sources)


# -- digits ---------------------------------------------------------------------------------
def test_digits_shapes_ranges_and_stratified_split(tmp_path: Path) -> None:
    splits = DigitsSource().load(DigitsSource.Options(), tmp_path, seed=0)
    train, test = splits["train"], splits["test"]
    assert set(splits) == {"train", "test"}
    assert train.x.shape[1:] == test.x.shape[1:] == (1, 8, 8)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert len(train) + len(test) == 1797 and 430 <= len(test) <= 470
    both = torch.cat([train.x, test.x])
    assert both.min() == 0.0 and both.max() == 1.0
    torch.testing.assert_close(both * 16, (both * 16).round())  # pixel counts 0..16, over 16

    reference = load_digits()
    per_class = np.bincount(reference.target, minlength=10)
    test_counts = torch.bincount(test.y, minlength=10).numpy()
    train_counts = torch.bincount(train.y, minlength=10).numpy()
    np.testing.assert_array_equal(train_counts + test_counts, per_class)
    fraction = len(test) / 1797
    assert np.all(np.abs(test_counts - fraction * per_class) <= 1.0)
    # the images are the data set's images, in the class the data set gives them
    first = test.x[0, 0].numpy() * 16
    matches = np.flatnonzero((reference.images == first).all(axis=(1, 2)))
    assert matches.size and int(test.y[0]) in reference.target[matches]


def test_digits_split_is_fixed_and_independent_of_the_seed(tmp_path: Path) -> None:
    a = DigitsSource().load(DigitsSource.Options(), tmp_path, seed=0)
    b = DigitsSource().load(DigitsSource.Options(), tmp_path, seed=123)
    assert torch.equal(a["test"].x, b["test"].x) and torch.equal(a["train"].y, b["train"].y)
    a["test"].x.zero_()  # callers get fresh tensors: the cache is not shared mutable state
    assert DigitsSource().load(DigitsSource.Options(), tmp_path, seed=0)["test"].x.max() == 1.0


# -- npz ------------------------------------------------------------------------------------
def _npz(folder: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = folder / name
    np.savez(path, **arrays)
    return path


def test_npz_single_split_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, 3, 4, 4)).astype(np.float64)
    y = np.array([0, 2, 1, 2, 0], dtype=np.int32)
    _npz(tmp_path, x=x, y=y)
    splits = NpzSource().load(NpzOptions(path="data.npz"), tmp_path, seed=0)
    assert set(splits) == {"test"}
    assert splits["test"].x.dtype == torch.float32 and splits["test"].y.dtype == torch.int64
    np.testing.assert_allclose(splits["test"].x.numpy(), x, rtol=1e-6)
    np.testing.assert_array_equal(splits["test"].y.numpy(), y)


def test_npz_named_splits_vectors_and_scale(tmp_path: Path) -> None:
    x_train = np.arange(12, dtype=np.uint8).reshape(4, 3) * 20
    x_test = np.full((2, 3), 255, dtype=np.uint8)
    _npz(tmp_path, x_train=x_train, y_train=np.array([0, 1, 0, 1]),
         x_test=x_test, y_test=np.array([1, 1]))
    splits = NpzSource().load(NpzOptions(path="data.npz", scale=1 / 255), tmp_path, seed=0)
    assert set(splits) == {"train", "test"}
    np.testing.assert_allclose(splits["train"].x.numpy(), x_train / 255, rtol=1e-6)
    assert torch.equal(splits["test"].x, torch.ones(2, 3))
    assert splits["train"].y.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("arrays", "named", "expected"),
    [
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4, dtype=int)}, "`x`", "N×C×H×W"),
        ({"x_test": np.zeros((4, 1, 8, 8)), "y_test": np.zeros(3, dtype=int)},
         "`y_test`", "expected (4,)"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "`y`", "integer"),
        ({"x_train": np.zeros((4, 2))}, "`y_train`", "no `y_train`"),
        ({"images": np.zeros((4, 2))}, "images", "no `x`"),
    ],
)
def test_npz_bad_arrays_name_the_file_and_the_array(
    tmp_path: Path, arrays: dict[str, np.ndarray], named: str, expected: str
) -> None:
    path = _npz(tmp_path, "bad.npz", **arrays)
    with pytest.raises(UsageError) as info:
        NpzSource().load(NpzOptions(path="bad.npz"), tmp_path, seed=0)
    message = str(info.value)
    assert message.startswith("data.path:")
    assert str(path) in message and named in message and expected in message


def test_npz_missing_file_is_a_spec_validation_error(tmp_path: Path, plugins: Plugins) -> None:
    with pytest.raises(ValidationError, match="file not found"):
        NpzOptions.model_validate({"path": "nope.npz"}, context={"base_dir": tmp_path})
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        audit: npz
        model:
          factory: robaudit.zoo:digits_resnet
        data:
          source: npz
          path: missing/data.npz
        checks:
          - metric: clean_accuracy
    """))
    with pytest.raises(SpecError) as info:
        load_spec(spec, plugins)
    [problem] = info.value.problems
    assert f"{spec}:6: data.path:" in problem and str(tmp_path / "missing/data.npz") in problem


def test_npz_spec_with_wrong_shapes_fails_when_loaded(tmp_path: Path, plugins: Plugins) -> None:
    _npz(tmp_path, x=np.zeros((3, 8, 8), dtype=np.float32), y=np.zeros(3, dtype=np.int64))
    options = NpzOptions.model_validate({"path": "data.npz"}, context={"base_dir": tmp_path})
    source = plugins.data_sources["npz"]
    with pytest.raises(UsageError, match=r"array `x` has shape \(3, 8, 8\)"):
        source.load(options, tmp_path, seed=0)


# -- imagefolder ----------------------------------------------------------------------------
def _png(path: Path, value: int, color: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode, fill = ("RGB", (value, 0, 255 - value)) if color else ("L", value)
    Image.new(mode, (6, 6), fill).save(path)


def test_imagefolder_class_folders_resized_in_unit_range(tmp_path: Path) -> None:
    for name, value in (("b_dog", 51), ("a_cat", 204)):
        for i in range(2):
            _png(tmp_path / "images" / name / f"{i}.png", value + i)
    splits = ImageFolderSource().load(
        ImageFolderOptions(path="images", size=3, channels=1), tmp_path, seed=0
    )
    assert set(splits) == {"test"}
    data = splits["test"]
    assert data.x.shape == (4, 1, 3, 3) and data.x.dtype == torch.float32
    assert data.y.tolist() == [0, 0, 1, 1]  # classes in sorted order: a_cat, b_dog
    expected = torch.tensor([204, 205, 51, 52], dtype=torch.float32) / 255
    torch.testing.assert_close(data.x[:].mean(dim=(1, 2, 3)), expected)  # decoded on demand


def test_imagefolder_split_folders_share_class_indices(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "ant" / "0.png", 10, color=True)
    _png(tmp_path / "train" / "bee" / "0.png", 20, color=True)
    _png(tmp_path / "train" / "cow" / "0.png", 30, color=True)
    _png(tmp_path / "test" / "cow" / "0.png", 40, color=True)  # the test split lacks ant, bee
    splits = ImageFolderSource().load(ImageFolderOptions(path=".", size=2), tmp_path, seed=0)
    assert set(splits) == {"train", "test"}
    assert splits["train"].y.tolist() == [0, 1, 2] and splits["test"].y.tolist() == [2]
    assert splits["test"].x.shape == (1, 3, 2, 2)
    torch.testing.assert_close(splits["test"].x[0, :, 0, 0], torch.tensor([40, 0, 215]) / 255)


def test_imagefolder_errors_are_located(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="folder not found"):
        ImageFolderOptions.model_validate({"path": "nowhere", "size": 8},
                                          context={"base_dir": tmp_path})
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"^data\.path: .*empty"):
        ImageFolderSource().load(ImageFolderOptions(path="empty", size=4), tmp_path, seed=0)


# -- torchvision ----------------------------------------------------------------------------
def test_torchvision_missing_data_is_a_usage_error_and_never_downloads(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    root.mkdir()
    options = TorchvisionOptions.model_validate({"dataset": "MNIST", "root": "datasets"},
                                                context={"base_dir": tmp_path})
    with pytest.raises(UsageError) as info:
        TorchvisionSource().load(options, tmp_path, seed=0)
    message = str(info.value)
    assert message.startswith("data.root:") and str(root) in message
    assert "never downloads" in message and "MNIST" in message
    assert list(root.rglob("*")) == []  # nothing was fetched


def test_torchvision_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no data set class 'Mnist'"):
        TorchvisionOptions(dataset="Mnist", root=".")
    with pytest.raises(ValidationError, match="folder not found"):
        TorchvisionOptions.model_validate({"dataset": "CIFAR10", "root": "absent"},
                                          context={"base_dir": tmp_path})


def _idx(path: Path, array: np.ndarray) -> None:
    """Write an array in the IDX format of MNIST's raw files (big-endian header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_reads_a_data_set_already_on_disk(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    images = {"train": np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256,
              "t10k": np.full((2, 28, 28), 255)}
    labels = {"train": np.array([7, 0, 3]), "t10k": np.array([9, 1])}
    for prefix in ("train", "t10k"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images[prefix])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels[prefix])
    options = TorchvisionOptions.model_validate({"dataset": "MNIST", "root": "data"},
                                                context={"base_dir": tmp_path})
    splits = TorchvisionSource().load(options, tmp_path, seed=0)
    assert splits["train"].x.shape == (3, 1, 28, 28) and splits["train"].y.tolist() == [7, 0, 3]
    np.testing.assert_allclose(splits["train"].x[:, 0].numpy(), images["train"] / 255, rtol=1e-6)
    assert torch.equal(splits["test"].x, torch.ones(2, 1, 28, 28))
    assert splits["test"].y.tolist() == [9, 1]
