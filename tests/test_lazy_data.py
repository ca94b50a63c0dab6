"""Data at the sizes users audit (design §8, issue #22): a split read on demand from an
indexable data set. An image folder decoded on the fly gives the values of the same images
decoded eagerly into an .npz; ``limit`` chooses its samples before anything is decoded; lazy
inputs index, slice and shape as a tensor; the transform comes from the spec or from the
model's Hugging Face / timm configuration and is recorded in the report; bad keys are located
usage errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from memory_probe import Synthetic
from PIL import Image
from torchvision import transforms

from robaudit.context import DataSplit
from robaudit.inputsize import huggingface_options, timm_options
from robaudit.lazydata import LazyInputs, row_mean, rows_equal
from robaudit.preparation import seeded_subset

CLASSES = ("ant", "bee")
PER_SPLIT = 20  # images per split (train/ and test/), half of each class

MODEL = """\
from torch import nn


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 15 * 15, 8), nn.ReLU(), nn.Linear(8, 2))
"""

CHECKS = """\
checks:
  - id: accuracy
    metric: clean_accuracy
  - id: pgd
    metric: pgd_accuracy
    params: {eps: 0.03, steps: 5}
  - id: spearman
    metric: rank_order_spearman
    params: {pairs: 10, trials: 20}
  - id: itw
    metric: intertwinedness
    params: {n: 3}
"""


def image_folder(root: Path) -> list[Path]:
    """train/ and test/ folders of 3×40×48 PNGs (height 40, width 48) of two classes,
    random pixels tinted by class; the files in ImageFolder's order."""
    rng = np.random.default_rng(0)
    files = []
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            for i in range(PER_SPLIT // 2):
                pixels = rng.integers(0, 256, (40, 48, 3))
                pixels[..., label] = pixels[..., label] // 2 + 128
                path = root / split / name / f"{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
                files.append(path)
    return files


def eager_npz(root: Path, size: int) -> Path:
    """The same images decoded up front with torchvision's own transforms (shorter side to
    ``size``, centre crop, to_tensor) into x_<split>/y_<split> arrays."""
    pipeline = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                   transforms.ToTensor()])
    arrays = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, name in enumerate(CLASSES):
            for path in sorted((root / split / name).iterdir()):
                with Image.open(path) as image:
                    xs.append(pipeline(image.convert("RGB")))
                ys.append(label)
        arrays[f"x_{split}"] = torch.stack(xs).numpy()
        arrays[f"y_{split}"] = np.array(ys)
    path = root.parent / "eager.npz"
    np.savez(path, **arrays)
    return path


def write_spec(folder: Path, data: str, name: str) -> Path:
    (folder / "cnn_model.py").write_text(MODEL)
    path = folder / f"{name}.yaml"
    path.write_text(f"audit: {name}\nmodel:\n  factory: cnn_model.py:cnn\ndata:\n"
                    + textwrap.indent(textwrap.dedent(data), "  ") + "seed: 3\n" + CHECKS)
    return path


def run(robaudit_main, spec: Path, *extra: str | Path) -> dict:
    report = spec.with_suffix(".json")
    code, out, err = robaudit_main("run", spec, "--json", report, "-q", *extra)
    assert code in (0, 1), out + err
    return json.loads(report.read_text())


def test_image_folder_on_the_fly_equals_the_eagerly_decoded_images(tmp_path, robaudit_main):
    image_folder(tmp_path / "images")
    npz = eager_npz(tmp_path / "images", 32)
    html = tmp_path / "lazy.html"
    lazy = run(robaudit_main, write_spec(tmp_path, """\
        source: imagefolder
        path: images
        image_size: 32
        workers: 2
        batch_size: 8
        """, "lazy"), "--html", html)
    eager = run(robaudit_main, write_spec(tmp_path, f"""\
        source: npz
        path: {npz.name}
        batch_size: 8
        """, "eager"))
    assert [c["id"] for c in lazy["checks"]] == ["accuracy", "pgd", "spearman", "itw"]
    for mine, theirs in zip(lazy["checks"], eager["checks"], strict=True):
        assert mine["outcome"] == theirs["outcome"] != "error", (mine, theirs)
        assert mine["value"] == pytest.approx(theirs["value"], abs=1e-6), mine["id"]
        if theirs.get("samples") is not None:
            np.testing.assert_allclose(mine["samples"], theirs["samples"], atol=1e-6)
    data = lazy["data"]
    assert data["sizes"] == {"test": PER_SPLIT, "train": PER_SPLIT}
    assert data["transform"] == {"resize_shorter_side": 32, "center_crop": 32,
                                 "interpolation": "bilinear", "channels": 3}
    assert data["workers"] == 2 and "transform_from" not in data
    assert data["fingerprint_of"] == "image paths, sizes and modification times"
    assert "transform" not in eager["data"]
    assert ("<dt>transform</dt><dd>resize_shorter_side 32, center_crop 32, interpolation "
            "bilinear, channels 3; decoded on the fly by 2 DataLoader worker(s)</dd>"
            in html.read_text())


