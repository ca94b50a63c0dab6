"""The built-in data sources: ``digits``, ``npz``, ``imagefolder`` and ``torchvision``.

Each loads every split it has on the CPU: ``x`` float32 N×C×H×W (or N×D), ``y`` int64 N; ``x``
is a tensor, except for ``imagefolder``, whose images are decoded on demand (design §8).
Nothing is ever downloaded: ``digits`` ships with scikit-learn, the others read files that must
already be on disk. Problems are :class:`robaudit.UsageError` s that name the key (``data.path``),
the file and what was expected.
"""

from __future__ import annotations

import functools
import inspect
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from robaudit import UsageError, hookimpl
from robaudit.datasource import DataSource, SourceOptions

if TYPE_CHECKING:
    import torch

    from robaudit import DataSplit

#: The fixed split of the digits data set: a quarter for test, stratified by class. It does not
#: depend on the spec's seed, so that every audit and the shipped model see the same test set.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


# -- digits ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def digits_splits() -> dict[str, DataSplit]:
    """scikit-learn's 8×8 digits (1797 images, 10 classes) as 1×8×8 images in [0, 1] (the
    pixel counts 0..16 divided by 16), split once into "train" (75%) and "test" (25%),
    stratified by class with a fixed seed. Fresh tensors on every call; the arrays are cached."""
    import torch

    from robaudit import DataSplit

    return {
        name: DataSplit(torch.tensor(x), torch.tensor(y))
        for name, (x, y) in _digits_arrays().items()
    }


class DigitsOptions(SourceOptions):
    transform: Literal["none", "rot90", "flip", "invert"] = Field(
        "none", description="an offline out-of-distribution variant of every image: rotated "
                            "by 90°, flipped left to right, or inverted (1 − x)")


def transformed(x: torch.Tensor, transform: str) -> torch.Tensor:
    """N×C×H×W images rotated by 90°, flipped left to right, inverted, or as they are."""
    import torch

    if transform == "rot90":
        return torch.rot90(x, 1, dims=(2, 3)).contiguous()
    if transform == "flip":
        return torch.flip(x, dims=(3,)).contiguous()
    if transform == "invert":
        return 1.0 - x
    return x


class DigitsSource(DataSource):
    """``source: digits`` — the default data set of robaudit's audits. ``transform`` turns it
    into out-of-distribution data of the same classes, e.g. for ``data.ood``:
    ``ood: {source: digits, split: test, transform: rot90}``."""

    name: ClassVar[str] = "digits"
    Options: ClassVar[type[SourceOptions]] = DigitsOptions

    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, DataSplit]:
        from robaudit import DataSplit

        return {name: DataSplit(transformed(split.x, options.transform), split.y)
                for name, split in digits_splits().items()}


# -- helpers --------------------------------------------------------------------------------
def _existing(value: str, info: ValidationInfo, kind: Literal["file", "folder"]) -> str:
    """Check at validation time (``robaudit validate``) that the path exists."""
    base = (info.context or {}).get("base_dir")
    if base is not None:
        path = Path(base) / value
        found = path.is_file() if kind == "file" else path.is_dir()
        if not found:
            raise ValueError(f"{kind} not found: {path}")
    return value


def _as_split(x: torch.Tensor, y: torch.Tensor) -> DataSplit:
    import torch

    from robaudit import DataSplit

    return DataSplit(x.to(torch.float32).contiguous(), y.to(torch.int64).contiguous())


# -- npz ------------------------------------------------------------------------------------
class NpzOptions(SourceOptions):
    path: str = Field(description="the .npz file, relative to the spec")
    scale: float = Field(1.0, gt=0, description="multiply x by this (e.g. 1/255 for uint8)")

    @field_validator("path")
    @classmethod
    def _file_exists(cls, value: str, info: ValidationInfo) -> str:
        return _existing(value, info, "file")


