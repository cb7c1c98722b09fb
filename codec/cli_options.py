"""Option types shared by every command of the CLI."""

from __future__ import annotations

from enum import Enum


class Device(str, Enum):
    """Where the model runs; ``auto`` picks CUDA when it is available."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
