"""A network's safetensors file: its config (in the metadata) and its tensors.

The codec stores more tensors in the same file (its entropy tables); the network's own are
those whose names its state dict has, so training and the codec read one file format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from diveq_codec.models.config import ModelConfig


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_tensors(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, every stored tensor) of a weights file, as stored: no checks."""
    with safe_open(str(path), framework="pt") as fh:
        config = ModelConfig.from_dict(json.loads(fh.metadata()["config"]))
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return config, tensors
