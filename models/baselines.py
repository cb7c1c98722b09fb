"""Baseline VQ gradient estimators behind the ``Quantizer`` interface, for the study of
issue 6 (experiments/quantizer_study): DiVeQ against what it claims to beat.

All five use one codebook (K, D), the same data init as DiVeQ (``init_from_data`` →
``init_from_samples``: distinct random encoder outputs) and the same dead-code
replacement (``DeadCodeReplacer`` every 100 steps, codes used < 0.01× per step re-seeded from
recent latents; Adam rows reset, or the EMA statistics for the EMA codebook). The coding
path is the same pure nearest-codeword search and plain lookup for every one of them, so
only the *training* gradient differs:

- ``STEQuantizer``: straight-through, ``z_q = z + sg(c_k − z)``, with the VQ-VAE losses
  ``‖sg(z) − c_k‖² + β‖z − sg(c_k)‖²`` (β = 0.25) in ``aux_loss``.
- ``EMAQuantizer``: straight-through + commitment; codewords are EMA cluster means
  (decay 0.99, Laplace smoothing), not optimiser parameters (buffers).
- ``RotationTrickQuantizer``: Fifty et al. 2024: ``z_q = sg(‖c‖/‖z‖ · R) z`` with R the
  rotation taking ẑ to ĉ, applied in closed form; codebook + commitment losses.
- ``GumbelQuantizer``: straight-through Gumbel-softmax over logits −‖z − c_j‖²/τ, temperature
  set by the training loop (``set_temperature``); hard one-hot forward, soft gradient.
- ``NSVQQuantizer``: Vali & Bäckström 2022: ``z_q = z + ‖z − c_k‖ · v/‖v‖``, v ~ N(0, I).

``aux_loss`` is a scalar tensor set by every ``forward`` (zero where there is none); the
training loop adds it to the reconstruction loss. DiVeQ-family quantizers have no such
attribute: treat it as 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diveq_codec.models.codebook import init_from_samples, nearest_codeword
from diveq_codec.models.quantizer import QuantizerOutput
from diveq_codec.models.single_codebook import SingleCodebookQuantizer


def vq_losses(z: torch.Tensor, chosen: torch.Tensor, beta: float) -> torch.Tensor:
    """VQ-VAE losses, mean over rows and dimensions: ‖sg(z) − c‖² + β‖z − sg(c)‖²."""
    codebook_loss = F.mse_loss(chosen.float(), z.detach().float())
    commitment = F.mse_loss(z.float(), chosen.detach().float())
    return codebook_loss + beta * commitment


class _SingleCodebook(SingleCodebookQuantizer):
    """A single codebook whose training may add an auxiliary loss (0 unless set in forward)."""

    def __init__(self, num_codes: int, embedding_dim: int, replace_interval: int = 100,
                 replace_threshold: float = 0.01) -> None:
        super().__init__(num_codes, embedding_dim, replace_interval, replace_threshold)
        self.aux_loss = torch.zeros(())


class _WithVQLosses(_SingleCodebook):
    """A single codebook trained through the codebook + β·commitment losses of VQ-VAE."""

    def __init__(self, num_codes: int, embedding_dim: int, beta: float = 0.25, **kwargs: float) -> None:
        super().__init__(num_codes, embedding_dim, **kwargs)
        self.beta = beta

    def _assign_with_losses(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx, chosen = self._assign(z)
        self.aux_loss = vq_losses(z, chosen, self.beta)
        return idx, chosen


class STEQuantizer(_WithVQLosses):
    """Straight-through estimator with codebook and commitment losses (van den Oord et al. 2017)."""

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, chosen = self._assign_with_losses(z)
        z_q = z + (chosen - z).detach()
        return self._output(z_q, idx)


class EMAQuantizer(_SingleCodebook):
    """Straight-through + commitment loss; codewords are exponential moving averages.

    n_k ← γ n_k + (1 − γ) count_k,  m_k ← γ m_k + (1 − γ) Σ_{i→k} z_i,
    c_k = m_k / ñ_k with ñ_k = (n_k + ε) / (N + K ε) · N (Laplace smoothing, N = Σ n_k).
    The statistics start at n_k = 1, m_k = c_k, so a code that is never chosen keeps its
    position (its m/n ratio is invariant under decay) instead of blowing up or collapsing.
    The update runs in ``forward`` in training mode only (that is what EMA means); the
    coding path (``indices``/``lookup``) never changes anything.
    """

    def __init__(self, num_codes: int, embedding_dim: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, **kwargs: float) -> None:
        super().__init__(num_codes, embedding_dim, **kwargs)
        self.beta = beta
        self.decay = decay
        self.eps = eps
        initial = self.codebook.detach().clone()
        del self.codebook  # not an optimiser parameter: a buffer
        self.register_buffer("codebook", initial)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", initial.clone())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, chosen = self._assign(z)  # chosen is a copy: the update below cannot touch it
        self.aux_loss = self.beta * F.mse_loss(z.float(), chosen.float())
        if self.training:
            self._ema_update(z.detach().float(), idx)
        z_q = z + (chosen - z).detach()
        return self._output(z_q, idx)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.num_codes).to(z.dtype)  # (N, K)
        counts = onehot.sum(0)
        sums = onehot.t() @ z
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor) -> None:
        init_from_samples(self.codebook, z)
        self.ema_count.fill_(1.0)
        self.ema_sum.copy_(self.codebook)

    def replace_dead_codes(self, optimizer: torch.optim.Optimizer | None) -> int:
        if not self.dead_codes.due():
            return 0
        rows = self.dead_codes.replace_dead(self.codebook)
        if rows.numel():
            # Restart the replaced codes' statistics at the new position, weight 1.
            self.ema_count[rows] = 1.0
            self.ema_sum[rows] = self.codebook[rows]
        return int(rows.numel())


def rotate_to(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Rotation trick (Fifty et al. 2024): ``sg(‖c‖/‖z‖ · R) z``, row by row.

    R is the rotation taking ẑ = z/‖z‖ onto ĉ = c/‖c‖, applied without materialising it:
    with r = (ẑ + ĉ)/‖ẑ + ĉ‖, R = I − 2 r rᵀ + 2 ĉ ẑᵀ. All of λ = ‖c‖/‖z‖, r, ĉ and ẑ are
    constants for autograd, so the forward value is c_k and z receives λ Rᵀ g.
    """
    with torch.no_grad():
        z_norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1e-12)
        c_norm = torch.linalg.vector_norm(c, dim=-1, keepdim=True)
        z_hat, c_hat = z / z_norm, c / c_norm.clamp_min(1e-12)
        s = z_hat + c_hat
        r = s / torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_min(1e-12)
        scale = c_norm / z_norm
    rotated = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * c_hat * (z_hat * z).sum(-1, keepdim=True)
    return scale * rotated


