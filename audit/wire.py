"""Exact, JSON-safe encoding of what shards exchange (design §8): per-sample arrays, details
and figures travel between processes and through shard reports without losing a bit.

A report is data, never code (design §9): decoding builds numbers, strings, lists, dicts,
numpy arrays and the figure types of :mod:`robaudit.figures`, nothing else; there is no pickle.
Floats are written with ``repr`` (exact for float64); a non-finite float is ``{"float": "nan"}``;
an array is its dtype, shape and little-endian bytes in base64.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

from robaudit import figures

if TYPE_CHECKING:
    import numpy as np

#: the figure classes a report may hold, by name
FIGURES: dict[str, type] = {cls.__name__: cls for cls in (
    figures.Histogram, figures.LinePlot, figures.ImagePlot, figures.ImageGrid, figures.Heatmap)}
#: the dtypes an encoded array may have
DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


class WireError(ValueError):
    """Encoded data that this version cannot decode (a corrupt or foreign shard report)."""


def encode(value: Any) -> Any:
    """``value`` as JSON data that :func:`decode` turns back into an equal value."""
    import numpy as np
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else {"float": repr(number)}
    if isinstance(value, np.bool_):
        return bool(value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        array = np.asarray(value, order="C")  # (ascontiguousarray makes a 0-d array 1-d)
        if array.dtype.name not in DTYPES:
            raise WireError(f"cannot encode an array of dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        return {"array": array.dtype.name, "shape": list(array.shape),
                "b64": base64.b64encode(data).decode("ascii")}
    if dataclasses.is_dataclass(value) and type(value).__name__ in FIGURES:
        return {"figure": type(value).__name__,
                "fields": {f.name: encode(getattr(value, f.name))
                           for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    raise WireError(f"cannot encode a {type(value).__name__}")


def decode(data: Any) -> Any:
    """The value that :func:`encode` encoded; :class:`WireError` for anything else."""
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict) or len(data) == 0:
        raise WireError(f"unexpected {type(data).__name__} in encoded data")
    if "float" in data:
        if data["float"] not in ("nan", "inf", "-inf"):
            raise WireError(f"bad non-finite float {data['float']!r}")
        return float(data["float"])
    if "array" in data:
        return _array(data)
    if "figure" in data:
        cls = FIGURES.get(data["figure"])
        if cls is None or not isinstance(data.get("fields"), dict):
            raise WireError(f"unknown figure {data['figure']!r}")
        return cls(**{str(k): decode(v) for k, v in data["fields"].items()})
    if "dict" in data:
        return {decode(k): decode(v) for k, v in data["dict"]}
    if "tuple" in data:
        return tuple(decode(v) for v in data["tuple"])
    raise WireError(f"unknown encoded object with keys {sorted(data)}")


def _array(data: dict[str, Any]) -> np.ndarray:
    import numpy as np
    dtype, shape = data.get("array"), data.get("shape")
    if dtype not in DTYPES or not isinstance(shape, list):
        raise WireError(f"bad array header {dtype!r} {shape!r}")
    try:
        raw = base64.b64decode(data["b64"], validate=True)
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        return array.astype(np.dtype(dtype), copy=True).reshape(tuple(shape))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"bad array data: {exc}") from None


def digest(value: Any) -> str:
    """A sha256 of ``value`` (dataclasses by their fields, tensors by their bytes): equal
    values, bit for bit, have equal digests. It tells whether shards fitted the same thing."""
    text = json.dumps(encode(_plain(value)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"class": type(value).__name__,
                **{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value
