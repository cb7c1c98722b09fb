"""The coding side of the DCT layer (codec/dct_layer.py): how its quotients become range-
coded symbols, and back.

Coding order: channel by channel, each channel's 64 frequencies in zigzag order, and within
one frequency the blocks in raster order, split into groups by *activity*: the sum of the
magnitudes this block coded at the ACTIVITY_SPAN frequencies before (plus, for the second
and third channel, the first channel's magnitude at this frequency), doubled and added to
its four neighbour blocks' own, plus the network's own detail around the block
(base_detail), bucketed by powers of two. Each group first sends a flag (EmptyOdds) that
says whether it holds only zeros; a group flagged empty sends nothing more,
as most groups at the higher frequencies are. Otherwise the group's symbols share one
two-sided geometric distribution, of which the encoder picks one of NUM_LEVELS (the
cheapest for them) and sends the pick as its difference from LevelPredictor's guess. Every
distribution depends only on integers the decoder already has, and its tables are built with
exactly rounded IEEE operations only (see level_frequencies), so both sides hold the same
probabilities on every machine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import torch
from constriction import stream

from diveq_codec.codec.dct_transform import COEFFICIENTS, block_grid
from diveq_codec.codec.errors import CorruptBitstreamError

# Quotients in [-MAX_DIRECT, MAX_DIRECT] are coded directly; larger ones as an escape symbol
# (one per sign) and then |q| - MAX_DIRECT - 1 in ESCAPE_BITS uniform bits. An orthonormal
# 8×8 DCT of a colour-rotated 8-bit difference has coefficients below 8·255·√3 ≈ 3534, so a
# quotient by the smallest step (0.25) stays below 2^14.
MAX_DIRECT = 63
ESCAPE_BITS = 14
ESCAPE_POSITIVE = 2 * MAX_DIRECT + 1
ESCAPE_NEGATIVE = 2 * MAX_DIRECT + 2
ALPHABET = 2 * MAX_DIRECT + 3
# Levels: the mean magnitudes 2^-8 · (19/16)^j, j < 64 (0.004 to about 200), each the
# two-sided geometric distribution of that mean. 19/16 apart, a level picked for a group
# costs it at most about 0.4 % more bits than the exact mean would.
NUM_LEVELS = 64
FIRST_LEVEL_MEAN = 2.0**-8
LEVEL_RATIO = 19 / 16
FREQUENCY_SCALE = 1 << 24
ACTIVITY_SPAN = 3  # how many earlier frequencies of the same block count towards its activity
BUCKETS = 8  # activity buckets: 0, 1, 2–3, 4–7, … (the last one open-ended)
# A group's level is coded as its difference from LevelPredictor's guess, with the two-sided
# geometric table of this level (mean magnitude about 2.7): the level that coded those
# differences in the fewest bits on 12 training photos at steps 5–80.
DELTA_LEVEL = 38
# The empty-group flags are coded with adaptive odds per activity bucket: counts of empty
# and filled groups seen so far in the channel, from 1 each, halved when their total passes
# this (the odds follow the frequencies, which empty out as they rise, and the distinct
# count pairs, each a cached model, stay few).
FLAG_COUNT_LIMIT = 64
# The base's detail (base_detail) in each block's activity: the L1 norm of the codewords the
# network's stages after the first add at the block's latent (one latent per 8×8 block),
# summed over the 3×3 latents around it, in the index model's integer codeword units (2^-10),
# less DETAIL_OFFSET, in DETAIL_UNITs, from 0 up. Where the network had to add detail its
# pixels miss more, most of all at the coarse steps whose quotients are few. Chosen for the
# shipped model on 14 training photos held out from the index model, measured on 14 others
# (experiments/dct_layer/base_detail_probe.py): the layer's bytes fell 3.4, 2.3, 0.9, 0.4
# and 0.2 % at steps 100, 64, 32, 12.5 and 5, for 0.05 to 0.002 dB more.
DETAIL_OFFSET = 12_000
DETAIL_UNIT = 4_000
DETAIL_PIECE = 1 << 14  # latents per piece of base_detail: its (piece, D) sums stay a few MiB

_ESCAPE_MODEL = stream.model.Uniform(1 << ESCAPE_BITS)


def level_frequencies(level: int) -> np.ndarray:
    """Integer frequencies (ALPHABET,) of one level's two-sided geometric distribution.

    Only exactly rounded operations (products, quotients, square roots, floors), so every
    machine computes the same integers and so the same probabilities.
    """
    mean = FIRST_LEVEL_MEAN
    for _ in range(level):
        mean *= LEVEL_RATIO
    # The ratio θ of a two-sided geometric law with mean magnitude m: m = 2θ / (1 − θ²).
    theta = (math.sqrt(1.0 + mean * mean) - 1.0) / mean
    weights = [1.0]
    for _ in range(MAX_DIRECT + 1):
        weights.append(weights[-1] * theta)
    one_side = [math.floor(FREQUENCY_SCALE * w) + 1 for w in weights[1:MAX_DIRECT + 1]]
    escape = math.floor(FREQUENCY_SCALE * weights[MAX_DIRECT + 1] / (1.0 - theta)) + 1
    return np.array(one_side[::-1] + [FREQUENCY_SCALE + 1] + one_side + [escape, escape], dtype=np.int64)


@functools.cache
def level_tables() -> tuple[np.ndarray, list]:
    """Every level's float32 probabilities (NUM_LEVELS, ALPHABET) and constriction model."""
    frequencies = np.stack([level_frequencies(j) for j in range(NUM_LEVELS)])
    probabilities = (frequencies / frequencies.sum(axis=1, keepdims=True)).astype(np.float32)
    models = [stream.model.Categorical(p, perfect=False) for p in probabilities]
    return probabilities, models


