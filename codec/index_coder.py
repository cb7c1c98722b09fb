"""Entropy coding of codeword indices: the payload of a .dvq file (constriction's range
coder; codec/dct_layer.py is the only other module that uses it). docs/format.md describes
the stream for a reader.

Each stage has integer frequency tables, measured on the training set and stored inside
the weights file, one table per *first context*:

- stage 1: the index of the latent directly above (a row of its own for the top row),
  since neighbouring blocks of an image tend to pick related codewords;
- stage m > 1: the index that stage m − 1 chose at the same position.

Each context's table adapts to the image as it goes, a row of latents at a time
(``AdaptiveTables``), and takes a second opinion from a *second context*, whose tables the
weights file stores too (``TwoContextTables``):

- stage 1: the index above-left;
- stage 2: none (the first context's table alone: a second context made it worse);
- stage m > 2: the index that stage m − 2 chose at the same position.

Every context is known to the decoder before it needs it (rows are decoded top to bottom,
stages in order), and both sides turn the same integers into the same float32
probabilities before constriction quantises them with integer arithmetic. Each step is an
IEEE operation that every machine rounds the same way (integer sums, then division,
multiplication, square root; never a float reduction whose order a SIMD library may
choose), so the model is bit-identical on every machine: a file encoded on a GPU decodes
on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from constriction import stream

from diveq_codec.codec import container
from diveq_codec.codec.errors import CorruptBitstreamError, WeightsError

# constriction's default range coder works with 24-bit probabilities; the header records it.
TABLE_PRECISION = container.TABLE_PRECISION
# Added to a symbol's probability before the decoder counts its cost (decode_indices): four
# units of 2^-TABLE_PRECISION, above what constriction's quantisation can add (its floor of
# one unit per symbol, and rounding).
COST_FLOOR_SLACK = 4.0 / 2**TABLE_PRECISION


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


def second_contexts(indices: np.ndarray, stage: int, width: int, alphabet: int) -> np.ndarray | None:
    """The second context of each symbol of a stage (None for stage 2, which has none)."""
    if stage > 1:
        return indices[stage - 2]
    if stage == 1:
        return None
    above_left = np.full(indices.shape[1], alphabet, dtype=np.int64)
    above_left[width + 1:] = indices[0, :-width - 1]
    above_left[width::width] = alphabet  # the first column has nothing to its left
    return above_left


def second_context_counts(indices: np.ndarray, width: int, alphabet: int) -> np.ndarray:
    """Raw counts (stages, alphabet + 1, alphabet) of each symbol in its second context, for
    one image; stage 2's are zero."""
    stages, _ = indices.shape
    counts = np.zeros((stages, alphabet + 1, alphabet), dtype=np.int64)
    for m in range(stages):
        contexts = second_contexts(indices, m, width, alphabet)
        if contexts is not None:
            np.add.at(counts[m], (contexts, indices[m]), 1)
    return counts


_MODEL = stream.model.Categorical(perfect=False)  # probabilities given per symbol

# The weight, in symbols, of a context's training-set table against what the image has
# already coded in that context. Chosen on training photos, never on Kodak: over 85 of
# them, 32 / 128 / 512 saved 0.1 / 1.7 / 1.3 % of the bits at 12 stages and 8.0 / 7.5 /
# 4.8 % at 2 (with a probe since removed; docs/history.md).
ADAPTIVE_PRIOR_WEIGHT = 128
# Once an image has coded more than this many symbols in one context, that context's counts
# are halved. No probability can then exceed (w·p + N)/(w + N), p the static table's largest
# and N ≤ the cap plus one row, so every symbol costs a known minimum of bits and a few bytes
# cannot declare a giant image (see decode_indices). Large flat areas reach it: in 2 of the
# 24 Kodak images one context passes it, which moves their file sizes by a few bytes.
ADAPTIVE_COUNT_CAP = 2048


