"""SF-DiVeQ (space-filling DiVeQ) with a discrete, fully charged coding path.

Training assigns a latent to the nearest *dithered* point on the curve through the
ordered codewords. The reference's inference returns a continuous point on a segment
that its index cannot rebuild; here the coding path uses option (a) of DIVEQ.md:
the symbol is ``segment · 2^t_bits + level``, with the position along the segment
quantised to ``2^t_bits`` evenly spaced levels (both ends included). The alphabet is
therefore (K − 1) · 2^t_bits and every bit of it goes through the entropy coder.
"""

from __future__ import annotations

import torch
from torch import nn

from diveq_codec.models.codebook import perplexity, search_dtype
from diveq_codec.models.quantizer import Quantizer, QuantizerOutput


class SFDiVeQ(Quantizer):
    def __init__(self, num_codes: int, embedding_dim: int, noise_std: float = 1e-3, t_bits: int = 2) -> None:
        super().__init__()
        if num_codes < 2:
            raise ValueError("SF-DiVeQ needs at least two codewords (one segment)")
        if t_bits < 1:
            raise ValueError("t_bits must be >= 1")
        self.num_codes = num_codes
        self.embedding_dim = embedding_dim
        self.noise_std = noise_std
        self.t_bits = t_bits
        bound = 1.0 / num_codes
        self.codebook = nn.Parameter(torch.empty(num_codes, embedding_dim).uniform_(-bound, bound))

    @property
    def levels(self) -> int:
        return 2**self.t_bits

    @property
    def alphabet_sizes(self) -> list[int]:
        return [(self.num_codes - 1) * self.levels]

    def _noisy_direction(self, d: torch.Tensor, noise_std: float) -> torch.Tensor:
        with torch.no_grad():
            direction = d if noise_std == 0 else d + noise_std * torch.randn_like(d)
            return direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if not self.training:
            return QuantizerOutput(self.lookup(self.indices(z)).to(z.dtype), self.indices(z), [])
        c = self.codebook
        with torch.no_grad():
            lam = torch.rand(self.num_codes - 1, 1, device=z.device, dtype=torch.float32)
            c32 = c.detach().float()
            dithered = (1 - lam) * c32[:-1] + lam * c32[1:]
            dist = (dithered * dithered).sum(1) - 2.0 * (z.detach().float() @ dithered.t())
            seg = dist.argmin(dim=1)
            lam_seg = lam[seg].to(z.dtype)
        first, second = c[seg].to(z.dtype), c[seg + 1].to(z.dtype)
        d1, d2 = first - z, second - z
        r1 = torch.linalg.vector_norm(d1, dim=-1, keepdim=True)
        r2 = torch.linalg.vector_norm(d2, dim=-1, keepdim=True)
        n1 = self._noisy_direction(d1, self.noise_std)
        n2 = self._noisy_direction(d2, self.noise_std)
        # Both ends of the chosen segment receive gradient (through r1 and r2), which is
        # why SF-DiVeQ keeps every codeword in use without replacement.
        z_q = z + r1 * ((1 - lam_seg) * n1) + r2 * (lam_seg * n2)
        return QuantizerOutput(z_q, seg.unsqueeze(0), [perplexity(seg, self.num_codes - 1)])

    @torch.no_grad()
    def indices(self, z: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        """Nearest *representable* point: best (segment, level) over all segments."""
        dtype = search_dtype(z)
        c = self.codebook.detach().to(dtype)
        zs = z.detach().to(dtype)
        start, step = c[:-1], c[1:] - c[:-1]  # (K-1, D)
        step_sq = (step * step).sum(1).clamp_min(1e-12)
        t = ((zs @ step.t()) - (start * step).sum(1)) / step_sq  # (N, K-1)
        level = torch.round(t.clamp(0, 1) * (self.levels - 1))
        t_q = level / (self.levels - 1)
        # ‖z − (a + t b)‖² − ‖z‖² = ‖a‖² + 2t aᵀb + t²‖b‖² − 2 zᵀa − 2t zᵀb
        dist = (
            (start * start).sum(1)
            + 2 * t_q * (start * step).sum(1)
            + t_q * t_q * step_sq
            - 2 * (zs @ start.t())
            - 2 * t_q * (zs @ step.t())
        )
        seg = dist.argmin(dim=1)
        lvl = level.gather(1, seg.unsqueeze(1)).squeeze(1).long()
        return (seg * self.levels + lvl).unsqueeze(0)

    @torch.no_grad()
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        c = self.codebook.detach().float()
        seg = indices[0] // self.levels
        t = (indices[0] % self.levels).float().unsqueeze(1) / (self.levels - 1)
        return (1 - t) * c[seg] + t * c[seg + 1]

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor) -> None:
        """Reference start-up: codeword j = mean of the j-th consecutive chunk of latents.

        Consecutive chunks of spatially ordered latents are similar, so neighbouring
        codewords start near each other and the curve is short.
        """
        z32 = z.detach().float()
        chunks = torch.tensor_split(z32, self.num_codes, dim=0)
        means = torch.stack([chunk.mean(0) if chunk.shape[0] else z32.mean(0) for chunk in chunks])
        self.codebook.data.copy_(means.to(self.codebook.dtype))


class SFDiVeQDetach(SFDiVeQ):
    """SF-DiVeQ without noise. Unlike the reference ``SFDIVEQDetach``, the second term
    points at c_{k+1}, so the forward value is the dithered point, not c_k."""

    def __init__(self, num_codes: int, embedding_dim: int, t_bits: int = 2) -> None:
        super().__init__(num_codes, embedding_dim, noise_std=0.0, t_bits=t_bits)