class NpzSource(DataSource):
    """``source: npz`` — arrays ``x_<split>`` / ``y_<split>`` for each split, or ``x`` / ``y``
    for a single split named "test". ``x`` is N×C×H×W or N×D, ``y`` N integer labels."""

    name: ClassVar[str] = "npz"
    Options: ClassVar[type[SourceOptions]] = NpzOptions

    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, DataSplit]:
        import torch

        file = base_dir / options.path
        if not file.is_file():
            raise UsageError(f"data.path: file not found: {file}")
        try:
            with np.load(file, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UsageError(f"data.path: cannot read {file} as .npz: {exc}") from None
        names = sorted(key[2:] for key in arrays if key.startswith("x_") and len(key) > 2)
        if "x" in arrays:
            if "test" in names:
                raise UsageError(
                    f"data.path: {file} holds both `x` and `x_test`; `x` is the split named "
                    "test, so keep only one of them"
                )
            names.append("test")
        if not names:
            raise UsageError(
                f"data.path: {file} holds no `x` nor `x_<split>` array "
                f"(found: {', '.join(sorted(arrays)) or 'nothing'})"
            )
        splits = {}
        for split in names:
            x_key, y_key = ("x", "y") if split == "test" and "x" in arrays else (
                f"x_{split}", f"y_{split}")
            if y_key not in arrays:
                raise UsageError(f"data.path: {file} has `{x_key}` but no `{y_key}` array")
            x, y = _check_npz_arrays(file, x_key, arrays[x_key], y_key, arrays[y_key])
            splits[split] = _as_split(torch.from_numpy(x) * options.scale, torch.from_numpy(y))
        return splits


def _check_npz_arrays(
    file: Path, x_key: str, x: np.ndarray, y_key: str, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Check the shapes and dtypes of one split's arrays; the message names file and array."""
    where = f"data.path: {file}"
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise UsageError(
            f"{where}: array `{x_key}` has shape {x.shape}; expected N×C×H×W (4-D images) "
            "or N×D (2-D vectors) with N > 0"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UsageError(f"{where}: array `{x_key}` has dtype {x.dtype}; expected numbers")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UsageError(
            f"{where}: array `{y_key}` has shape {y.shape}; expected ({x.shape[0]},), "
            f"one label per row of `{x_key}`"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{where}: array `{y_key}` has dtype {y.dtype}; expected integer labels")
    if y.min() < 0:
        raise UsageError(f"{where}: array `{y_key}` has negative labels; expected 0..K-1")
    return x.astype(np.float32), y.astype(np.int64)


# -- imagefolder ----------------------------------------------------------------------------
#: Sub-folders that name splits (not classes) in an image folder.
SPLIT_FOLDERS = ("train", "val", "test")

#: The DataLoader processes that decode an image folder when ``data.workers`` is not given.
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """``min(4, CPU count)``: decoding images is the cost of a whole-split pass."""
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


class ImageFolderOptions(SourceOptions):
    path: str = Field(
        description="a folder of class folders, or of train/ val/ test/ folders of class folders"
    )
    size: int | None = Field(None, ge=1, description="resize every image to size×size (the "
                                                     "aspect ratio is not kept); or image_size")
    image_size: int | None = Field(
        None, ge=1, description="the model's input size: resize the shorter side to `resize`, "
                                "then crop the centre image_size×image_size; default (with "
                                "neither size nor image_size): the Hugging Face image processor's"
                                " or timm's pretrained configuration of the model")
    resize: int | None = Field(None, ge=1, description="the shorter side before the centre crop "
                                                       "(default: image_size), e.g. 256 for 224")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="how images are resized")
    channels: Literal[1, 3] = Field(3, description="1 = grayscale, 3 = RGB")

    @field_validator("path")
    @classmethod
    def _folder_exists(cls, value: str, info: ValidationInfo) -> str:
        return _existing(value, info, "folder")

    @model_validator(mode="after")
    def _one_size(self) -> ImageFolderOptions:
        if self.size is not None and (self.image_size is not None or self.resize is not None):
            raise ValueError("give either `size` (a resize to size×size) or `image_size` (with "
                             "an optional `resize`), not both")
        if self.resize is not None and self.image_size is None:
            raise ValueError("`resize` goes with `image_size` (the centre crop after it)")
        if self.resize is not None and self.image_size is not None \
                and self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) is smaller than image_size "
                             f"({self.image_size}): the crop would not fit")
        return self


@dataclass(frozen=True)
class ImageTransform:
    """How an image file becomes an input: resized to ``size`` (height, width) exactly, or its
    shorter side resized to ``resize`` and the centre ``crop``×``crop`` kept; then a float
    tensor in [0, 1] (torchvision's ``to_tensor``)."""

    size: tuple[int, int] | None = None
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    channels: int = 3

    @classmethod
    def of(cls, options: ImageFolderOptions) -> ImageTransform:
        if options.size is not None:
            return cls(size=(options.size, options.size), interpolation=options.interpolation,
                       channels=options.channels)
        if options.image_size is None:
            raise UsageError("data.image_size: the image folder needs the model's input size: "
                             "give `image_size` (and `resize`, the shorter side before the "
                             "centre crop) or `size`; only a Hugging Face or timm model source "
                             "provides a default")
        return cls(resize=options.resize or options.image_size, crop=options.image_size,
                   interpolation=options.interpolation, channels=options.channels)

    def describe(self) -> dict[str, Any]:
        """The transform as the report records it."""
        steps: dict[str, Any] = ({"resize": list(self.size)} if self.size is not None else
                                 {"resize_shorter_side": self.resize, "center_crop": self.crop})
        return {**steps, "interpolation": self.interpolation, "channels": self.channels}

    def __call__(self, image: Any) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as tf

        mode = InterpolationMode(self.interpolation)
        if self.size is not None:
            image = tf.resize(image, list(self.size), interpolation=mode)
        else:
            image = tf.center_crop(tf.resize(image, self.resize, interpolation=mode), self.crop)
        return tf.to_tensor(image)


def read_image(path: str, channels: int) -> Any:
    """The PIL image of a file, in RGB (3 channels) or grayscale from RGB (1 channel)."""
    from PIL import Image

    with open(path, "rb") as stream:
        image = Image.open(stream).convert("RGB")
    return image.convert("L") if channels == 1 else image


class ImageFiles:
    """The images of one split, decoded on demand: ``files[i]`` read and transformed when
    sample i is asked for (a :class:`robaudit.lazydata.SampleSet`). A sample's key is its path
    relative to ``root``, its size and its modification time: the data fingerprint hashes
    those, not the pixels."""

    #: pixels of image files, scaled to [0, 1], are never NaN or infinite
    finite = True

    def __init__(self, root: Path, files: list[str], transform: ImageTransform) -> None:
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            image = read_image(path, self.transform.channels)
        except OSError as exc:
            raise UsageError(f"data.path: cannot read image {path}: {exc}") from None
        return self.transform(image)

    def sample_key(self, index: int) -> bytes:
        path = Path(self.files[index])
        stat = path.stat()
        return f"{path.relative_to(self.root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}"\
            .encode()

    def describe(self) -> dict[str, Any]:
        return {"transform": self.transform.describe(),
                "fingerprint_of": "image paths, sizes and modification times"}


class ImageFolderSource(DataSource):
    """``source: imagefolder`` — images in class folders (the layout of
    ``torchvision.datasets.ImageFolder``), decoded on the fly (design §8): each split is lazy
    inputs over its files (:class:`robaudit.lazydata.LazyInputs`), read by ``workers``
    DataLoader processes in whole-split passes; labels are known without decoding. Images are
    resized to ``size``×``size``, or resized (shorter side) and centre-cropped to
    ``image_size``, in [0, 1]. With split folders (``train/``, ``val/``, ``test/``) each is a
    split; otherwise the folder is the single split "test". Class indices follow the sorted
    class names of all splits together."""

    name: ClassVar[str] = "imagefolder"
    Options: ClassVar[type[SourceOptions]] = ImageFolderOptions

    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, DataSplit]:
        import torch
        from torchvision import datasets

        from robaudit import DataSplit
        from robaudit.lazydata import LazyInputs

        root = base_dir / options.path
        if not root.is_dir():
            raise UsageError(f"data.path: folder not found: {root}")
        folders = {s: root / s for s in SPLIT_FOLDERS if _has_subfolders(root / s)}
        if not folders:
            folders = {"test": root}
        transform = ImageTransform.of(options)
        listed = {}
        for split, folder in folders.items():
            try:  # lists the files; decodes nothing
                listed[split] = datasets.ImageFolder(str(folder), loader=str)
            except (FileNotFoundError, OSError) as exc:
                raise UsageError(f"data.path: {folder}: {exc}") from None
        classes = sorted({name for dataset in listed.values() for name in dataset.classes})
        index = {name: i for i, name in enumerate(classes)}
        splits = {}
        for split, dataset in listed.items():
            files = [path for path, _ in dataset.samples]
            labels = [index[dataset.classes[target]] for _, target in dataset.samples]
            inputs = LazyInputs(ImageFiles(root, files, transform), workers=default_workers())
            splits[split] = DataSplit(inputs, torch.tensor(labels, dtype=torch.int64))
        return splits