class AdaptiveTables:
    """The probability tables of one stage in one kind of context, handed out a row of
    latents at a time: each context's training-set counts C[c] blended with what earlier
    rows of this stage of this image coded in the same context, w·C[c] + T[c]·n[c]
    (T[c] = ΣC[c]). These are exact integers, which every machine turns into the same
    float32 probabilities, and a decoder knows them before each row. ``row`` and ``coded``
    take (and ignore) second contexts, as TwoContextTables' do, so the coding loops treat
    both alike.
    """

    def __init__(self, tables: np.ndarray, stage: int) -> None:
        # The blend w·C[c] + T[c]·n[c] and its row sums T[c]·(w + Σn[c]) are kept up to date
        # as symbols are coded, so that a row of probabilities is one gather and one division.
        self.counts = np.asarray(tables[stage], dtype=np.int64)
        self.totals = self.counts.sum(axis=1)
        self.seen = np.zeros_like(self.counts)
        self.seen_sums = np.zeros_like(self.totals)
        self.blended = ADAPTIVE_PRIOR_WEIGHT * self.counts
        self.blended_sums = ADAPTIVE_PRIOR_WEIGHT * self.totals

    def row(self, contexts: np.ndarray, second_contexts: np.ndarray | None = None) -> np.ndarray:
        return self.row64(contexts).astype(np.float32)

    def row64(self, contexts: np.ndarray) -> np.ndarray:
        """The probabilities of a row in float64 (each one exactly rounded)."""
        return self.blended[contexts] / self.blended_sums[contexts, None]

    def coded(self, contexts: np.ndarray, symbols: np.ndarray, second_contexts: np.ndarray | None = None) -> None:
        np.add.at(self.seen, (contexts, symbols), 1)
        np.add.at(self.seen_sums, contexts, 1)
        np.add.at(self.blended, (contexts, symbols), self.totals[contexts])
        full = np.unique(contexts[self.seen_sums[contexts] > ADAPTIVE_COUNT_CAP])
        if full.size:
            self.seen[full] = (self.seen[full] + 1) // 2
            self.seen_sums[full] = self.seen[full].sum(axis=1)
            self.blended[full] = ADAPTIVE_PRIOR_WEIGHT * self.counts[full] + self.totals[full, None] * self.seen[full]
        self.blended_sums = self.totals * (ADAPTIVE_PRIOR_WEIGHT + self.seen_sums)


# The second opinion scales the first context's adaptive probability of each symbol by
# sqrt(p₂/p), p₂ its adaptive probability in the second context and p its frequency in the
# training set (constriction renormalises). On held-out training photos (a probe since
# removed; docs/history.md) the square root (a geometric mixture of weight ½) saved
# 2.4 % of stage 1's bits and 1.2–2.2 % of each later stage's but the second, where the
# plain product cost 1.7 % at stage 1 and saved only 0.2–1.7 % later; the clip to [1/8, 8]
# and the floor (see TwoContextTables.row) cost under 0.01 % there, and the clip bounds
# how probable a symbol can get (see _max_probability).
SECOND_OPINION_LIMIT = 8.0
RELATIVE_FLOOR = 2.0**-14  # see TwoContextTables.row


class TwoContextTables:
    """The tables of one stage with a second context: the first context's adaptive tables,
    each probability scaled by the clipped square root of the second context's over the
    symbol's training-set frequency. The rows are handed over unnormalised: constriction
    normalises each row itself, from its float32 values alone (as it does AdaptiveTables'
    rows, which do not sum to exactly 1 either), the same way on both sides."""

    def __init__(self, tables: np.ndarray, second: np.ndarray, stage: int) -> None:
        self.first = AdaptiveTables(tables, stage)
        self.second = AdaptiveTables(second, stage)
        self.frequency = _frequencies(tables, stage).astype(np.float32)

    def row(self, contexts: np.ndarray, second_contexts: np.ndarray | None = None) -> np.ndarray:
        # A row's scale is free (constriction normalises), so the first context's blended
        # counts stand in for its probabilities; float32 from the first division on halves
        # the time of a row, and float32 operations are as exactly rounded as float64 ones.
        opinion = self.second.row64(second_contexts).astype(np.float32)
        np.divide(opinion, self.frequency, out=opinion)
        np.sqrt(opinion, out=opinion)
        np.clip(opinion, 1.0 / SECOND_OPINION_LIMIT, SECOND_OPINION_LIMIT, out=opinion)
        weights = self.first.blended[contexts].astype(np.float32)
        np.multiply(weights, opinion, out=weights)
        # Floor every weight at RELATIVE_FLOOR of its row's largest (both exact operations).
        # Without it the clip can push a rare symbol's share below ~1e-8, where constriction's
        # quantiser loses it to float32 rounding and panics; with it no share falls below
        # RELATIVE_FLOOR / alphabet (4.8e-7 at 128 codes, the smallest the first context's
        # tables alone reach with the shipped tables).
        np.maximum(weights, weights.max(axis=1, keepdims=True) * RELATIVE_FLOOR, out=weights)
        return weights

    def coded(self, contexts: np.ndarray, symbols: np.ndarray, second_contexts: np.ndarray | None = None) -> None:
        self.first.coded(contexts, symbols)
        self.second.coded(second_contexts, symbols)


