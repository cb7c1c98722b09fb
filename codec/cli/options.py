"""Option types shared by every command of the CLI."""

from __future__ import annotations

from enum import Enum


class Device(str, Enum):
    """Where the model runs; ``auto`` picks CUDA when it is available."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# Kept here, not in codec.pipeline, so that the CLI's help needs no torch import.
EFFORT_HELP = ("encoder effort: 1 (default) the greedy codeword search, 2 a beam search over the stages, "
               "3 the beam after refining the latent on the decoded pixels (seconds per image; the file "
               "may differ between machines): better rate–distortion, slower encode; any decoder reads all")