def _has_subfolders(folder: Path) -> bool:
    return folder.is_dir() and any(child.is_dir() for child in folder.iterdir())


# -- torchvision ----------------------------------------------------------------------------
class TorchvisionOptions(SourceOptions):
    dataset: str = Field(description="a torchvision.datasets class, e.g. MNIST or CIFAR10")
    root: str = Field(description="the folder that already holds the data set (never downloaded)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from torchvision import datasets
        from torchvision.datasets import VisionDataset

        found = getattr(datasets, value, None)
        if not (isinstance(found, type) and issubclass(found, VisionDataset)):
            raise ValueError(f"torchvision.datasets has no data set class {value!r}")
        return value

    @field_validator("root")
    @classmethod
    def _root_exists(cls, value: str, info: ValidationInfo) -> str:
        return _existing(value, info, "folder")


class TorchvisionSource(DataSource):
    """``source: torchvision`` — a ``torchvision.datasets`` class read from ``root`` with
    ``download=False``: splits "train" and "test" (``train=True/False``, or ``split=`` for the
    classes that take it, e.g. SVHN). Images become tensors in [0, 1] (``ToTensor``)."""

    name: ClassVar[str] = "torchvision"
    Options: ClassVar[type[SourceOptions]] = TorchvisionOptions

    def load(self, options: Any, base_dir: Path, seed: int) -> dict[str, DataSplit]:
        from torchvision import datasets, transforms

        cls = getattr(datasets, options.dataset)
        root = base_dir / options.root
        parameters = inspect.signature(cls.__init__).parameters
        if "train" in parameters:
            selectors = {"train": {"train": True}, "test": {"train": False}}
        elif "split" in parameters:
            selectors = {"train": {"split": "train"}, "test": {"split": "test"}}
        else:
            raise UsageError(
                f"data.dataset: {options.dataset} takes neither `train=` nor `split=`; "
                "save it as .npz and use `source: npz`"
            )
        splits = {}
        for split, selector in selectors.items():
            try:
                dataset = cls(str(root), download=False, transform=transforms.ToTensor(),
                              **selector)
            except TypeError as exc:
                raise UsageError(
                    f"data.dataset: torchvision.datasets.{options.dataset} needs constructor "
                    f"arguments that robaudit does not give ({exc}); save the data as .npz "
                    "and use `source: npz`"
                ) from None
            except (RuntimeError, OSError) as exc:
                raise UsageError(
                    f"data.root: {options.dataset} ({split} split) must already be on disk "
                    f"under {root}; robaudit never downloads (fetch it once yourself with "
                    f"torchvision.datasets.{options.dataset} and its `download` argument). "
                    f"torchvision said: {exc}"
                ) from None
            splits[split] = _vision_tensors(dataset)
        return splits


def _vision_tensors(dataset: Any) -> DataSplit:
    """All of a torchvision data set as tensors (one pass through its transform)."""
    import torch

    images, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i]
        images.append(image)
        labels.append(int(label))
    return _as_split(torch.stack(images), torch.tensor(labels))


@hookimpl
def robaudit_register_data_sources(register: Any) -> None:
    for source in (DigitsSource(), NpzSource(), ImageFolderSource(), TorchvisionSource()):
        register(source)
