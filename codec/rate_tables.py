"""Static frequency tables of the codeword indices, measured on the training photos and
stored in the weights file (``entropy_counts``): the encoder's rate term (``code_lengths``,
see models.residual.RateCosts) and the quantizer study's zeroth-order coder. The index
coder itself uses the learned index model (codec/index_coder.py).

Each stage's tables are counts per context (stages, alphabet + 1, alphabet): for stage 1
the index directly above (row ``alphabet`` for the top row), for stage m > 1 the index stage
m − 1 chose at the same position.
"""

from __future__ import annotations

import numpy as np
from constriction import stream


def context_counts(indices: np.ndarray, width: int, alphabet: int) -> np.ndarray:
    """Raw counts (stages, alphabet + 1, alphabet) of each symbol in its context, for one image."""
    stages, _ = indices.shape
    counts = np.zeros((stages, alphabet + 1, alphabet), dtype=np.int64)
    for m in range(stages):
        np.add.at(counts[m], (first_contexts(indices, m, width, alphabet), indices[m]), 1)
    return counts


def smoothed_counts(raw_counts: np.ndarray) -> np.ndarray:
    """+1 on every cell, so every codeword keeps a nonzero probability in every context.

    Context tables are (stages, alphabet + 1, alphabet); context-free ones (stages, alphabet).
    """
    counts = np.asarray(raw_counts, dtype=np.int64)
    shaped = counts.ndim == 2 or (counts.ndim == 3 and counts.shape[1] == counts.shape[2] + 1)
    if not shaped or counts.shape[-1] < 2 or (counts < 0).any():
        raise ValueError("frequency tables must be (stages, [alphabet+1,] alphabet≥2) non-negative counts")
    return counts + 1


def table_entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Entropy per symbol of each stage's tables in bits (conditional, weighted by context use)."""
    if counts.ndim == 2:
        counts = counts[:, None, :]
    p = counts / counts.sum(axis=2, keepdims=True)
    weight = counts.sum(axis=2) / counts.sum(axis=(1, 2))[:, None]
    return -(weight[..., None] * p * np.log2(p)).sum(axis=(1, 2))


def code_lengths(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What each codeword costs to code, in bits, by the static tables (the encoder's rate
    term; see models.residual.RateCosts): stage 1's by codeword alone, (alphabet,), from its
    tables summed over contexts; stage m's (stages − 1, alphabet, alphabet) in the context of
    stage m − 1's index. The coder spends somewhat less (its tables learn the image)."""
    counts = np.asarray(tables, dtype=np.float64)
    alphabet = counts.shape[2]
    following = counts[1:, :alphabet, :]  # contexts 0..alphabet−1; the last row is stage 1's top row
    return -np.log2(_frequencies(tables, 0)), -np.log2(following / following.sum(axis=2, keepdims=True))


def _frequencies(tables: np.ndarray, stage: int) -> np.ndarray:
    """Each symbol's training-set frequency at a stage, whatever its context (float64)."""
    counts = np.asarray(tables[stage], dtype=np.int64).sum(axis=0)
    return counts / counts.sum()


def first_contexts(indices: np.ndarray, stage: int, width: int, alphabet: int) -> np.ndarray:
    """The first context of each symbol of a stage (``alphabet`` for a neighbour off the grid)."""
    if stage > 0:
        return indices[stage - 1]
    above = np.full(indices.shape[1], alphabet, dtype=np.int64)
    above[width:] = indices[0, :-width]
    return above


def encode_without_context(indices: np.ndarray, tables: np.ndarray) -> bytes:
    """Zeroth-order coding, one (stages, alphabet) table per stage and no context: the rate
    the quantizer study charges each quantizer, whose latents have no image layout there."""
    encoder = stream.queue.RangeEncoder()
    for m in range(indices.shape[0]):
        probabilities = (tables[m] / tables[m].sum()).astype(np.float32)
        encoder.encode(np.ascontiguousarray(indices[m], dtype=np.int32),
                       stream.model.Categorical(probabilities, perfect=False))
    return encoder.get_compressed().astype("<u4").tobytes()
