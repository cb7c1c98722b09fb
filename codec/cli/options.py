"""Option types shared by every command of the CLI."""

from __future__ import annotations

from enum import Enum


class Device(str, Enum):
    """Where the model runs; ``auto`` picks CUDA when it is available."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# Kept here, not in codec.pipeline, so that the CLI's help needs no torch import.
EFFORT_HELP = ("how hard the encoder searches: 1 greedy codeword choice; 2 a beam search over the stages "
               "(smaller files, up to ~2.5x the time); 3 the beam after refining the latent on the decoded "
               "pixels (seconds per image). Efforts 1 and 2 write the same bytes on every machine; effort 3 "
               "gives up byte-identical files across machines (each still decodes the same everywhere)")
