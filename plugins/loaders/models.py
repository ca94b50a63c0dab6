"""The built-in model loader: ``factory`` (+ ``kwargs``, ``weights``) or ``torchscript``.

Trust (design §9): a factory runs the code it names, and ``torch.jit.load`` runs the program a
TorchScript file holds, so both are code to trust like a conftest.py; weights are data and load
with ``weights_only=True``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robaudit import hookimpl
from robaudit.errors import UsageError

CHECKPOINT_KEYS = ("state_dict", "model_state_dict")


def resolve_callable(reference: str, base_dir: Path) -> Any:
    """The object named by ``module:attr`` or ``path/to/file.py:attr`` (relative to base_dir)."""
    target, _, attr = reference.rpartition(":")
    if target.endswith(".py"):
        file = (base_dir / target).resolve()
        name = f"robaudit_user_{file.stem}_{abs(hash(str(file)))}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise UsageError(f"factory: cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(
                f"factory: importing {file} raised {type(exc).__name__}: {exc}"
            ) from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise UsageError(f"factory: cannot import module {target!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"factory: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_weights(model: nn.Module, file: Path) -> None:
    """Load a state_dict, or a checkpoint dict holding one, with ``weights_only=True``."""
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"weights: cannot load {file}: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    tensors = isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values())
    if not tensors:
        raise UsageError(
            f"weights: {file} is not a state_dict (nor a dict with 'state_dict' or "
            "'model_state_dict')"
        )
    try:
        model.load_state_dict(loaded)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise UsageError(f"weights: {file} does not fit the model: {detail}") from None


@hookimpl(trylast=True)
def robaudit_load_model(config: dict[str, Any], base_dir: Path) -> nn.Module:
    if config.get("torchscript"):
        file = base_dir / config["torchscript"]
        try:
            return torch.jit.load(str(file), map_location="cpu")
        except Exception as exc:
            raise UsageError(f"torchscript: cannot load {file}: {exc}") from None
    factory = resolve_callable(config["factory"], base_dir)
    if not callable(factory):
        raise UsageError(f"factory: {config['factory']!r} is not callable")
    try:
        model = factory(**config.get("kwargs", {}))
    except Exception as exc:
        raise UsageError(
            f"factory: {config['factory']}(**kwargs) raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"factory: {config['factory']} returned {type(model).__name__}, not an nn.Module"
        )
    if config.get("weights"):
        load_weights(model, base_dir / config["weights"])
    return model
