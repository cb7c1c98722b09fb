"""A learned probability model of a residual VQ's codeword indices (the float network
that is trained; codec/index_model.py runs its integer copy, which the coder uses).

Stage m's index at a latent position gets a distribution over the codewords from what a
decoder has at that point:

- the reconstruction of the stages before m (the sum of their codewords), in a 3×3
  window around the position: a 1×1 projection, then a 3×3 convolution;
- the index stage m − 1 chose at the position (an embedding);
- stage m's indices already decoded around it (an embedding per neighbour).

Rows are decoded top to bottom, each in two passes: first the even columns, then the odd
ones, which then know their left and right neighbours. So a neighbour is decoded before
it is needed when it is in one of the two rows above (within two columns), or beside an
odd column. ``NEIGHBOURS`` lists the offsets; a neighbour off the grid is token
``OFF_GRID``, one not yet decoded (beside an even column) token ``NOT_YET``.

The logits are base-2 (p ∝ 2^logit), which the integer copy turns into probabilities
with a table rather than an exponential.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (row, column) offsets of the neighbours a position is conditioned on: rows above, and in
# its own row (odd column offsets only) the even columns, which odd columns know.
NEIGHBOURS = ((-2, -1), (-2, 0), (-2, 1), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (0, -1), (0, 1))
# A wider neighbourhood (19) for a larger model: three rows above, and two more in the row.
WIDE_NEIGHBOURS = ((-3, -1), (-3, 0), (-3, 1), (-2, -2), (-2, -1), (-2, 0), (-2, 1), (-2, 2),
                   (-1, -3), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (-1, 3),
                   (0, -3), (0, -1), (0, 1), (0, 3))
ACTIVATION_CAP = 2.0  # activations are clamped to [0, cap]: the integer copy holds them in a fixed range


@dataclass(frozen=True)
class IndexPriorConfig:
    stages: int = 4
    codes: int = 128
    latent_dim: int = 64
    projected: int = 16
    hidden: int = 64
    neighbours: tuple[tuple[int, int], ...] = NEIGHBOURS

    def __post_init__(self) -> None:
        object.__setattr__(self, "neighbours", tuple(tuple(o) for o in self.neighbours))
        if any(dy > 0 or (dy == 0 and dx % 2 == 0) for dy, dx in self.neighbours):
            raise ValueError("neighbours must lie in rows above, or at odd offsets in the same row")

    @property
    def tokens(self) -> int:  # the codes, then OFF_GRID, then NOT_YET
        return self.codes + 2


def off_grid(config: IndexPriorConfig) -> int:
    return config.codes


def not_yet(config: IndexPriorConfig) -> int:
    return config.codes + 1


def activation(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, ACTIVATION_CAP)


class StagePrior(nn.Module):
    """The model of one stage's indices."""

    def __init__(self, config: IndexPriorConfig, stage: int) -> None:
        super().__init__()
        self.stage = stage
        h = config.hidden
        if stage > 0:
            self.project = nn.Conv2d(config.latent_dim, config.projected, 1)
            self.context = nn.Conv2d(config.projected, h, 3, padding=1)
            self.previous = nn.Embedding(config.codes, h)
        self.neighbours = nn.Parameter(torch.randn(len(config.neighbours), config.tokens, h) * 0.05)
        self.bias = nn.Parameter(torch.zeros(h))
        self.hidden = nn.Linear(h, h)
        self.out = nn.Linear(h, config.codes)

    def forward(self, previous_sum: torch.Tensor | None, previous_index: torch.Tensor | None,
                tokens: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """Base-2 logits (B, h, w, codes) for ``tokens`` (B, neighbours, h, w); with ``where``
        (B, h, w, bool), only at its positions: (N, codes). The layers after the context
        convolution act on each position alone, so training computes them only where it
        scores."""
        every = where is None
        if every:
            where = torch.ones(tokens.shape[0], *tokens.shape[2:], dtype=torch.bool, device=tokens.device)
        count, vocabulary, width = self.neighbours.shape
        # One table of every neighbour's embeddings: a position's first layer sums one row per neighbour.
        rows = tokens.permute(0, 2, 3, 1)[where] + torch.arange(count, device=tokens.device) * vocabulary
        z = F.embedding_bag(rows, self.neighbours.reshape(count * vocabulary, width), mode="sum") + self.bias
        if self.stage > 0:
            assert previous_sum is not None and previous_index is not None
            z = z + self.context(activation(self.project(previous_sum))).permute(0, 2, 3, 1)[where]
            z = z + self.previous(previous_index[where])
        logits = self.out(activation(self.hidden(activation(z))))
        return logits.reshape(*tokens.shape[:1], *tokens.shape[2:], -1) if every else logits


class IndexPrior(nn.Module):
    def __init__(self, config: IndexPriorConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(StagePrior(config, m) for m in range(config.stages))


def load_checkpoint(path: Path) -> tuple[IndexPrior, dict]:
    """The trained prior of a checkpoint of models/train_index_prior.py (checkpoint.pt or
    best.pt), and the checkpoint's record (step, elapsed_s, …)."""
    state = torch.load(path, weights_only=False)
    prior = IndexPrior(IndexPriorConfig(**state["config"]))
    prior.load_state_dict(state["model"])
    return prior, state


def neighbour_tokens(indices: torch.Tensor, config: IndexPriorConfig) -> torch.Tensor:
    """(B, h, w) indices of one stage → (B, neighbours, h, w) tokens, as the decoder sees
    them (teacher forcing: every position at once)."""
    b, h, w = indices.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in config.neighbours)
    padded = F.pad(indices, (pad, pad, pad, pad), value=off_grid(config))
    out = torch.empty((b, len(config.neighbours), h, w), dtype=indices.dtype, device=indices.device)
    even = torch.arange(w, device=indices.device) % 2 == 0
    for k, (dy, dx) in enumerate(config.neighbours):
        out[:, k] = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        if dy == 0:
            out[:, k, :, even] = not_yet(config)
    return out


def stage_inputs(maps: torch.Tensor, stage: int, codebooks: torch.Tensor, config: IndexPriorConfig
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Inputs of stage ``stage`` for index maps (B, S, h, w) (long): the previous stages' sum
    (B, D, h, w), stage − 1's indices and the neighbour tokens."""
    tokens = neighbour_tokens(maps[:, stage], config)
    if stage == 0:
        return None, None, tokens
    total = codebooks[0][maps[:, 0]]
    for m in range(1, stage):
        total = total + codebooks[m][maps[:, m]]
    return total.permute(0, 3, 1, 2), maps[:, stage - 1], tokens


def bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Bits of each target under base-2 logits."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]) * math.log(2.0), targets.reshape(-1),
                           reduction="none") / math.log(2.0)
