"""What was audited (design §5 ``model`` and ``data``): enough to tell two reports of different
models or data apart, and to pair a run with its baseline sample by sample."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from robaudit.context import DataSplit
from robaudit.lazydata import LazyInputs

#: Bytes hashed at a time, so that fingerprinting never copies a whole split.
CHUNK_SAMPLES = 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(split: DataSplit, batch_size: int = CHUNK_SAMPLES) -> str:
    """sha256 of the audited data: shapes, dtypes, then inputs and labels in sample order.
    A tensor's inputs are hashed as float32, ``CHUNK_SAMPLES`` rows at a time; lazy inputs
    (design §8) by what identifies each sample without decoding it where the source has that
    (an image folder: each file's path, size and modification time, and the transform), else
    as decoded float32, ``batch_size`` samples at a time (:meth:`LazyInputs.fingerprint`).
    The split is never held whole."""
    digest = hashlib.sha256()
    digest.update(f"{tuple(split.x.shape)}{split.x.dtype}{tuple(split.y.shape)}".encode())
    if isinstance(split.x, LazyInputs):
        split.x.fingerprint(digest, batch_size)
    else:
        for start in range(0, len(split), CHUNK_SAMPLES):
            x = split.x[start : start + CHUNK_SAMPLES].to(torch.float32).contiguous()
            digest.update(x.numpy().tobytes())
    digest.update(split.y.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


#: The files of a ``save_pretrained`` folder that hold its weights.
HF_WEIGHT_SUFFIXES = (".safetensors", ".bin")

#: What the identity keeps of a Hugging Face ``config.json``: the architecture, and the
#: revision (the commit of the hub repository it came from, where transformers recorded one).
HF_CONFIG_KEYS = ("_name_or_path", "_commit_hash", "architectures", "model_type",
                  "transformers_version")


def folder_weights_sha256(folder: Path) -> str:
    """sha256 over a ``save_pretrained`` folder's weight files (name and content, in name
    order), so that a sharded checkpoint has one fingerprint too."""
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name.endswith(HF_WEIGHT_SUFFIXES):
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def huggingface_revision(folder: Path) -> dict[str, Any]:
    """The architecture and revision recorded in the folder's ``config.json``."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {key: config[key] for key in HF_CONFIG_KEYS if key in config}


def model_identity(entry: Any, base_dir: Path, network: torch.nn.Module) -> dict[str, Any]:
    """The model entry's source as the spec gives it (``factory: ...``, ``timm: ...``, …), the
    sha256 of the file or folder it names (TorchScript, exported program, Hugging Face weights,
    with the revision in the Hugging Face config), the weights path and its sha256, and the
    number of parameters."""
    key, value = entry.source
    identity: dict[str, Any] = {key: value}
    if key in ("torchscript", "export"):
        identity[f"{key}_sha256"] = file_sha256(base_dir / value)
    if key == "huggingface":
        identity["huggingface_config"] = huggingface_revision(base_dir / value)
    identity["weights"] = entry.weights
    if entry.weights:
        identity["weights_sha256"] = file_sha256(base_dir / entry.weights)
    elif key == "huggingface":
        identity["weights_sha256"] = folder_weights_sha256(base_dir / value)
    else:
        identity["weights_sha256"] = None
    identity["parameters"] = sum(p.numel() for p in network.parameters())
    return identity
