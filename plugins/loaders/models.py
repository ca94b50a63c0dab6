"""The built-in model loader: one source per entry (design §3 "Model sources").

``factory`` (+ ``kwargs``, ``weights``), ``torchscript``, ``torchvision: NAME``, ``timm: NAME``,
``huggingface: DIR`` and ``export: PATH``. Everything loads offline: a model that would fetch
pretrained weights is a located error that says which local file to provide.

Trust (design §9): a factory runs the code it names, ``torch.jit.load`` runs the program a
TorchScript file holds and ``torch.export.load`` the graph an exported program holds, so these
are code to trust like a conftest.py; weights are data and load with ``weights_only=True``
(Hugging Face folders: safetensors, or ``torch.load`` with ``weights_only``, which transformers
enforces).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robaudit import hookimpl
from robaudit.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn


CHECKPOINT_KEYS = ("state_dict", "model_state_dict")

#: The keyword arguments that would make a builder fetch pretrained weights.
DOWNLOADING_KWARGS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay")


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
    import torch

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


def _offline_kwargs(key: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without anything that would download; such a key is a located error."""
    for name in DOWNLOADING_KWARGS:
        if name in kwargs:
            raise UsageError(
                f"kwargs.{name}: robaudit never downloads pretrained weights; save them once "
                f"(torch.save(model.state_dict(), 'model.pt')) and give that file as "
                f"`weights` beside `{key}`")
    return kwargs


def _optional(module: str, extra: str, key: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{key}: needs the {module} package: pip install 'robaudit[{extra}]'"
                         ) from None


def load_torchscript(file: Path) -> nn.Module:
    """A TorchScript file, without torch's deprecation warning on every run (README points
    users to ``export``)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                category=FutureWarning)
        try:
            return torch.jit.load(str(file), map_location="cpu")
        except Exception as exc:
            raise UsageError(f"torchscript: cannot load {file}: {exc}") from None


def load_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kwargs)``: an untrained network of
    a torchvision classification architecture (its weights come from ``weights``)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"torchvision: {name!r} is not a torchvision classification model"
                         f"{hint} (torchvision.models.list_models() lists them)")
    try:
        return torchvision.models.get_model(name, weights=None,
                                            **_offline_kwargs("torchvision", kwargs))
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"torchvision: get_model({name!r}, **kwargs) raised "
                         f"{type(exc).__name__}: {exc}") from None


def load_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` (extra ``robaudit[timm]``)."""
    timm = _optional("timm", "timm", "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"timm: {name!r} is not a timm model{hint} (timm.list_models())")
    try:
        return timm.create_model(name, pretrained=False, **_offline_kwargs("timm", kwargs))
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"timm: create_model({name!r}, **kwargs) raised "
                         f"{type(exc).__name__}: {exc}") from None




def processor_config(folder: Path) -> dict[str, Any]:
    """The image processor's settings saved beside the model (``preprocessor_config.json``),
    or ``{}`` when there is none."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"huggingface: cannot read {file}: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"huggingface: {file} is not a JSON object")
    return config


def processor_normalize(config: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """The processor's ``(image_mean, image_std)`` when it normalises (``do_normalize``)."""
    if not config.get("do_normalize", True) or "image_mean" not in config:
        return None
    return list(map(float, config["image_mean"])), list(map(float, config["image_std"]))


def processor_size(config: dict[str, Any]) -> tuple[int, int] | None:
    """The input size (height, width) the processor produces: its ``crop_size`` when it crops,
    else its ``size`` when that names both sides (or is one number); None otherwise (e.g. a
    shortest edge only)."""
    size = config.get("crop_size") if config.get("do_center_crop") else None
    size = size if size is not None else config.get("size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    return None


def load_huggingface(folder: Path, own_normalize: bool) -> nn.Module:
    """``AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)``
    (extra ``robaudit[hf]``), normalised as its image processor does unless the spec gives
    ``normalize`` (``own_normalize``)."""
    from robaudit.model import Normalize
    from robaudit.plugins.loaders._wrappers import HuggingFaceClassifier

    transformers = _optional("transformers", "hf", "huggingface")
    if not (folder / "config.json").is_file():
        raise UsageError(f"huggingface: {folder} has no config.json; give the folder that "
                         "model.save_pretrained(...) wrote (nothing is downloaded)")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # its bars would cut into robaudit's
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True)
    except Exception as exc:
        raise UsageError(f"huggingface: cannot load {folder}: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    settings = None if own_normalize else processor_normalize(processor_config(folder))
    return HuggingFaceClassifier(model, Normalize(*settings) if settings else None)




def _training_ops(graph: torch.fx.Graph) -> list[str]:
    """The ops of an exported graph that run in training mode (batch statistics, dropout)."""
    found = []
    for node in graph.nodes:
        name = str(node.target)
        if name.startswith("aten.batch_norm") and len(node.args) > 5 and node.args[5] is True:
            found.append("batch_norm")
        elif name.startswith(("aten.dropout", "aten.feature_dropout")) and True in node.args[2:]:
            found.append("dropout")
    return sorted(set(found))


def load_export(file: Path) -> nn.Module:
    """A program saved with ``torch.export.save``: exported in eval mode, with one tensor input
    whose batch dimension is dynamic (the checks run batches of any size)."""
    import torch

    from robaudit.plugins.loaders._wrappers import ExportedClassifier

    try:
        program = torch.export.load(str(file))
    except Exception as exc:
        raise UsageError(f"export: cannot load {file}: {type(exc).__name__}: {exc}") from None
    inputs = program.graph_signature.user_inputs
    if len(inputs) != 1:
        raise UsageError(f"export: {file} takes {len(inputs)} inputs; robaudit feeds one batch "
                         "of images (export model.forward(x) alone)")
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder"
                       and n.name == inputs[0])
    value = placeholder.meta.get("val")
    if isinstance(value, torch.Tensor) and value.dim() and isinstance(value.shape[0], int):
        raise UsageError(
            f"export: {file} was exported with a fixed batch size of {value.shape[0]}; export "
            "it with a dynamic batch dimension: torch.export.export(model.eval(), (x,), "
            "dynamic_shapes={'x': {0: torch.export.Dim('batch')}})")
    training = _training_ops(program.graph)
    if training:
        raise UsageError(f"export: {file} was exported in training mode ({', '.join(training)}"
                         " use batch statistics or drop units); export model.eval()")
    return ExportedClassifier(program.module())


@hookimpl(trylast=True)
def robaudit_load_model(config: dict[str, Any], base_dir: Path) -> nn.Module:
    kwargs = config.get("kwargs") or {}
    if config.get("torchscript"):
        return load_torchscript(base_dir / config["torchscript"])
    if config.get("export"):
        return load_export(base_dir / config["export"])
    if config.get("huggingface"):
        return load_huggingface(base_dir / config["huggingface"], bool(config.get("normalize")))
    if config.get("torchvision"):
        model = load_torchvision(config["torchvision"], kwargs)
    elif config.get("timm"):
        model = load_timm(config["timm"], kwargs)
    else:
        model = build_factory(config["factory"], kwargs, base_dir)
    if config.get("weights"):
        load_weights(model, base_dir / config["weights"])
    return model


def build_factory(reference: str, kwargs: dict[str, Any], base_dir: Path) -> nn.Module:
    """The module that the factory ``reference`` returns when called with ``kwargs``."""
    from torch import nn

    factory = resolve_callable(reference, base_dir)
    if not callable(factory):
        raise UsageError(f"factory: {reference!r} is not callable")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"factory: {reference}(**kwargs) raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"factory: {reference} returned {type(model).__name__}, not an nn.Module")
    return model
