"""What an entry of the cache between runs (``run --cache-dir``, issues #13 and #19) is keyed
by: the run's *salt* (this module), then the entry's own key, which names the work and its
params.

The salt holds everything else that can change a cached value (design §3, §5, §9):

- per model (the spec's ``model`` and each of ``models``), :func:`model_salt`: the whole
  resolved model entry of the spec, every field (so ``factory``, ``kwargs``, ``weights``,
  ``torchscript``, ``input_range``, ``features``, ``normalize``, and any model-source kind
  added later, without anyone listing them); the sha256 of every file or folder that a string
  of the entry names (the weights, a TorchScript or exported program, a ``file.py`` factory, a
  model folder); the source of the factory's module and of the module defining every
  ``nn.Module`` class in the network (so an edited ``forward`` misses); and a hash of the
  network's parameters and buffers as loaded;
- the spec's whole data entry (source, options, limits, ``batch_size``; not ``workers``) and the
  fingerprint of every data split as loaded (:func:`robaudit.identity.data_fingerprint`);
- the seed, the device (its type, and the GPU's name on CUDA), and the robaudit and torch
  versions.

Trusted, not keyed: code that the model's modules import from elsewhere (helpers called from a
``forward`` in another module, installed packages other than torch, robaudit's own code) is
assumed unchanged while the versions are; the number of CPU threads is assumed not to change a
value; and a metric's key must name every param its work depends on
(:class:`robaudit.context.RunCache`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import robaudit
from robaudit.context import DataSplit
from robaudit.identity import data_fingerprint, file_sha256


def model_hash(network: torch.nn.Module) -> str:
    """sha256 of a network's parameters and buffers, by name."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()


def _strings(value: Any) -> Iterator[str]:
    """Every string in a model entry (values of dicts, items of lists), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _folder_sha256(folder: Path, skip: Path | None) -> str:
    """sha256 of every file under ``folder`` (by relative path), leaving out ``skip``."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file() and (skip is None or not file.is_relative_to(skip)):
            digest.update(f"{file.relative_to(folder).as_posix()}={file_sha256(file)}\n".encode())
    return digest.hexdigest()


def referenced_files(entry: dict[str, Any], base_dir: Path,
                     skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file or folder that a string of ``entry`` names, relative to
    ``base_dir`` (the spec's folder) or absolute; for ``path.py:callable`` the part before the
    colon. The spec's folder itself and the folders above it are never hashed whole (a value
    such as ``"."`` is not a model file), nor anything under ``skip`` (the cache folder)."""
    digests: dict[str, str] = {}
    base = base_dir.resolve()
    for text in _strings(entry):
        for name in {text, text.rpartition(":")[0]} - {""}:
            try:
                path = (base_dir / name).resolve()
                if path.is_file():
                    digests[name] = file_sha256(path)
                elif path.is_dir() and not base.is_relative_to(path):
                    digests[name] = _folder_sha256(path, skip)
            except (OSError, ValueError):  # not a path this system can name
                continue
    return digests


def code_files(entry: dict[str, Any], network: torch.nn.Module) -> list[Path]:
    """The source files of the model's code: the module a ``module:callable`` factory names
    and the one defining the callable, and the module defining every ``nn.Module`` class in
    ``network`` (torch's own included). Only modules already imported are looked up: the
    model was built, so its code is loaded."""
    modules = {type(layer).__module__ for layer in network.modules()}
    factory = entry.get("factory")
    if isinstance(factory, str):
        target, _, attr = factory.rpartition(":")
        named = sys.modules.get(target)
        if named is not None:
            modules.add(target)
            obj: Any = named
            for part in attr.split("."):
                obj = getattr(obj, part, None)
            defined_in = getattr(inspect.getmodule(obj), "__name__", None)
            if defined_in:
                modules.add(defined_in)
    files = {getattr(sys.modules.get(name), "__file__", None) for name in modules}
    return sorted(Path(file) for file in files if file)


def model_salt(entry: dict[str, Any], base_dir: Path, network: torch.nn.Module,
               skip: Path | None = None) -> str:
    """What a model's cached values depend on (see the module docstring): ``entry`` is the
    spec's model entry as resolved (``ModelSpec.model_dump(mode="json")``), ``network`` the
    module the metrics run (the user's model, after ``normalize``)."""
    parts = {
        "entry": entry,
        "files": referenced_files(entry, base_dir, skip),
        "code": {str(file): file_sha256(file) for file in code_files(entry, network)
                 if file.is_file()},
        "tensors": model_hash(network),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def device_name(device: torch.device) -> str:
    """The device type, and on CUDA the GPU's name (another GPU may round differently)."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return device.type


def run_salt(models: dict[str, str], data: dict[str, Any], splits: dict[str, DataSplit],
             device: torch.device, seed: int) -> str:
    """What every entry of a run depends on: ``models`` maps each model's name to its
    :func:`model_salt`; ``data`` is the spec's data entry as resolved (its source options and
    ``batch_size`` too), ``splits`` the loaded data; then the device, the seed and the
    versions. ``workers`` is left out: the DataLoader processes read the same units in the same
    order whatever their number (:mod:`robaudit.lazydata`), so the numbers do not depend on it."""
    keyed = {key: value for key, value in data.items() if key != "workers"}
    parts = [robaudit.__version__, torch.__version__, device_name(device), str(seed),
             json.dumps(keyed, sort_keys=True, default=repr)]
    parts += [f"{name}={salt}" for name, salt in sorted(models.items())]
    seen: dict[int, str] = {}
    for name, split in sorted(splits.items()):
        if id(split) not in seen:
            seen[id(split)] = data_fingerprint(split, int(data.get("batch_size") or 256))
        parts.append(f"{name}={seen[id(split)]}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