@functools.cache
def level_code_lengths() -> np.ndarray:
    """Bits (NUM_LEVELS, ALPHABET) each level charges each symbol; only the encoder's choices use them."""
    probabilities, _ = level_tables()
    return -np.log2(probabilities.astype(np.float64))


@functools.cache
def _level_code_lengths_t() -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(level_code_lengths().T))


class LevelPredictor:
    """The guess at a group's level, which the level is coded against: the level the same
    bucket used last (at an earlier frequency of this channel), or, for a bucket not seen
    yet, the last level of the channel (0 at its start)."""

    def __init__(self) -> None:
        self._by_bucket: list[int | None] = [None] * BUCKETS
        self._last = 0

    def guess(self, bucket: int) -> int:
        known = self._by_bucket[bucket]
        return self._last if known is None else known

    def saw(self, bucket: int, level: int) -> None:
        self._by_bucket[bucket] = self._last = level


class EmptyOdds:
    """The model of each group's empty flag (1: the group holds only zeros): the counts of
    empty and filled groups of the same bucket so far in this channel, as in
    FLAG_COUNT_LIMIT's comment."""

    def __init__(self) -> None:
        self._counts = [[1, 1] for _ in range(BUCKETS)]

    def model(self, bucket: int) -> object:
        filled, empty = self._counts[bucket]
        return _flag_model(filled, empty)

    def saw(self, bucket: int, empty: bool) -> None:
        counts = self._counts[bucket]
        counts[empty] += 1
        if counts[0] + counts[1] > FLAG_COUNT_LIMIT:
            counts[:] = [(count + 1) // 2 for count in counts]


@functools.cache
def _flag_model(filled: int, empty: int) -> object:
    """The flag's distribution for these counts; a quotient of small integers, exactly rounded,
    so both sides hold the same probabilities."""
    return stream.model.Categorical(np.array([filled / (filled + empty), empty / (filled + empty)],
                                             dtype=np.float32), perfect=False)


# The bucket of each activity up to the first one in the open-ended last bucket: frexp's
# exponent of an integer a ≥ 1 is floor(log2 a) + 1, exactly; of 0 it is 0.
_BUCKET_OF = np.minimum(np.frexp(np.arange((1 << (BUCKETS - 2)) + 1))[1], BUCKETS - 1).astype(np.int16)


def _bucket_of(activity: np.ndarray) -> np.ndarray:
    """Activity (integers ≥ 0; overwritten) → bucket: 0, 1, 2–3, 4–7, …, the last open-ended."""
    # A table lookup: frexp on the whole map took a float64 copy of it, and four times as long.
    return _BUCKET_OF[np.minimum(activity, len(_BUCKET_OF) - 1, out=activity)]


def _with_neighbours(own: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """2 · own activity + the sum of the four neighbour blocks' (edge blocks repeat themselves
    for a missing neighbour); ``own`` is (blocks,) or (frequencies, blocks), blocks in raster order."""
    rows, cols = grid
    tiles = own.reshape(-1, rows, cols)
    total = 2 * tiles
    # Each neighbour shifted in, the edge row or column standing in for the one beyond it
    # (in place: a padded copy of the whole map took twice as long).
    total[:, 1:] += tiles[:, :-1]
    total[:, :1] += tiles[:, :1]
    total[:, :-1] += tiles[:, 1:]
    total[:, -1:] += tiles[:, -1:]
    total[:, :, 1:] += tiles[:, :, :-1]
    total[:, :, :1] += tiles[:, :, :1]
    total[:, :, :-1] += tiles[:, :, 1:]
    total[:, :, -1:] += tiles[:, :, -1:]
    return total.reshape(own.shape)


def base_detail(codebooks: np.ndarray, indices: np.ndarray, height: int, width: int, stride: int,
                offset: int = DETAIL_OFFSET, unit: int = DETAIL_UNIT) -> np.ndarray:
    """Each block's share of its activity from the base, (blocks,) int32, as DETAIL_OFFSET's
    comment says: ``codebooks`` (S, codes, D) the index model's integer codewords, ``indices``
    (stages, h·w) the file's, on the latent grid of a height × width image and a model of
    ``stride`` pixels (the block grid itself at the shipped model's stride of 8; otherwise a
    block takes the latent at its top-left pixel). Integers only, so every machine gets the
    same groups. ``offset`` and ``unit`` are for the probe that chose them."""
    rows, cols = -(-height // stride), -(-width // stride)
    blocks = block_grid(height, width)
    norms = np.zeros(rows * cols, dtype=np.int64)
    for start in range(0, rows * cols, DETAIL_PIECE):
        piece = slice(start, start + DETAIL_PIECE)
        added = np.zeros((indices[0, piece].size, codebooks.shape[2]), dtype=np.int64)
        for stage in range(1, indices.shape[0]):
            added += codebooks[stage].astype(np.int64)[indices[stage, piece]]
        norms[piece] = np.abs(added).sum(axis=1)
    edged = np.pad(norms.reshape(rows, cols), 1, mode="edge")
    window = sum(edged[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3))
    detail = np.maximum(window - offset, 0) // unit
    if blocks != (rows, cols):
        pixels = np.arange(max(blocks)) * 8 // stride
        detail = detail[pixels[:blocks[0], None], pixels[None, :blocks[1]]]
    return detail.astype(np.int32).ravel()


def _activity_buckets(by_frequency: np.ndarray, channel: int, frequency: int, grid: tuple[int, int],
                      detail: np.ndarray) -> np.ndarray:
    """Each block's bucket at one (channel, zigzag frequency), from coded quotients and the
    base's ``detail`` only; ``by_frequency`` is (C, 64, blocks), the layout the decoder fills
    (decode_channel)."""
    activity = np.abs(by_frequency[channel, max(0, frequency - ACTIVITY_SPAN):frequency]).sum(axis=0, dtype=np.int64)
    if channel:
        activity += np.abs(by_frequency[0, frequency])
    total = _with_neighbours(activity, grid)
    total += detail
    return _bucket_of(total)


# Frequencies per piece of _all_buckets: a block's bucket at one frequency depends on a few
# frequencies before it only, so pieces keep its int32 maps an eighth of a channel's size.
BUCKET_PIECE = 8


def _all_buckets(quotients: np.ndarray, channel: int, grid: tuple[int, int], detail: np.ndarray) -> np.ndarray:
    """_activity_buckets for every frequency of a channel at once, (64, blocks): the encoder
    knows every quotient in advance, the decoder learns them frequency by frequency."""
    buckets = np.empty(quotients.shape[1:], dtype=np.int16)
    for first in range(0, COEFFICIENTS, BUCKET_PIECE):
        low = max(0, first - ACTIVITY_SPAN)
        magnitudes = np.abs(quotients[channel, low:first + BUCKET_PIECE])
        activity = np.zeros((BUCKET_PIECE, magnitudes.shape[1]), dtype=magnitudes.dtype)
        for lag in range(1, ACTIVITY_SPAN + 1):  # shifted adds: no cumulative sum, no gathered copies
            # activity[f] += magnitudes at frequency first + f − lag, where that is ≥ low
            skip = max(0, low - (first - lag))
            activity[skip:] += magnitudes[first - lag - low + skip:first - lag - low + BUCKET_PIECE]
        if channel:
            activity += np.abs(quotients[0, first:first + BUCKET_PIECE])
        total = _with_neighbours(activity, grid)
        total += detail
        buckets[first:first + BUCKET_PIECE] = _bucket_of(total)
    return buckets


def _group_ids(quotients: np.ndarray, channel: int, grid: tuple[int, int], detail: np.ndarray) -> np.ndarray:
    """Each coefficient's group, frequency · BUCKETS + bucket, (64, blocks) int16: small
    integers, which numpy's stable argsort orders by radix sort, in linear time."""
    buckets = _all_buckets(quotients, channel, grid, detail)
    buckets += (np.arange(COEFFICIENTS, dtype=np.int16) * np.int16(BUCKETS))[:, None]
    return buckets


# Coefficients per piece of the passes over a whole channel (_cheapest_levels' histogram,
# _to_symbols, dct_layer.lower_where_cheaper): their temporaries stay a piece's size, not a
# channel's (a 48 MP channel has 48 million coefficients).
COEFFICIENT_PIECE = 1 << 20


def _cheapest_levels(groups: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Per group, the level whose distribution codes its symbols in the fewest bits."""
    group_count = COEFFICIENTS * BUCKETS
    histograms = np.zeros(group_count * ALPHABET, dtype=np.int64)
    groups, symbols = groups.ravel(), symbols.ravel()
    for start in range(0, groups.size, COEFFICIENT_PIECE):
        piece = slice(start, start + COEFFICIENT_PIECE)
        histograms += np.bincount(groups[piece].astype(np.int32) * ALPHABET + symbols[piece],
                                  minlength=group_count * ALPHABET)
    # torch's product: numpy's would wake OpenBLAS's threads (codec/dct_transform.py forward_blocks)
    bits = torch.from_numpy(histograms.reshape(group_count, ALPHABET).astype(np.float64)) @ _level_code_lengths_t()
    return bits.argmin(dim=1).numpy()


def _to_symbols(quotients: np.ndarray) -> np.ndarray:
    """Each quotient's symbol, uint8 (the alphabet has ALPHABET = 129), a piece at a time: a
    channel's symbols are a quarter of its int32 quotients' size, and no full-size temporaries."""
    symbols = np.empty(quotients.shape, dtype=np.uint8)
    for start in range(0, quotients.size, COEFFICIENT_PIECE):
        piece = quotients[start:start + COEFFICIENT_PIECE]
        direct = np.clip(piece, -MAX_DIRECT, MAX_DIRECT) + MAX_DIRECT
        direct[piece > MAX_DIRECT] = ESCAPE_POSITIVE
        direct[piece < -MAX_DIRECT] = ESCAPE_NEGATIVE
        symbols[start:start + COEFFICIENT_PIECE] = direct
    return symbols


# A channel's coefficients as the coder sees them: each one's group and symbol, each group's level.
ChannelTables = tuple[np.ndarray, np.ndarray, np.ndarray]


def channel_tables(quotients: np.ndarray, channel: int, grid: tuple[int, int], detail: np.ndarray) -> ChannelTables:
    """One channel's coefficients as the coder sees them, quotients[channel] (64, blocks)
    raveled (frequency, then block in raster order): each one's group and symbol, and each
    group's cheapest level."""
    groups = _group_ids(quotients, channel, grid, detail).ravel()
    symbols = _to_symbols(quotients[channel].ravel())
    return groups, symbols, _cheapest_levels(groups, symbols)


_NONE_ESCAPED = np.zeros(0, dtype=np.int32)


def _channel_groups(quotients: np.ndarray, channel: int,
                    tables: ChannelTables) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """One channel's coded groups in the decoder's order (frequency, then bucket, then block),
    from its channel_tables: each group's bucket, cheapest level, symbols and escaped
    excesses (int32)."""
    groups, all_symbols, levels = tables
    groups, all_symbols = groups.reshape(COEFFICIENTS, -1), all_symbols.reshape(COEFFICIENTS, -1)
    # A frequency at a time (its groups are consecutive): a stable sort of its row keeps the
    # blocks of a group in raster order, with temporaries a row's size, not the channel's.
    for frequency in range(COEFFICIENTS):
        row = groups[frequency] - np.int16(frequency * BUCKETS)
        order = np.argsort(row, kind="stable")
        symbols = all_symbols[frequency][order].astype(np.int32)  # constriction's symbol type
        ends = np.cumsum(np.bincount(row, minlength=BUCKETS))
        escaped = symbols >= ESCAPE_POSITIVE
        excess = None
        if escaped.any():  # most frequencies have none
            excess = np.abs(quotients[channel, frequency][order]) - MAX_DIRECT - 1
        start = 0
        for bucket, end in enumerate(ends.tolist()):
            if end > start:
                members = slice(start, end)
                yield bucket, int(levels[frequency * BUCKETS + bucket]), symbols[members], \
                    _NONE_ESCAPED if excess is None else excess[members][escaped[members]]
            start = end


def encode_channel(encoder: stream.queue.RangeEncoder, quotients: np.ndarray, channel: int,
                   tables: ChannelTables) -> None:
    """Append one channel's quotients (quotients[channel], (64, blocks)) to ``encoder``, given
    its channel_tables (which take the base's detail)."""
    _, models = level_tables()
    predictor, odds = LevelPredictor(), EmptyOdds()
    for bucket, level, symbols, escaped in _channel_groups(quotients, channel, tables):
        empty = not (symbols != MAX_DIRECT).any()  # the symbol of a zero quotient
        encoder.encode(np.array([empty], dtype=np.int32), odds.model(bucket))
        odds.saw(bucket, empty)
        if empty:
            continue
        encoder.encode(np.array([level - predictor.guess(bucket) + MAX_DIRECT], dtype=np.int32), models[DELTA_LEVEL])
        predictor.saw(bucket, level)
        encoder.encode(symbols, models[level])
        if escaped.size:
            encoder.encode(escaped, _ESCAPE_MODEL)


def decode_channel(decoder: stream.queue.RangeDecoder, by_frequency: np.ndarray, channel: int,
                   grid: tuple[int, int], detail: np.ndarray, echo: stream.queue.RangeEncoder) -> None:
    """Inverse of encode_channel: fill by_frequency[channel] (zeros on entry), frequency by
    frequency, from what the earlier frequencies and channels decoded to. The quotients are
    held frequency-major, (C, 64, blocks), as the encoder's: each step reads and writes whole
    rows. Every decoded symbol is coded again into ``echo`` with the same model, so the
    caller can check that the layer is exactly that stream."""
    _, models = level_tables()
    predictor, odds = LevelPredictor(), EmptyOdds()
    for frequency in range(COEFFICIENTS):
        buckets = _activity_buckets(by_frequency, channel, frequency, grid, detail)
        # Blocks by bucket, raster order within each (a stable sort of small integers).
        order = np.argsort(buckets, kind="stable")
        ends = np.cumsum(np.bincount(buckets, minlength=BUCKETS))
        column = by_frequency[channel, frequency]
        for bucket in range(BUCKETS):
            members = order[(ends[bucket - 1] if bucket else 0):ends[bucket]]
            count = members.size
            if not count:
                continue
            flag = decoder.decode(odds.model(bucket), 1)
            echo.encode(flag, odds.model(bucket))
            empty = bool(flag[0])
            odds.saw(bucket, empty)
            if empty:
                continue
            delta = decoder.decode(models[DELTA_LEVEL], 1)
            echo.encode(delta, models[DELTA_LEVEL])
            level = predictor.guess(bucket) + int(delta[0]) - MAX_DIRECT
            if not 0 <= level < NUM_LEVELS:
                raise CorruptBitstreamError(f"DCT layer names table {level}, not one of 0–{NUM_LEVELS - 1}")
            predictor.saw(bucket, level)
            coded = decoder.decode(models[level], count)
            echo.encode(coded, models[level])
            symbols = coded.astype(np.int64)
            values = symbols - MAX_DIRECT
            escaped = symbols >= ESCAPE_POSITIVE
            if escaped.any():
                raw = decoder.decode(_ESCAPE_MODEL, int(escaped.sum()))
                echo.encode(raw, _ESCAPE_MODEL)
                excess = raw.astype(np.int64) + MAX_DIRECT + 1
                values[escaped] = np.where(symbols[escaped] == ESCAPE_POSITIVE, excess, -excess)
            column[members] = values
