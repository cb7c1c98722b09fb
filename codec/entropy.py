"""Entropy coding of codeword indices: the only module that imports constriction.

Each stage has a static integer frequency table measured on the training set and stored
inside the weights file. Both sides turn the same integers into the same float32
probabilities (an exactly rounded division) and hand them to constriction, whose
quantisation of those floats is integer arithmetic: the model is bit-identical on every
machine, which is what lets a file encoded on a GPU decode on a CPU.
"""

from __future__ import annotations

import numpy as np
from constriction import stream

from codec.errors import CorruptBitstreamError

# constriction's default range coder works with 24-bit probabilities; recorded in the header.
TABLE_PRECISION = 24


def smoothed_counts(raw_counts: np.ndarray) -> np.ndarray:
    """+1 on every cell, so every codeword keeps a nonzero probability and stays encodable."""
    counts = np.asarray(raw_counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] < 2 or (counts < 0).any():
        raise ValueError("frequency tables must be a (stages, alphabet≥2) array of non-negative counts")
    return (counts + 1).astype(np.int64)


def _model(counts: np.ndarray) -> stream.model.Categorical:
    probabilities = (counts / counts.sum()).astype(np.float32)
    return stream.model.Categorical(probabilities, perfect=False)


def table_entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Ideal code length per symbol of each stage's table, in bits (what the tables promise)."""
    p = counts / counts.sum(axis=1, keepdims=True)
    return -(p * np.log2(p)).sum(axis=1)


def encode_indices(indices: np.ndarray, tables: np.ndarray) -> bytes:
    """Code the rows of ``indices`` (stages, n) in order, row m with table m.

    ``tables`` holds smoothed integer counts (stages_total, alphabet); the first
    ``indices.shape[0]`` rows are used.
    """
    stages, _ = indices.shape
    if stages > tables.shape[0]:
        raise ValueError(f"{stages} index rows but only {tables.shape[0]} tables")
    if indices.size and (indices.min() < 0 or indices.max() >= tables.shape[1]):
        raise ValueError("index outside the alphabet of the tables")
    encoder = stream.queue.RangeEncoder()
    for m in range(stages):
        encoder.encode(np.ascontiguousarray(indices[m], dtype=np.int32), _model(tables[m]))
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_indices(payload: bytes, tables: np.ndarray, stages: int, count: int) -> np.ndarray:
    """Inverse of :func:`encode_indices` for exactly ``stages × count`` symbols.

    A range decoder reads garbage without complaint, so the container's CRC is the real
    integrity check; here we still insist the words divide evenly and are all consumed.
    """
    if len(payload) == 0 or len(payload) % 4:
        raise CorruptBitstreamError("entropy-coded payload length is not a whole number of 32-bit words")
    if not 1 <= stages <= tables.shape[0]:
        raise CorruptBitstreamError(f"file declares {stages} stages; the model has {tables.shape[0]}")
    # Every symbol costs at least −log₂(p_max) bits of its stage's table. A payload too short
    # to hold the declared symbols is refused here, before allocating for them: a tiny file
    # declaring a huge image must not cost memory.
    p_max = tables[:stages].max(axis=1) / tables[:stages].sum(axis=1)
    min_bits = float(count * -np.log2(p_max).sum())
    if len(payload) * 8 * 1.01 + 64 < min_bits:
        raise CorruptBitstreamError(f"entropy-coded payload of {len(payload)} bytes is too short for "
                                    f"{stages}×{count} symbols")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    decoder = stream.queue.RangeDecoder(words)
    out = np.empty((stages, count), dtype=np.int64)
    try:
        for m in range(stages):
            out[m] = decoder.decode(_model(tables[m]), count)
    except Exception as exc:  # constriction raises on streams it cannot parse at all
        raise CorruptBitstreamError(f"entropy-coded payload is damaged ({exc})") from None
    if not decoder.maybe_exhausted():
        raise CorruptBitstreamError("entropy-coded payload has data left after the last symbol")
    return out
