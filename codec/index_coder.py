"""Entropy coding of codeword indices: the payload of a .dvq file (constriction's range
coder with the learned index model's probabilities; codec/dct_layer.py is the only other
module that uses the coder). docs/format.md describes the stream for a reader.

The payload codes stage 1's indices, then stage 2's, and so on. Within a stage, rows go
top to bottom, and each row in two passes: its even columns, then its odd ones (which then
know their left and right neighbours). Each symbol is coded with the integer frequencies
the index model (codec/index_model.py) computes from what the decoder already has, which
are bit-identical on every machine; constriction turns them into its 24-bit probabilities
with integer-exact arithmetic on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from constriction import stream

from diveq_codec.codec import container
from diveq_codec.codec.errors import CorruptBitstreamError
from diveq_codec.codec.index_adaptation import StageCounts, first_contexts
from diveq_codec.codec.index_model import IndexModel, frequencies, margin, padded, previous_context, tokens_of

# constriction's default range coder works with 24-bit probabilities; the header records it.
TABLE_PRECISION = container.TABLE_PRECISION
# Added to a symbol's probability before the decoder counts its cost (decode_indices): four
# units of 2^-TABLE_PRECISION, above what constriction's quantisation can add (its floor of
# one unit per symbol, and rounding).
COST_FLOOR_SLACK = 4.0 / 2**TABLE_PRECISION
_MODEL = stream.model.Categorical(perfect=False)  # probabilities given per symbol
# The fewest payload bytes a file of this many pixels may have (rounded up to whole words):
# decoding costs about a second per megapixel whatever the payload holds, and the cheapest
# symbols cost 0.044 bits each, so without a floor 6 KB could declare 50 megapixels of work.
# At one byte per 1,024 pixels a file pays about a millisecond of decoding per byte at
# worst. Photos need far more (Kodak's smallest file, at quality 1, is 0.041 bpp: 5 times the
# floor's 0.0078); a payload that would be shorter, a flat image's, is padded with zero words.
PIXELS_PER_PAYLOAD_BYTE = 1024
# Latents in a strip, whose previous-stage terms (and in the encoder, the network's outputs)
# are computed at once, in whole rows: bounds the memory of a large image's coding, which
# runs beside the DCT layer's. The encoder's tables for 32,768 latents took about 0.3 GB.
STRIP_LATENTS = 16_384


@contextmanager
def coder_errors(what: str) -> Iterator[None]:
    """Whatever constriction raises while decoding ``what`` becomes one CorruptBitstreamError
    (exit 3, one line): its errors come in several types, and a Rust panic is not even an
    Exception."""
    try:
        yield
    except CorruptBitstreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - constriction raises on streams it cannot parse at all
        raise CorruptBitstreamError(f"{what} is damaged ({exc})") from None
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise CorruptBitstreamError(f"{what} is damaged (coder panic: {exc})") from None


class StageCoding:
    """One stage's probabilities as coding goes, computed the same way by encoder and decoder.

    ``strips`` goes through the rows a strip at a time and ``passes`` through a strip's
    passes, (row, cols, the adaptation's contexts); ``probabilities`` gives their frequencies
    and ``coded`` records their symbols, which the later passes see (``all_passes`` chains
    the strips' passes). The encoder, which knows every symbol, takes
    the adaptation's terms a pass at a time (``adaptive_terms``, cheap) and runs the network
    on a whole strip at once (``frequencies_of``): the same integers, in a tenth of the calls.
    """

    def __init__(self, model: IndexModel, stage: int, maps: np.ndarray) -> None:
        self.model, self.stage, self.maps = model, stage, maps
        self.stage_map = padded(maps[stage], model)
        self.pad = margin(model)
        self.counts = StageCounts(model.codes, model.log_table, model.stages[stage].adapt_weight)
        self.terms = np.empty((0, 0, 0))
        self.top = 0

    def strips(self) -> Iterator[tuple[int, int]]:
        height, width = self.maps.shape[1:]
        rows = max(1, STRIP_LATENTS // width)
        for self.top in range(0, height, rows):
            bottom = min(height, self.top + rows)
            self.terms = self._strip_terms(self.top, bottom)
            yield self.top, bottom

    def passes(self, top: int, bottom: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(row, cols, contexts) of each pass: the contexts are known before the pass is coded
        (the row above, or the stage before), so they are looked up once."""
        width = self.maps.shape[2]
        even, odd = np.arange(0, width, 2), np.arange(1, width, 2)
        for row in range(top, bottom):
            for cols in (even, odd) if odd.size else (even,):
                yield row, cols, first_contexts(self.maps, self.stage, row, cols, self.model.codes)

    def all_passes(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for top, bottom in self.strips():
            yield from self.passes(top, bottom)

    def _strip_terms(self, top: int, bottom: int) -> np.ndarray:
        """The first-layer terms from earlier stages of rows top..bottom − 1, (rows, w, H):
        computed on the strip plus the row either side that the 3×3 window reaches (whose own
        terms are dropped), zeros for stage 1. Strips bound the memory of a large image."""
        model, stage, maps = self.model, self.stage, self.maps
        if stage == 0:
            return np.zeros((bottom - top, maps.shape[2], model.stages[0].bias.shape[0]))
        start, stop = max(0, top - 1), min(maps.shape[1], bottom + 1)
        terms = previous_context(model, stage, maps[:stage, start:stop])
        return terms[top - start : top - start + bottom - top]

    def adaptive_terms(self, contexts: np.ndarray) -> np.ndarray | None:
        return self.counts.terms(contexts)

    def frequencies_of(self, rows: np.ndarray, cols: np.ndarray, adaptive: np.ndarray | None) -> np.ndarray:
        tokens = tokens_of(self.stage_map, rows, cols, self.model)
        return frequencies(self.model, self.stage, self.terms[rows - self.top, cols], tokens, adaptive)

    def probabilities(self, row: int, cols: np.ndarray, contexts: np.ndarray) -> np.ndarray:
        return self.frequencies_of(np.full(cols.size, row), cols, self.counts.terms(contexts))

    def coded(self, row: int, cols: np.ndarray, symbols: np.ndarray, contexts: np.ndarray) -> None:
        self.stage_map[row + self.pad, cols + self.pad] = symbols
        self.maps[self.stage, row, cols] = symbols
        self.counts.coded(contexts, symbols)


def min_payload_bytes(pixels: int) -> int:
    """The shortest payload a file of ``pixels`` pixels may have: PIXELS_PER_PAYLOAD_BYTE's comment."""
    return 4 * -(-pixels // (4 * PIXELS_PER_PAYLOAD_BYTE))


def encode_indices(indices: np.ndarray, model: IndexModel, width: int, min_bytes: int = 0) -> bytes:
    """Code ``indices`` (stages, h·w, raster order); ``width`` is the latent grid's width. A
    stream shorter than ``min_bytes`` (whole words) is padded with zero words to that length."""
    stages, count = indices.shape
    if not 1 <= stages <= len(model.stages):
        raise ValueError(f"{stages} index rows but the index model has {len(model.stages)} stages")
    if width < 1 or count % width:
        raise ValueError(f"{count} symbols do not form rows of width {width}")
    if indices.size and (indices.min() < 0 or indices.max() >= model.codes):
        raise ValueError("index outside the alphabet of the index model")
    maps = np.array(indices, dtype=np.intp).reshape(stages, count // width, width)
    encoder = stream.queue.RangeEncoder()
    for m in range(stages):
        coding = StageCoding(model, m, maps)
        for top, bottom in coding.strips():
            rows, cols, adaptive = [], [], []
            for row, pass_cols, contexts in coding.passes(top, bottom):
                rows.append(np.full(pass_cols.size, row))
                cols.append(pass_cols)
                adaptive.append(coding.adaptive_terms(contexts))
                coding.coded(row, pass_cols, maps[m, row, pass_cols], contexts)
            all_rows, all_cols = np.concatenate(rows), np.concatenate(cols)
            terms = None if adaptive[0] is None else np.concatenate(adaptive)
            encoder.encode(np.ascontiguousarray(maps[m, all_rows, all_cols], dtype=np.int32), _MODEL,
                           coding.frequencies_of(all_rows, all_cols, terms))
    return _padded(encoder.get_compressed().astype("<u4").tobytes(), min_bytes)


def _padded(words: bytes, min_bytes: int) -> bytes:
    if min_bytes % 4:
        raise ValueError(f"a payload's least length {min_bytes} is not whole words")
    return words + bytes(max(0, min_bytes - len(words)))


def min_payload_bits(model: IndexModel, stages: int, count: int) -> float:
    """The fewest bits ``stages × count`` symbols can take: each costs at least −log₂ of the
    highest probability the index model can give (plus constriction's rounding)."""
    p_max = min(1.0, model.max_probability() + COST_FLOOR_SLACK)
    return float(stages * count * -np.log2(p_max))


def decode_indices(payload: bytes, model: IndexModel, stages: int, count: int, width: int,
                   min_bytes: int = 0) -> np.ndarray:
    """Inverse of :func:`encode_indices` for exactly ``stages × count`` symbols (stages, count).

    A range decoder reads garbage without complaint, so the container's CRC is the real
    integrity check; here the decoder also insists that the payload is at least ``min_bytes``
    long, can hold the declared symbols, and is exactly the stream the encoder writes for
    them (padded to ``min_bytes`` as it pads).
    """
    if len(payload) == 0 or len(payload) % 4:
        raise CorruptBitstreamError("entropy-coded payload length is not a whole number of 32-bit words")
    if len(payload) < min_bytes:
        raise CorruptBitstreamError(f"entropy-coded payload of {len(payload)} bytes is shorter than the "
                                    f"{min_bytes} bytes the image's size requires")
    if not 1 <= stages <= len(model.stages):
        raise CorruptBitstreamError(f"file declares {stages} stages; the index model codes 1 to {len(model.stages)}")
    if width < 1 or count % width:
        raise CorruptBitstreamError(f"{count} symbols do not form rows of width {width}")
    # Refused before allocating or decoding anything: a few bytes cannot declare a giant image.
    budget = len(payload) * 8 * 1.01 + 64
    if budget < min_payload_bits(model, stages, count):
        raise CorruptBitstreamError(f"entropy-coded payload of {len(payload)} bytes is too short for "
                                    f"{stages}×{count} symbols")
    maps = np.zeros((stages, count // width, width), dtype=np.intp)
    decoder = stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    echo = stream.queue.RangeEncoder()  # the decoded symbols coded again, for the exact-stream check
    # The bound above lets near-certain symbols through, so the decoder also adds up what the
    # symbols it has decoded must have cost (a lower bound on the coder's: the probability plus
    # COST_FLOOR_SLACK) and stops once that exceeds the payload: a stream read past its end
    # yields improbable symbols and passes the budget within a few hundred of them.
    spent = 0.0
    with coder_errors("entropy-coded payload"):
        for m in range(stages):
            coding = StageCoding(model, m, maps)
            for row, cols, contexts in coding.all_passes():
                probabilities = coding.probabilities(row, cols, contexts)
                symbols = decoder.decode(_MODEL, probabilities).astype(np.intp)
                echo.encode(np.ascontiguousarray(symbols, dtype=np.int32), _MODEL, probabilities)
                chosen = probabilities[np.arange(cols.size), symbols] / probabilities.sum(axis=1)
                spent -= float(np.log2(np.minimum(chosen + COST_FLOOR_SLACK, 1.0)).sum())
                if spent > budget:
                    raise CorruptBitstreamError(f"entropy-coded payload of {len(payload)} bytes ends "
                                                f"before its {stages}×{count} symbols do")
                coding.coded(row, cols, symbols, contexts)
    # The range decoder reads ahead, so a word appended to (or altered at the end of) a valid
    # stream can decode to the same symbols; a file must hold exactly what encode writes.
    if _padded(echo.get_compressed().astype("<u4").tobytes(), min_bytes) != payload:
        raise CorruptBitstreamError("entropy-coded payload is not the stream of its symbols (extra or altered words)")
    return maps.reshape(stages, count).astype(np.int64)
