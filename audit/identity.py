"""What was audited (design §5 ``model`` and ``data``): enough to tell two reports of different
models or data apart, and to pair a run with its baseline sample by sample."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from robaudit.context import DataSplit

#: Bytes hashed at a time, so that fingerprinting never copies a whole split.
CHUNK_SAMPLES = 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(split: DataSplit) -> str:
    """sha256 of the audited tensors: shapes, dtypes, then inputs and labels in sample order
    (as float32 and int64, chunk by chunk)."""
    digest = hashlib.sha256()
    digest.update(f"{tuple(split.x.shape)}{split.x.dtype}{tuple(split.y.shape)}".encode())
    for start in range(0, len(split), CHUNK_SAMPLES):
        x = split.x[start : start + CHUNK_SAMPLES].to(torch.float32).contiguous()
        digest.update(x.numpy().tobytes())
    digest.update(split.y.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_identity(entry: Any, base_dir: Path, network: torch.nn.Module) -> dict[str, Any]:
    """The model entry as the spec gives it (``factory`` or ``torchscript``), the weights path
    and its sha256, and the number of parameters."""
    identity: dict[str, Any] = {}
    if entry.factory:
        identity["factory"] = entry.factory
    else:
        identity["torchscript"] = entry.torchscript
        identity["torchscript_sha256"] = file_sha256(base_dir / entry.torchscript)
    identity["weights"] = entry.weights
    identity["weights_sha256"] = file_sha256(base_dir / entry.weights) if entry.weights else None
    identity["parameters"] = sum(p.numel() for p in network.parameters())
    return identity
