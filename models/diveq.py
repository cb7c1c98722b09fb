"""DiVeQ (directional-noise reparameterised VQ) and its detach variant."""

from __future__ import annotations

import torch
from torch import nn

from models.codebook import CodebookCare, init_from_samples, nearest_codeword, perplexity, reset_adam_rows
from models.quantizer import Quantizer, QuantizerOutput, directional_reparam


class DiVeQ(Quantizer):
    """Single-codebook DiVeQ.

    ``noise_std`` is the standard deviation of the directional noise ε (the reference
    package calls it ``noise_var`` but uses it as a standard deviation; the paper used 1e-3).
    """

    def __init__(
        self,
        num_codes: int,
        embedding_dim: int,
        noise_std: float = 1e-3,
        replace_interval: int = 100,
        replace_threshold: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.embedding_dim = embedding_dim
        self.noise_std = noise_std
        self.codebook = nn.Parameter(torch.empty(num_codes, embedding_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.care = CodebookCare(num_codes, replace_interval, replace_threshold)

    @property
    def alphabet_sizes(self) -> list[int]:
        return [self.num_codes]

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx = nearest_codeword(z, self.codebook)
        if self.training:
            self.care.observe(z, idx)
        z_q = directional_reparam(z, self.codebook[idx].to(z.dtype), self.noise_std if self.training else 0.0)
        return QuantizerOutput(z_q, idx.unsqueeze(0), [perplexity(idx, self.num_codes)])

    @torch.no_grad()
    def indices(self, z: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        return nearest_codeword(z, self.codebook).unsqueeze(0)

    @torch.no_grad()
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook.detach().float()[indices[0]]

    def init_from_data(self, z: torch.Tensor) -> None:
        init_from_samples(self.codebook, z)

    def care_step(self, optimizer: torch.optim.Optimizer | None) -> int:
        if not self.care.due():
            return 0
        rows = self.care.replace_dead(self.codebook)
        if optimizer is not None and rows.numel():
            reset_adam_rows(optimizer, self.codebook, rows.to(self.codebook.device))
        return int(rows.numel())


class DiVeQDetach(DiVeQ):
    """DiVeQ without noise: forward is exactly c_k, Jacobians I − uuᵀ (z) and uuᵀ (c_k)."""

    def __init__(self, num_codes: int, embedding_dim: int, **kwargs: float) -> None:
        super().__init__(num_codes, embedding_dim, noise_std=0.0, **kwargs)
