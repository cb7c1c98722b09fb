"""The common part of every single-codebook quantizer: one trainable codebook (K, D),
the pure coding path, data init and dead-code replacement. Subclasses add ``forward``."""

from __future__ import annotations

import torch
from torch import nn

from diveq_codec.models.codebook import (
    DeadCodeReplacer,
    init_from_samples,
    nearest_codeword,
    nearest_codeword_with_gap,
    perplexity,
    reset_adam_rows,
)
from diveq_codec.models.quantizer import Quantizer, QuantizerOutput


class SingleCodebookQuantizer(Quantizer):
    def __init__(self, num_codes: int, embedding_dim: int, replace_interval: int = 100,
                 replace_threshold: float = 0.01) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.embedding_dim = embedding_dim
        bound = 1.0 / num_codes
        self.codebook = nn.Parameter(torch.empty(num_codes, embedding_dim).uniform_(-bound, bound))
        self.dead_codes = DeadCodeReplacer(num_codes, replace_interval, replace_threshold)

    @property
    def alphabet_sizes(self) -> list[int]:
        return [self.num_codes]

    @torch.no_grad()
    def indices(self, z: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        return nearest_codeword(z, self.codebook).unsqueeze(0)

    @torch.no_grad()
    def indices_and_gaps(self, z: torch.Tensor, num_stages: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx, gap = nearest_codeword_with_gap(z, self.codebook)
        return idx.unsqueeze(0), gap

    @torch.no_grad()
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook.detach().float()[indices[0]]

    def init_from_data(self, z: torch.Tensor) -> None:
        init_from_samples(self.codebook, z)

    def replace_dead_codes(self, optimizer: torch.optim.Optimizer | None) -> int:
        if not self.dead_codes.due():
            return 0
        rows = self.dead_codes.replace_dead(self.codebook)
        if optimizer is not None and rows.numel():
            reset_adam_rows(optimizer, self.codebook, rows.to(self.codebook.device))
        return int(rows.numel())

    def _assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codeword of each row (recorded for dead-code replacement when training)."""
        idx = nearest_codeword(z, self.codebook)
        if self.training:
            self.dead_codes.observe(z, idx)
        return idx, self.codebook[idx].to(z.dtype)

    def _output(self, z_q: torch.Tensor, idx: torch.Tensor) -> QuantizerOutput:
        return QuantizerOutput(z_q, idx.unsqueeze(0), [perplexity(idx, self.num_codes)])
