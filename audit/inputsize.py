"""The input size a model source prescribes for its images (design §3 model sources, §8 data
at scale): what an image folder's transform defaults to when the spec gives neither ``size``
nor ``image_size``.

- Hugging Face (``huggingface: DIR``): the image processor's ``preprocessor_config.json``, as
  its ``preprocess`` resizes: ``size`` {height, width} resizes to that size exactly (a square
  one is ``size``); ``size`` {shortest_edge} resizes the shorter side, divided by ``crop_pct``
  where the processor has one (ConvNeXt: 224 / 0.875 = 256), and the centre crop is
  ``crop_size`` when ``do_center_crop``, else the shortest edge; ``resample`` 3 is bicubic.
- timm (``timm: NAME``): the model's ``pretrained_cfg``, as ``timm.data.create_transform``
  builds its evaluation transform: the shorter side resized to ``floor(size / crop_pct)``,
  then the centre ``size``×``size`` crop, with its ``interpolation``.

Each returns the image folder options to set (``size``, or ``image_size`` and ``resize``, and
``interpolation``) and where they came from, for the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from robaudit.errors import UsageError

#: PIL's resampling codes as Hugging Face processors save them (``resample``).
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _side(value: Any) -> tuple[int, int] | None:
    """(height, width) of a processor size: an int, or a dict with both."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    return None


def _square(height: int, width: int, where: str) -> int:
    if height != width:
        raise UsageError(f"data.image_size: {where} asks for {height}×{width} inputs; an image "
                         "folder crops squares: give `image_size` (and `resize`) in the spec")
    return height


def huggingface_options(config: dict[str, Any]) -> dict[str, Any] | None:
    """Image folder options from an image processor's config (see the module docstring), or
    None when it names no size."""
    where = "the image processor (preprocessor_config.json)"
    interpolation = PIL_RESAMPLE.get(config.get("resample", 2), "bilinear")
    size = config.get("size")
    crop = _side(config.get("crop_size")) if config.get("do_center_crop") else None
    exact = _side(size)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    if crop is not None:
        image = _square(*crop, where)
        resize = int(shortest) if shortest else (_square(*exact, where) if exact else image)
        return {"image_size": image, "resize": max(resize, image),
                "interpolation": interpolation}
    if exact is not None:
        return {"size": _square(*exact, where), "interpolation": interpolation}
    if shortest:
        pct = config.get("crop_pct")
        resize = int(shortest / pct) if pct else int(shortest)
        return {"image_size": int(shortest), "resize": resize, "interpolation": interpolation}
    return None


def timm_options(module: nn.Module) -> dict[str, Any] | None:
    """Image folder options from a timm model's ``pretrained_cfg``, or None without one."""
    config = getattr(module, "pretrained_cfg", None)
    if not isinstance(config, dict) or not config.get("input_size"):
        return None
    height, width = (int(v) for v in config["input_size"][-2:])
    image = _square(height, width, "timm's pretrained_cfg")
    pct = float(config.get("crop_pct") or 0.875)
    interpolation = config.get("interpolation") or "bilinear"
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bilinear"
    return {"image_size": image, "resize": math.floor(image / pct),
            "interpolation": interpolation}


def model_image_options(entry: Any, base_dir: Path, module: nn.Module
                        ) -> tuple[dict[str, Any], str] | None:
    """The image folder options the model entry's source prescribes, and their origin; None
    for a source that prescribes nothing (a factory, TorchScript, an exported program)."""
    key, value = entry.source
    if key == "huggingface":
        from robaudit.plugins.loaders.models import processor_config

        found = huggingface_options(processor_config(base_dir / value))
        return (found, f"huggingface {value}/preprocessor_config.json") if found else None
    if key == "timm":
        found = timm_options(module)
        return (found, f"timm {value} pretrained_cfg") if found else None
    return None
