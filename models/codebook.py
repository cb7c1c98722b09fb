"""Codebook search, usage statistics and dead-code replacement shared by every quantizer.

The coding path (``nearest_codeword``) is pure: float32 (or float64) distances, no noise, no state.
Everything that mutates a codebook (data init, dead-code replacement) lives in
``DeadCodeReplacer`` and is called explicitly by the training loop, never from ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn


def search_dtype(z: torch.Tensor) -> torch.dtype:
    """float64 for float64 input (the accelerator coding path), float32 for anything else.

    float32 keeps the choice stable under bf16 autocast during training; float64 is what a
    GPU encoder uses so that its choices are the exact ones (see ``VQAutoencoder.encode_indices``).
    """
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _costs(zs: torch.Tensor, cs: torch.Tensor, norms: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """‖z − c‖² − ‖z‖² for every row and codeword (N, K), plus ``extra`` when given: a cost per
    codeword (K,) or per row and codeword (N, K), such as a rate term."""
    costs = norms - 2.0 * (zs @ cs.t())  # ‖z‖² is constant per row: not needed for the argmin
    if extra is not None:
        costs = costs + extra.to(costs.dtype)
    return costs


def nearest_codeword(z: torch.Tensor, codebook: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest codeword for every row of ``z`` (N, D), in ``search_dtype(z)``;
    with ``extra``, the codeword of least squared distance plus that cost (see ``_costs``)."""
    dtype = search_dtype(z)
    zs = z.detach().to(dtype)
    cs = codebook.detach().to(dtype)
    return _costs(zs, cs, (cs * cs).sum(dim=1), extra).argmin(dim=1)


def nearest_codeword_with_gap(z: torch.Tensor, codebook: torch.Tensor,
                              extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``nearest_codeword`` plus each row's *decision gap*: its distance to the nearest wall
    of its cell, i.e. how far the row may move (in any direction) before the choice can change.

    The wall towards codeword j is the hyperplane where c_j and the chosen c_b cost the same,
    at distance (cost_j − cost_b) / (2‖c_j − c_b‖) from z, cost being the squared distance
    plus ``extra`` (a cost that does not depend on z only moves the wall along c_j − c_b);
    the nearest wall is not always the runner-up's, so every j is checked.
    """
    dtype = search_dtype(z)
    zs = z.detach().to(dtype)
    cs = codebook.detach().to(dtype)
    norms = (cs * cs).sum(dim=1)
    distances = _costs(zs, cs, norms, extra)
    best = distances.argmin(dim=1)
    # 2‖c_j − c_i‖ for every pair of codewords (K, K), from the Gram matrix, then the chosen
    # codeword's row for each z: K² square roots instead of N·K.
    twice_spread = 2.0 * (norms + norms.unsqueeze(1) - 2.0 * (cs @ cs.t())).clamp_min(0).sqrt()
    walls = (distances - distances.gather(1, best.unsqueeze(1))) / twice_spread[best]
    walls = torch.nan_to_num(walls, nan=0.0)  # 0/0: a duplicate of the chosen codeword, a tie
    walls.scatter_(1, best.unsqueeze(1), float("inf"))  # no wall towards itself
    return best, walls.min(dim=1).values


def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """exp(entropy) of the empirical index distribution: the number of codes in effective use."""
    counts = torch.bincount(indices.flatten(), minlength=num_codes).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return float(torch.exp(entropy))


def reset_adam_rows(optimizer: torch.optim.Optimizer, param: nn.Parameter, rows: torch.Tensor) -> None:
    """Zero the Adam moments of replaced codeword rows so stale momentum does not drag them back."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows] = 0.0


class DeadCodeReplacer:
    """Usage tracking and dead-code replacement for one codebook parameter (K, D).

    Dead codes (used less than ``threshold`` times per step on average over ``interval``
    steps) are overwritten with latents the codebook saw recently, drawn at random.
    Re-seeding from data rather than from perturbed live codewords (the reference's choice,
    with a 1e-9 perturbation) puts the new codeword where mass actually is, so it wins
    assignments at once instead of tying with its parent.
    """

    def __init__(self, num_codes: int, interval: int = 100, threshold: float = 0.01) -> None:
        self.num_codes = num_codes
        self.interval = interval
        self.threshold = threshold
        self.usage = torch.zeros(num_codes)
        self.steps = 0
        self.recent: torch.Tensor | None = None

    def observe(self, inputs: torch.Tensor, indices: torch.Tensor) -> None:
        """Record one training step's assignments and keep a sample of its inputs."""
        self.usage += torch.bincount(indices.flatten().cpu(), minlength=self.num_codes).float()
        self.steps += 1
        sample = inputs.detach().float()
        if sample.shape[0] > 4096:
            sample = sample[torch.randperm(sample.shape[0], device=sample.device)[:4096]]
        self.recent = sample

    def due(self) -> bool:
        return self.steps >= self.interval

    @torch.no_grad()
    def replace_dead(self, codebook: nn.Parameter, generator: torch.Generator | None = None) -> torch.Tensor:
        """Re-seed dead codes in place; returns the replaced row indices (possibly empty)."""
        per_step = self.usage / max(self.steps, 1)
        dead = torch.nonzero(per_step < self.threshold).flatten()
        self.usage.zero_()
        self.steps = 0
        if dead.numel() == 0 or self.recent is None or self.recent.shape[0] == 0:
            return dead[:0]
        picks = torch.randint(0, self.recent.shape[0], (dead.numel(),), generator=generator)
        codebook.data[dead.to(codebook.device)] = self.recent[picks.to(self.recent.device)].to(codebook.dtype)
        return dead


@torch.no_grad()
def init_from_samples(codebook: nn.Parameter, samples: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Initialise codewords as distinct random encoder outputs (a cheap k-means++ stand-in)."""
    samples = samples.detach().float()
    num_codes = codebook.shape[0]
    if samples.shape[0] >= num_codes:
        picks = torch.randperm(samples.shape[0], generator=generator)[:num_codes]
    else:
        picks = torch.randint(0, samples.shape[0], (num_codes,), generator=generator)
    chosen = samples[picks.to(samples.device)]
    jitter = 1e-3 * chosen.std().clamp_min(1e-6) * torch.randn(chosen.shape, generator=generator).to(chosen.device)
    codebook.data.copy_((chosen + jitter).to(codebook.dtype))