def stage_tables(tables: np.ndarray, second: np.ndarray, stage: int) -> AdaptiveTables | TwoContextTables:
    """The probability model of one stage, fresh for an image."""
    if stage == 1:  # stage 2 has no second context
        return AdaptiveTables(tables, stage)
    return TwoContextTables(tables, second, stage)


def _max_probability(tables: np.ndarray, stage: int, width: int) -> float:
    """No symbol of this stage gets a higher probability (see ADAPTIVE_COUNT_CAP)."""
    counts = tables[stage]
    p_max = float((counts / counts.sum(axis=1, keepdims=True)).astype(np.float32).max())
    most_seen = ADAPTIVE_COUNT_CAP + width
    p_max = (ADAPTIVE_PRIOR_WEIGHT * p_max + most_seen) / (ADAPTIVE_PRIOR_WEIGHT + most_seen)
    if stage == 1:
        return p_max
    # The most a weight p·s can take of a sum in which every other weight has s ≥ 1/L.
    scaled = p_max * SECOND_OPINION_LIMIT
    return scaled / (scaled + (1 - p_max) / SECOND_OPINION_LIMIT)


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


def _check_second_tables(tables: np.ndarray, second: np.ndarray | None) -> np.ndarray:
    """The second contexts' tables, which the format needs: weights without them (exported
    before they existed) cannot code it, a weights error (exit 4)."""
    if second is None:
        raise WeightsError("the model's weights have no second-context entropy tables, which this "
                           "format needs; export the weights again")
    if second.shape != tables.shape:
        raise ValueError(f"second-context tables {second.shape} do not match the tables {tables.shape}")
    return second


