"""The interface every quantizer in ``models`` follows.

Two paths, kept apart on purpose:
- training: ``forward(z)`` returns a differentiable ``z_q`` plus what was chosen;
- coding: ``indices(z)`` and ``lookup(indices)`` are pure functions of the weights
  (no noise, no counters; float32 search, float64 for float64 input), so encoder and
  decoder agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (N, D), differentiable
    indices: torch.Tensor  # (S, N) int64, one row per coded symbol stream
    perplexities: list[float] = field(default_factory=list)


class Quantizer(nn.Module):
    """Base class: subclasses define the symbol streams and both paths."""

    embedding_dim: int

    @property
    def alphabet_sizes(self) -> list[int]:
        """Number of distinct symbols in each coded stream (one entry per stage)."""
        raise NotImplementedError

    def indices(self, z: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def indices_and_gaps(self, z: torch.Tensor, num_stages: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``indices(z)`` and, per row, the smallest decision gap over its choices (how far the
        row may move before any of them changes), or None where the quantizer cannot tell."""
        return None

    def init_from_data(self, z: torch.Tensor) -> None:
        """Seed codebooks from encoder outputs (N, D); the default is to keep the init."""

    def replace_dead_codes(self, optimizer: torch.optim.Optimizer | None) -> int:
        """Dead-code replacement when due; returns how many codewords were replaced."""
        return 0


def directional_reparam(z: torch.Tensor, target: torch.Tensor, noise_std: float) -> torch.Tensor:
    """DiVeQ's reparameterisation: ``z + ‖target − z‖ · sg(n)``.

    n = (d + ε) / ‖d + ε‖ with d = target − z and ε ~ N(0, noise_std² I). Only the
    direction is detached, so the error length carries gradient to z and to the codewords
    that make up ``target``: g − u(nᵀg) to z and u(nᵀg) to the target.
    ``noise_std = 0`` is the detach variant (n = u exactly).
    """
    d = target - z
    r = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    with torch.no_grad():
        direction = d if noise_std == 0 else d + noise_std * torch.randn_like(d)
        n = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-12)
    return z + r * n
