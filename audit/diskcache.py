"""A cache between runs (``run --cache-dir DIR``; issue #13): the expensive work that checks
share through :class:`robaudit.context.RunCache` (DeepFool boundary points, universal
perturbation fits, features, activation statistics) stored on disk, so that re-running a gate
on an unchanged model is fast.

An entry's file name is a sha256 of the run's *salt* and the entry's key. The salt holds the
robaudit version, the device type, the run's seed, a hash of every model's parameters and
buffers (so that changing one weight invalidates every entry) and the fingerprint of every
split; the key names the work and its params. So a changed model, data, seed or version never
reuses a stale entry.

Entries are written with ``torch.save`` and read with ``torch.load(weights_only=True)``: only
tensors, numbers, strings, lists, tuples and dicts, and robaudit's own dataclasses rebuilt
field by field (design §9: what is read back is data, never code). A value that holds anything
else, or a key that is not made of plain values, is simply not stored; an entry that cannot be
read is recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import robaudit
from robaudit.context import DataSplit
from robaudit.identity import data_fingerprint

_PLAIN = (str, int, float, bool, type(None))
_DATACLASS = "__robaudit_dataclass__"
_ON_DEVICE = "__robaudit_on_device__"


class NotStorable(Exception):
    """A key or value that the disk cache does not store."""


def plain_key(key: Any) -> bool:
    """Whether ``key`` is made only of plain values (its ``repr`` then identifies it)."""
    if isinstance(key, (tuple, list)):
        return all(plain_key(k) for k in key)
    return isinstance(key, _PLAIN)


def encode(value: Any) -> Any:
    """``value`` as tensors and plain containers; raises :class:`NotStorable`. A tensor that
    was on the audit device (not the CPU) is marked, so that it goes back there."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        return {_ON_DEVICE: tensor} if value.device.type != "cpu" else tensor
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        items = [encode(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict) and all(isinstance(k, _PLAIN) for k in value):
        return {k: encode(v) for k, v in value.items()}
    cls = type(value)
    if dataclasses.is_dataclass(value) and cls.__module__.startswith("robaudit."):
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_DATACLASS: f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise NotStorable(f"cannot store a {cls.__name__}")


def decode(value: Any, device: torch.device) -> Any:
    """The inverse of :func:`encode`: marked tensors go to ``device``, the others stay on the
    CPU."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) and _ON_DEVICE in value:
        return value[_ON_DEVICE].to(device)
    if isinstance(value, list):
        return [decode(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v, device) for v in value)
    if isinstance(value, dict) and _DATACLASS in value:
        module, _, name = value[_DATACLASS].partition(":")
        if not module.startswith("robaudit."):
            raise NotStorable(f"refusing to rebuild {value[_DATACLASS]}")
        cls = getattr(importlib.import_module(module), name)
        if not dataclasses.is_dataclass(cls):
            raise NotStorable(f"{value[_DATACLASS]} is not a dataclass")
        return cls(**{k: decode(v, device) for k, v in value["fields"].items()})
    if isinstance(value, dict):
        return {k: decode(v, device) for k, v in value.items()}
    return value


def model_hash(network: torch.nn.Module) -> str:
    """sha256 of a network's parameters and buffers, by name."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()


def run_salt(models: dict[str, torch.nn.Module], splits: dict[str, DataSplit],
             device: torch.device, seed: int) -> str:
    """What every entry of a run depends on (see the module docstring)."""
    parts = [robaudit.__version__, device.type, str(seed)]
    parts += [f"{name}={model_hash(net)}" for name, net in sorted(models.items())]
    seen: dict[int, str] = {}
    for name, split in sorted(splits.items()):
        if id(split) not in seen:
            seen[id(split)] = data_fingerprint(split)
        parts.append(f"{name}={seen[id(split)]}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class DiskStore:
    """Entries of one run under ``folder``; ``hits`` and ``misses`` count what was read."""

    def __init__(self, folder: Path, salt: str, device: torch.device) -> None:
        self.folder, self.salt, self.device = folder, salt, device
        self.hits = self.misses = 0
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: Any) -> Path:
        digest = hashlib.sha256(f"{self.salt}\n{key!r}".encode()).hexdigest()
        return self.folder / f"{digest}.pt"

    def load(self, key: Any) -> tuple[bool, Any]:
        """(True, value) for a stored entry, else (False, None)."""
        path = self.path(key)
        if not plain_key(key) or not path.is_file():
            self.misses += 1
            return False, None
        try:
            value = decode(torch.load(path, weights_only=True), self.device)
        except Exception:  # a corrupt or foreign entry is a miss, then rewritten
            self.misses += 1
            return False, None
        self.hits += 1
        return True, value

    def save(self, key: Any, value: Any) -> None:
        """Store ``value`` atomically, if key and value are storable."""
        if not plain_key(key):
            return
        try:
            encoded = encode(value)
        except NotStorable:
            return
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(handle)
        try:
            torch.save(encoded, temporary)
            os.replace(temporary, self.path(key))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