def encode_indices(indices: np.ndarray, tables: np.ndarray, width: int, *, second: np.ndarray | None) -> bytes:
    """Code the rows of ``indices`` (stages, h·w, raster order) in order, each in its contexts.

    ``tables`` and ``second`` hold the first and second contexts' smoothed integer counts
    (stages_total, alphabet + 1, alphabet); the first ``indices.shape[0]`` stages are used.
    ``width`` is the latent grid's width.
    """
    second = _check_second_tables(tables, second)
    stages, count = indices.shape
    alphabet = tables.shape[2]
    if stages > tables.shape[0]:
        raise ValueError(f"{stages} index rows but only {tables.shape[0]} tables")
    if width < 1 or count % width:
        raise ValueError(f"{count} symbols do not form rows of width {width}")
    if indices.size and (indices.min() < 0 or indices.max() >= alphabet):
        raise ValueError("index outside the alphabet of the tables")
    indices = np.asarray(indices, dtype=np.int64)
    encoder = stream.queue.RangeEncoder()
    for m in range(stages):
        contexts = first_contexts(indices, m, width, alphabet)
        seconds = second_contexts(indices, m, width, alphabet)
        stage = stage_tables(tables, second, m)
        for start in range(0, count, width):
            row, symbols = contexts[start : start + width], indices[m, start : start + width]
            row2 = seconds[start : start + width] if seconds is not None else None
            encoder.encode(np.ascontiguousarray(symbols, dtype=np.int32), _MODEL, stage.row(row, row2))
            stage.coded(row, symbols, row2)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_indices(payload: bytes, tables: np.ndarray, stages: int, count: int, width: int, *,
                   second: np.ndarray | None) -> np.ndarray:
    """Inverse of :func:`encode_indices` for exactly ``stages × count`` symbols.

    A range decoder reads garbage without complaint, so the container's CRC is the real
    integrity check; here we still insist the words divide evenly and are all consumed.
    """
    second = _check_second_tables(tables, second)
    if len(payload) == 0 or len(payload) % 4:
        raise CorruptBitstreamError("entropy-coded payload length is not a whole number of 32-bit words")
    if not 1 <= stages <= tables.shape[0]:
        raise CorruptBitstreamError(f"file declares {stages} stages; the model has {tables.shape[0]}")
    if width < 1 or count % width:
        raise CorruptBitstreamError(f"{count} symbols do not form rows of width {width}")
    alphabet = tables.shape[2]
    # Every symbol costs at least −log₂ of the highest probability its stage can give. A
    # payload too short to hold the declared symbols is refused here, before allocating or
    # decoding them: a tiny file declaring a huge image must cost neither memory nor time.
    p_max = np.array([_max_probability(tables, m, width) for m in range(stages)], dtype=np.float64)
    min_bits = float(count * -np.log2(p_max).sum())
    budget = len(payload) * 8 * 1.01 + 64
    if budget < min_bits:
        raise CorruptBitstreamError(f"entropy-coded payload of {len(payload)} bytes is too short for "
                                    f"{stages}×{count} symbols")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    decoder = stream.queue.RangeDecoder(words)
    out = np.empty((stages, count), dtype=np.int64)
    nothing = np.full(width, alphabet, dtype=np.int64)  # the context of a neighbour off the grid
    positions = np.arange(width)
    # The bound above is loose where probabilities may come near 1 (the second opinion's
    # can), so the decoder also adds up what the symbols it has decoded must have cost, and
    # stops once that exceeds the payload: a stream read past its end yields improbable
    # symbols and passes the budget within a few hundred of them. The cost counted is a
    # lower bound on the coder's: −log₂ of the probability plus COST_FLOOR_SLACK, since
    # constriction gives every symbol at least one unit of 2^-TABLE_PRECISION (a symbol of
    # probability 1e-12 costs 24 bits, not 40) and rounds the others by about a unit. So a
    # real file never reaches it (Kodak's files at qualities 1, 6 and 12 stay below 99.997 %
    # of their payload). Its float sums may round differently on another machine, by far
    # less than the budget's margin.
    spent = 0.0
    echo = stream.queue.RangeEncoder()  # the decoded symbols coded again, for the exact-stream check
    with coder_errors("entropy-coded payload"):
        for m in range(stages):
            stage = stage_tables(tables, second, m)
            above = nothing  # stage 1's context for the top row
            for start in range(0, count, width):  # row by row: stage 1's context is the row above
                contexts = out[m - 1, start : start + width] if m else above
                row2 = _decoded_second_contexts(out, m, start, width, above, nothing)
                probabilities = stage.row(contexts, row2)
                symbols = decoder.decode(_MODEL, probabilities).astype(np.int64)
                echo.encode(np.ascontiguousarray(symbols, dtype=np.int32), _MODEL, probabilities)
                chosen = probabilities[positions, symbols] / probabilities.sum(axis=1)
                spent -= float(np.log2(np.minimum(chosen + COST_FLOOR_SLACK, 1.0)).sum())
                if spent > budget:
                    raise CorruptBitstreamError(f"entropy-coded payload of {len(payload)} bytes ends before "
                                                f"its {stages}×{count} symbols do")
                out[m, start : start + width] = symbols
                stage.coded(contexts, symbols, row2)
                above = symbols
    # The range decoder reads ahead, so a word appended to (or altered at the end of) a valid
    # stream can decode to the same symbols; a file must hold exactly what encode writes.
    if not decoder.maybe_exhausted() or echo.get_compressed().astype("<u4").tobytes() != payload:
        raise CorruptBitstreamError("entropy-coded payload is not the stream of its symbols (extra or altered words)")
    return out


def _decoded_second_contexts(out: np.ndarray, stage: int, start: int, width: int, above: np.ndarray,
                             nothing: np.ndarray) -> np.ndarray | None:
    """second_contexts of one row, from what the decoder has decoded so far: for stage 1 the
    row above shifted right by one (nothing left of the first column)."""
    if stage == 1:
        return None
    if stage:
        return out[stage - 2, start : start + width]
    return np.concatenate((nothing[:1], above[:-1]))


def encode_without_context(indices: np.ndarray, tables: np.ndarray) -> bytes:
    """Zeroth-order coding, one (stages, alphabet) table per stage and no context: the rate
    the quantizer study charges each quantizer, whose latents have no image layout there."""
    encoder = stream.queue.RangeEncoder()
    for m in range(indices.shape[0]):
        probabilities = (tables[m] / tables[m].sum()).astype(np.float32)
        encoder.encode(np.ascontiguousarray(indices[m], dtype=np.int32),
                       stream.model.Categorical(probabilities, perfect=False))
    return encoder.get_compressed().astype("<u4").tobytes()
