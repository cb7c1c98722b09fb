"""The encoder's rate term from the index model itself: what each codeword would cost the
coder at each latent, given the indices an earlier search chose (see VQAutoencoder.
encode_indices' ``recost``).

The first search charges the static tables (codec/rate_tables.py), which predict the index
model's bits poorly (experiments/index_model/rate_term_gap.py); each later round charges
the index model's own bits given the previous round's indices around the latent, so the
search settles on indices the coder finds cheap. The costs are the network's, without
the per-image adaptation (which depends on the coding order), computed for every latent
at once from integers, so they are the same on every machine: a codeword's cost is how far
its logit lies below the largest (the output table's step, in 1/16 bit), which is its
code length up to a constant per latent, and a constant per latent changes no choice.
"""

from __future__ import annotations

import numpy as np
import torch

from diveq_codec.codec.index_model import IndexModel, output_steps, padded, previous_context, tokens_of
from diveq_codec.models.autoencoder import Recost
from diveq_codec.models.residual import RateCosts

# Searches after the first that charge the index model's costs. On 5 held-out training
# photos at 3 stages, the second round adds about as much again as the first (docs/encoder.md).
ROUNDS = 2
# Above this many latents (4.2 megapixels) the search keeps the static tables: the costs
# take stages × latents × codes float32 numbers (128 MB at 4 stages and this size), and
# their time grows with the latents (docs/results.md, "What the search's rounds cost").
MAX_LATENTS = 1 << 16
STRIP_ROWS = 64  # rows of latents whose costs are computed at once


def stage_bits(model: IndexModel, stage: int, maps: np.ndarray) -> np.ndarray:
    """The bits (h·w, codes) the index model gives each codeword at each latent of stage
    ``stage`` of ``maps`` (S, h, w), the other latents being as they are in ``maps``, less
    the bits of the likeliest codeword (multiples of 1/16: exact in any float)."""
    _, h, w = maps.shape
    stage_map = padded(maps[stage], model)
    out = np.empty((h * w, model.codes))
    cols = np.tile(np.arange(w), STRIP_ROWS)
    for top in range(0, h, STRIP_ROWS):
        bottom = min(h, top + STRIP_ROWS)
        rows = np.repeat(np.arange(top, bottom), w)
        if stage == 0:
            first = np.zeros((rows.size, model.stages[0].bias.shape[0]))
        else:
            start, stop = max(0, top - 1), min(h, bottom + 1)
            terms = previous_context(model, stage, maps[:stage, start:stop])
            first = terms[top - start : top - start + bottom - top].reshape(rows.size, -1)
        steps = output_steps(model, stage, first, tokens_of(stage_map, rows, cols[: rows.size], model))
        np.multiply(steps, 1.0 / 16.0, out=out[top * w : bottom * w])
    return out


def model_rate(model: IndexModel, indices: torch.Tensor, grid: tuple[int, int], weight: float) -> RateCosts:
    """λ = ``weight`` times the index model's bits for every stage, latent and codeword,
    given ``indices`` (S, h·w) around each latent."""
    maps = indices.cpu().numpy().reshape(indices.shape[0], *grid).astype(np.intp)
    costs = np.empty((maps.shape[0], maps.shape[1] * maps.shape[2], model.codes), dtype=np.float32)
    for m in range(maps.shape[0]):
        np.multiply(stage_bits(model, m, maps), weight, out=costs[m], casting="same_kind")
    return RateCosts.per_position(torch.from_numpy(costs).to(indices.device))


def rounds_apply(model: IndexModel | None, latents: int) -> bool:
    """Whether the rounds run on an image of ``latents`` latents: with an index model (weights
    in the making have none) and up to MAX_LATENTS."""
    return model is not None and latents <= MAX_LATENTS


def recoster(model: IndexModel | None, weight: float, rounds: int = ROUNDS) -> Recost | None:
    """``rounds`` searches charging the index model's costs after the first, at λ =
    ``weight``; None (the first search only) at λ = 0, the nearest codewords, and without an
    index model (weights in the making, whose first index maps come from the static search)."""
    if model is None or weight == 0 or rounds == 0:
        return None
    done = 0

    def recost(indices: torch.Tensor, grid: tuple[int, int]) -> RateCosts | None:
        nonlocal done
        if done == rounds or not rounds_apply(model, grid[0] * grid[1]):
            return None
        done += 1
        return model_rate(model, indices, grid, weight)

    return recost
