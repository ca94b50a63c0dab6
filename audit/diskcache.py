"""A cache between runs (``run --cache-dir DIR``; issues #13 and #19): the expensive work that
checks share through :class:`robaudit.context.RunCache` (DeepFool boundary points, universal
perturbation fits, features, activation statistics) stored on disk, so that re-running a gate
on an unchanged model is fast.

An entry's file name is a sha256 of the run's *salt* (:mod:`robaudit.cachekey`: the models'
entries, files and code, the data, seed, device and versions) and the entry's key (the work
and its params). The entry holds that full key too, and is used only when it matches, so that
a file copied or renamed under another key's name is a miss.

The cache never stops a run: an entry that cannot be read (missing, corrupt, foreign, in a
folder that cannot be read) is a miss and is recomputed; an entry that cannot be written
(a read-only folder, a full disk) is not stored, with one warning per store (each spec of a
run has its own).

What it stores grows with the work, on disk, not in memory: DeepFool is stored per work unit
(:func:`robaudit.ops.deepfool.deepfool_unit`, three inputs' size a sample, so about
3 × N × C × H × W × 4 bytes per model, split and DeepFool params: 7 GB at N = 4096 of
224×224), each entry written once, when it is computed, and read one at a time; an entry that
the run cache's memory budget does not keep (:class:`robaudit.context.RunCache`) is read back
from here when a check asks for it again rather than computed again. Nothing prunes the folder:
delete it to reclaim the space.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from robaudit.text import printable

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



def warn_on_console(message: str) -> None:
    """Print a cache warning on stderr, as the CLI prints its other warnings."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[yellow]WARNING[/] {escape(printable(message))}")


class DiskStore:
    """Entries of one run under ``folder``; ``hits`` and ``misses`` count what was read.

    No I/O failure escapes: a read that fails is a miss, a write that fails is skipped, the
    first one with a call of ``warn`` (then ``write_failure`` holds its message)."""

    def __init__(self, folder: Path, salt: str, device: torch.device,
                 warn: Callable[[str], None] = warn_on_console) -> None:
        self.folder, self.salt, self.device, self.warn = folder, salt, device, warn
        self.hits = self.misses = 0
        self.write_failure: str | None = None

    def full_key(self, key: Any) -> str:
        """The salt and the key: what an entry is for, stored in it and compared on reading."""
        return f"{self.salt}\n{key!r}"

    def path(self, key: Any) -> Path:
        digest = hashlib.sha256(self.full_key(key).encode()).hexdigest()
        return self.folder / f"{digest}.pt"

    def load(self, key: Any) -> tuple[bool, Any]:
        """(True, value) for a stored entry of this very key, else (False, None)."""
        if plain_key(key):
            try:
                stored = torch.load(self.path(key), weights_only=True)
                if isinstance(stored, dict) and stored.get("key") == self.full_key(key):
                    value = decode(stored["value"], self.device)
                    self.hits += 1
                    return True, value
            except Exception:  # missing, unreadable, corrupt: a miss, then rewritten
                pass
        self.misses += 1
        return False, None

    def save(self, key: Any, value: Any) -> None:
        """Store ``value`` atomically, if key and value are storable and the folder writable."""
        if not plain_key(key):
            return
        try:
            entry = {"key": self.full_key(key), "value": encode(value)}
        except NotStorable:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        except OSError as exc:
            self.failed(exc)
            return
        os.close(handle)
        try:
            torch.save(entry, temporary)
            os.replace(temporary, self.path(key))
        except Exception as exc:  # a full disk raises OSError or torch's RuntimeError
            self.failed(exc)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def failed(self, exc: Exception) -> None:
        """Record a failed write; the first one of the run is a warning."""
        if self.write_failure is None:
            self.write_failure = (f"--cache-dir {self.folder}: cannot store work there "
                                  f"({type(exc).__name__}: {exc}); the run goes on without "
                                  "storing it")
            self.warn(self.write_failure)