def test_limit_chooses_samples_before_any_image_is_decoded(tmp_path, robaudit_main,
                                                          monkeypatch):
    from robaudit.plugins.loaders import data as loaders

    files = image_folder(tmp_path / "images")
    decoded: list[str] = []
    read = loaders.read_image

    def counting(path: str, channels: int):
        decoded.append(path)
        return read(path, channels)

    monkeypatch.setattr(loaders, "read_image", counting)
    options = loaders.ImageFolderOptions(path="images", image_size=32)
    splits = loaders.ImageFolderSource().load(options, tmp_path, seed=0)
    subset = seeded_subset(splits["test"], 5, seed=0)
    assert len(subset) == 5 and subset.lazy and decoded == []  # chosen, nothing decoded
    assert subset.x.shape == (5, 3, 32, 32) and len(set(decoded)) == 1  # one sample, shaped

    decoded.clear()
    report = run(robaudit_main, write_spec(tmp_path, """\
        source: imagefolder
        path: images
        image_size: 32
        workers: 0
        limit: 5
        reference_limit: 4
        batch_size: 8
        """, "limited"))
    assert report["data"]["sizes"] == {"test": 5, "train": 4}
    assert all(c["outcome"] != "error" for c in report["checks"]), report["checks"]
    test_files = {str(f) for f in files if f.parts[-3] == "test"}
    seen = set(decoded)
    assert len(seen & test_files) == 5 and len(seen - test_files) == 4, sorted(seen)
    assert len(seen) < len(files) // 4


@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_inputs_index_and_read_as_the_tensor_would(workers):
    data = Synthetic(10, (2, 3, 4))  # sample i is 2×3×4 values drawn from seed i
    lazy = LazyInputs(data, workers=workers)
    whole = torch.stack([data[i] for i in range(10)])
    assert len(lazy) == 10 and lazy.shape == whole.shape and lazy.dtype == whole.dtype
    assert lazy.dim() == 4 and lazy.is_floating_point() and lazy[3].numel() == 24
    mask = torch.arange(10) % 3 == 0
    grid = torch.tensor([[1, 9], [4, 4]])
    for key in (3, -1, slice(2, 9, 3), slice(None), torch.tensor([7, 0, 7]), grid, mask,
                [5, 2], np.int64(4), (2, 1, slice(None), 0), (grid, 0)):
        assert torch.equal(lazy[key], whole[key]), key
    with pytest.raises(IndexError):
        lazy[10]
    subset = lazy.subset(torch.tensor([8, 1, 5]))
    assert torch.equal(subset[:], whole[[8, 1, 5]]) and subset.workers == workers
    assert torch.equal(subset.subset(torch.tensor([2]))[0], whole[5])
    parts = list(lazy.units([(0, 4), (8, 10), (4, 8)]))
    assert torch.equal(torch.cat(parts), whole[[0, 1, 2, 3, 8, 9, 4, 5, 6, 7]])
    split = DataSplit(lazy, torch.arange(10))
    assert len(split) == 10 and split.subset(torch.tensor([6])).y.tolist() == [6]
    torch.testing.assert_close(row_mean(lazy, 3), whole.flatten(1).mean(0, keepdim=True))
    assert not rows_equal(lazy, lazy[:1], 3) and rows_equal(subset.subset(torch.tensor([0, 0])),
                                                             whole[8], 1)


def test_hugging_face_and_timm_configs_give_their_evaluation_transform():
    vit = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2}
    assert huggingface_options(vit) == {"size": 224, "interpolation": "bilinear"}
    convnext = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3}
    assert huggingface_options(convnext) == {"image_size": 224, "resize": 256,
                                             "interpolation": "bicubic"}
    deit = {"size": {"shortest_edge": 256}, "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224}, "resample": 3}
    assert huggingface_options(deit) == {"image_size": 224, "resize": 256,
                                         "interpolation": "bicubic"}
    assert huggingface_options({}) is None

    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", num_classes=3)
    options = timm_options(model)
    assert options is not None
    # timm's own evaluation transform (without its Normalize) on an image gives the same pixels
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 180, 3))
                            .astype(np.uint8))
    config = timm.data.resolve_data_config({}, model=model)
    theirs = transforms.Compose(timm.data.create_transform(**config).transforms[:-1])(image)
    from robaudit.plugins.loaders.data import ImageFolderOptions, ImageTransform

    mine = ImageTransform.of(ImageFolderOptions(path=".", **options))(image)
    torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)