class RotationTrickQuantizer(_WithVQLosses):
    """Rotation trick gradient with the paper's codebook and commitment losses (β = 0.25)."""

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, chosen = self._assign_with_losses(z)
        if not self.training:
            return self._output(chosen, idx)
        return self._output(rotate_to(z, chosen.detach()), idx)


class GumbelQuantizer(_SingleCodebook):
    """Straight-through Gumbel-softmax over distance logits ℓ_j = −‖z − c_j‖² / τ.

    Training: y = softmax((ℓ + g)/τ), g ~ Gumbel(0, 1); the forward value is the codeword
    of argmax y (a hard one-hot lookup), the gradient that of y @ C, which reaches the
    encoder and every codeword through the logits. τ divides the distances as well as the
    relaxation: with logits −‖z − c‖² alone, the hard sample argmax(ℓ + g) would not depend
    on τ at all and, for latents whose codeword distances are small next to the unit-scale
    Gumbel noise, stays a near-uniform draw however far τ is annealed; dividing the
    distances by τ makes the sample approach the nearest codeword as τ → 0.1. No
    prior/KL term. Evaluation: the nearest codeword. τ comes from ``set_temperature``
    (the study anneals 1.0 → 0.1 exponentially).
    """

    def __init__(self, num_codes: int, embedding_dim: int, temperature: float = 1.0, **kwargs: float) -> None:
        super().__init__(num_codes, embedding_dim, **kwargs)
        self.temperature = temperature

    def set_temperature(self, t: float) -> None:
        if not t > 0:
            raise ValueError("temperature must be positive")
        self.temperature = float(t)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        c = self.codebook.float()
        z32 = z.float()
        sq_dist = (z32 * z32).sum(1, keepdim=True) - 2.0 * z32 @ c.t() + (c * c).sum(1)
        return -sq_dist / self.temperature

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        self.aux_loss = torch.zeros((), device=z.device)
        if not self.training:
            idx = nearest_codeword(z, self.codebook)
            return self._output(self.codebook[idx].to(z.dtype), idx)
        soft = F.softmax((self.logits(z) + _gumbel_like(z.new_empty(z.shape[0], self.num_codes, dtype=torch.float32)))
                         / self.temperature, dim=1)
        idx = soft.detach().argmax(dim=1)
        hard = F.one_hot(idx, self.num_codes).to(soft.dtype)
        weights = hard + soft - soft.detach()
        self.dead_codes.observe(z, idx)
        return self._output((weights @ self.codebook.float()).to(z.dtype), idx)


def _gumbel_like(x: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(x).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class NSVQQuantizer(_SingleCodebook):
    """Noise substitution VQ: ``z_q = z + ‖z − c_k‖ · v/‖v‖``, v ~ N(0, I), in training.

    The random direction carries no information; the error length carries the gradient to
    z and to c_k. Evaluation returns the codeword.
    """

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, chosen = self._assign(z)
        self.aux_loss = torch.zeros((), device=z.device)
        if not self.training:
            return self._output(chosen, idx)
        err = torch.linalg.vector_norm(z - chosen, dim=-1, keepdim=True)
        v = torch.randn_like(z)
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)
        return self._output(z + err * v, idx)


BASELINES = {
    "ste": STEQuantizer,
    "ema": EMAQuantizer,
    "rotation": RotationTrickQuantizer,
    "gumbel": GumbelQuantizer,
    "nsvq": NSVQQuantizer,
}


def gumbel_temperature(progress: float, start: float = 1.0, end: float = 0.1) -> float:
    """Exponential annealing start → end as ``progress`` goes 0 → 1."""
    p = min(1.0, max(0.0, progress))
    return start * math.exp(p * math.log(end / start))
