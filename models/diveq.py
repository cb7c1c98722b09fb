"""DiVeQ (directional-noise reparameterised VQ) and its detach variant."""

from __future__ import annotations

import torch

from diveq_codec.models.quantizer import QuantizerOutput, directional_reparam
from diveq_codec.models.single_codebook import SingleCodebookQuantizer


class DiVeQ(SingleCodebookQuantizer):
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
        super().__init__(num_codes, embedding_dim, replace_interval, replace_threshold)
        self.noise_std = noise_std

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, chosen = self._assign(z)
        z_q = directional_reparam(z, chosen, self.noise_std if self.training else 0.0)
        return self._output(z_q, idx)


class DiVeQDetach(DiVeQ):
    """DiVeQ without noise: forward is exactly c_k, Jacobians I − uuᵀ (z) and uuᵀ (c_k)."""

    def __init__(self, num_codes: int, embedding_dim: int, **kwargs: float) -> None:
        super().__init__(num_codes, embedding_dim, noise_std=0.0, **kwargs)