def test_image_size_comes_from_the_hugging_face_processor(tmp_path, robaudit_main):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, num_labels=2)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, do_normalize=False
                                   ).save_pretrained(tmp_path / "vit")
    files = image_folder(tmp_path / "images")
    spec = tmp_path / "hf.yaml"
    spec.write_text(textwrap.dedent("""\
        audit: hf
        model:
          huggingface: vit
        data: {source: imagefolder, path: images, workers: 0}
        checks:
          - metric: clean_accuracy
        """))
    report = run(robaudit_main, spec)
    assert report["data"]["transform"]["resize"] == [32, 32]
    assert report["data"]["transform_from"] == "huggingface vit/preprocessor_config.json"
    # the decoded inputs are the processor's own pixel values, to one grey level (transformers
    # resizes with torch's antialiased kernel, torchvision's PIL path rounds its own way)
    processor = transformers.ViTImageProcessor.from_pretrained(tmp_path / "vit")
    from robaudit.plugins.loaders.data import ImageFolderOptions, ImageTransform

    with Image.open(files[0]) as image:
        theirs = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        mine = ImageTransform.of(ImageFolderOptions(path=".", size=32))(image.convert("RGB"))
    torch.testing.assert_close(mine, theirs, atol=1 / 255 + 1e-6, rtol=0)
    assert float((mine - theirs).abs().mean()) < 0.1 / 255


def test_an_image_folder_without_a_size_names_the_key(tmp_path, robaudit_main):
    image_folder(tmp_path / "images")
    spec = write_spec(tmp_path, "source: imagefolder\npath: images\n", "nosize")
    code, _, err = robaudit_main("run", spec)
    assert code == 4 and "data.image_size: the image folder needs the model's input size" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("line", "key", "expected"), [
    ("image_size: -1", "data.image_size", "greater than or equal to 1"),
    ('workers: "x"', "data.workers", "valid integer"),
    ("workers: -2", "data.workers", "greater than or equal to 0"),
    ("image_size: 32\nresize: 16", "data", "smaller than image_size"),
])
def test_bad_data_keys_are_located_usage_errors(tmp_path, robaudit_main, line, key, expected):
    image_folder(tmp_path / "images")
    spec = write_spec(tmp_path, f"source: imagefolder\npath: images\n{line}\n", "bad")
    for command in ("run", "validate"):
        code, out, err = robaudit_main(command, spec)
        assert code == 4, out + err
        assert f"{spec}:" in err and f"{key}:" in err and expected in err, err
        assert "Traceback" not in err


class WithNaN(Synthetic):
    """2×3×4 samples drawn from their seeds, sample 3 NaN."""

    def __init__(self, n: int) -> None:
        super().__init__(n, (2, 3, 4))

    def __getitem__(self, index: int) -> torch.Tensor:
        x = super().__getitem__(index)
        return x * float("nan") if index == 3 else x


def test_the_finiteness_scan_reads_lazy_inputs_unless_the_source_vouches(tmp_path,
                                                                         monkeypatch):
    from robaudit.datafit import input_problems
    from robaudit.plugins.loaders import data as loaders

    lazy = DataSplit(LazyInputs(WithNaN(8), workers=1), torch.zeros(8, dtype=torch.long))
    [problem] = input_problems({"test": lazy}, ["test"], 3, lambda loc, text: text)
    assert problem == "split 'test': 1 of 8 samples have NaN or infinite inputs"

    image_folder(tmp_path / "images")
    decoded: list[str] = []
    monkeypatch.setattr(loaders, "read_image", lambda path, channels: decoded.append(path))
    splits = loaders.ImageFolderSource().load(
        loaders.ImageFolderOptions(path="images", image_size=32), tmp_path, seed=0)
    assert input_problems(splits, ["test", "train"], 8, lambda loc, text: text) == []
    assert decoded == []  # image pixels are finite: no decoding pass


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_a_usage_error_naming_the_file(tmp_path, robaudit_main,
                                                              workers):
    files = image_folder(tmp_path / "images")
    files[25].write_bytes(b"not a png")
    spec = write_spec(tmp_path, f"source: imagefolder\npath: images\nimage_size: 32\n"
                                f"workers: {workers}\n", "corrupt")
    code, _, err = robaudit_main("run", spec)
    assert code == 4 and f"{spec}: data.path: cannot read image {files[25]}" in err, err
    assert "Traceback" not in err
