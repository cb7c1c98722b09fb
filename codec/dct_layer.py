"""The DCT layer: what the network's decoded pixels miss, coded as quantised 8×8 DCT blocks.

However many residual stages it spends, the network's reconstruction stops near 32.5 dB on
Kodak (scripts/transform_ceiling.py), where JPEG goes on to 40 dB. The rate points above
that ceiling add this layer to a network rate point: the difference between the source and
the network's decoded 8-bit planes is rotated to decorrelate its colours, cut into 8×8
blocks, transformed by the orthonormal DCT, quantised with one uniform step for every
coefficient (a flat step minimises squared error for the bits: PSNR is what it is judged
on) and range-coded. The decoder adds what it decodes to its own base planes and rounds.

Layout of the layer (the container's residual section, codec/bitstream.py):

     0 transform  u8   TRANSFORM_DCT8, _NEIGHBOURS or _EMPTY_FLAGS (see _GROUPINGS)
     1 step       u16  the quantiser's step, in 1/16 of an 8-bit level (≥ MIN_STEP_SIXTEENTHS)
     3 words           the range-coded symbols, little-endian u32 words

Coding order: channel by channel, each channel's 64 frequencies in zigzag order, and within
one frequency the blocks in raster order, split into groups by *activity*: the sum of the
magnitudes this block coded at the three frequencies before (plus, for the second and third
channel, the first channel's magnitude at this frequency), under transform 2 doubled and
added to its four neighbour blocks' own, bucketed by powers of two. Each group's symbols
share one two-sided geometric distribution, of which the encoder picks one of NUM_LEVELS
(by mean magnitude) and sends the pick in front of the group: as 6 plain bits under
transform 1, as its difference from _LevelPredictor's guess under transforms 2 and 3.
Transform 3 first sends a flag for the group, with _EmptyOdds, and a group flagged empty
(every quotient zero) sends nothing more: most groups at the higher frequencies. Everything a
distribution depends on is an integer the decoder already has, and its tables are built
with exactly rounded IEEE operations only (see _level_frequencies), so both sides hold the
same probabilities on every machine. The pixels a file decodes to agree across machines to
float noise, as the network's own output does.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from constriction import stream

from diveq_codec.codec.index_coder import coder_errors
from diveq_codec.codec.errors import CorruptBitstreamError

# Transform ids: how the quotients are grouped and how each group's table is named (both
# 8×8 DCT with one flat step). 1: groups by the block's own activity (6 buckets), each
# table index sent as 6 uniform bits. 2 (what the encoder writes): groups by the block's own
# activity and its four neighbours' (8 buckets), each table index sent as its difference
# from the index the same bucket used at the frequency before. 3: as 2, with a flag in front
# of every group that says whether it holds nothing but zeros (then nothing else is sent).
TRANSFORM_DCT8 = 1
TRANSFORM_DCT8_NEIGHBOURS = 2
TRANSFORM_DCT8_EMPTY_FLAGS = 3
WRITTEN_TRANSFORM = TRANSFORM_DCT8_EMPTY_FLAGS
BLOCK = 8
MIN_STEP_SIXTEENTHS = 4  # a step of 0.25: every coefficient's quotient then fits the escape code
# Quotients in [-MAX_DIRECT, MAX_DIRECT] are coded directly; larger ones as an escape symbol
# (one per sign) and then |q| - MAX_DIRECT - 1 in ESCAPE_BITS uniform bits. An orthonormal
# 8×8 DCT of a colour-rotated 8-bit difference has coefficients below 8·255·√3 ≈ 3534, so a
# quotient by a step of 0.25 stays below 2^14.
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
# Transform 2 codes a group's table index as its difference from _LevelPredictor's guess,
# with the two-sided geometric table of this level (mean magnitude about 2.7): the level
# that coded those differences in the fewest bits on 12 training photos at steps 5–80.
DELTA_LEVEL = 38
# Transform 3's empty-group flags are coded with adaptive odds per activity bucket: counts
# of empty and filled groups seen so far in the channel, from 1 each, halved when their total
# passes this (the odds follow the frequencies, which empty out as they rise, and the
# distinct count pairs, each a cached model, stay few).
FLAG_COUNT_LIMIT = 64
# The encoder's quantiser, its own choice (the decoder reconstructs q · step whatever it was):
# a quotient starts as sign(c) · floor(|c| / step + ROUNDING), a dead zone a little wider
# than nearest rounding's, and then _lower_where_cheaper moves it one towards zero where the
# bits its group's table saves are worth more than the squared error it adds, at RD_WEIGHT
# times a uniform quantiser's slope. Small coefficients are the many, and each costs more bits
# per unit of squared error it saves than a large one. Chosen on 20 training photos with
# scripts/residual_layer_probe.py (--rounding 0.32,0.4,0.45,0.5 --rd-weight 0,1 over 20
# steps from 100 to 4.5): against a plain dead zone of 0.32 (itself +0.5 to +0.9 dB over
# nearest rounding from 0.45 to 1.5 bpp), 0.45 with the rate–distortion pass gained +0.01 to
# +0.06 dB at steps 100–40 and up to +0.49 dB at the finest, and was within 0.02 dB of the
# best setting tried at every step.
ROUNDING = 0.45
RD_WEIGHT = 1.0
STRIP_BLOCK_ROWS = 64  # block rows per strip of the transforms (512 pixel rows)


@dataclass(frozen=True)
class _Grouping:
    """How one transform id groups a frequency's blocks and names each group's table."""

    buckets: int  # activity buckets: 0, 1, 2–3, 4–7, … (the last one open-ended)
    neighbours: bool  # activity is 2 · own + the four neighbour blocks' own activity
    delta_levels: bool  # table index coded against the bucket's previous one (else uniform)
    empty_flags: bool = False  # each group first says whether it is all zeros (_EmptyOdds)


_GROUPINGS = {
    TRANSFORM_DCT8: _Grouping(buckets=6, neighbours=False, delta_levels=False),
    TRANSFORM_DCT8_NEIGHBOURS: _Grouping(buckets=8, neighbours=True, delta_levels=True),
    TRANSFORM_DCT8_EMPTY_FLAGS: _Grouping(buckets=8, neighbours=True, delta_levels=True, empty_flags=True),
}

_LAYER_HEADER = struct.Struct("<BH")
_LEVEL_MODEL = stream.model.Uniform(NUM_LEVELS)
_ESCAPE_MODEL = stream.model.Uniform(1 << ESCAPE_BITS)


def _orthonormal_dct(n: int) -> np.ndarray:
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis


_DCT = _orthonormal_dct(BLOCK)
# An orthonormal colour rotation (luma-like sum, two differences): it concentrates the
# residual's energy in the first channel without changing squared errors.
_ROTATION = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
_ROTATION /= np.sqrt((_ROTATION**2).sum(axis=1, keepdims=True))
# Zigzag order of the 64 frequencies (low to high), as indices into a row-major 8×8 block.
_ZIGZAG = np.array([u * BLOCK + v for u, v in sorted(
    ((u, v) for u in range(BLOCK) for v in range(BLOCK)),
    key=lambda uv: (uv[0] + uv[1], uv[1] if (uv[0] + uv[1]) % 2 else uv[0]))])


def _level_frequencies(level: int) -> np.ndarray:
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
def _level_tables() -> tuple[np.ndarray, list]:
    """Every level's float32 probabilities (NUM_LEVELS, ALPHABET) and constriction model."""
    frequencies = np.stack([_level_frequencies(j) for j in range(NUM_LEVELS)])
    probabilities = (frequencies / frequencies.sum(axis=1, keepdims=True)).astype(np.float32)
    models = [stream.model.Categorical(p, perfect=False) for p in probabilities]
    return probabilities, models


@functools.cache
def _level_code_lengths() -> np.ndarray:
    """Bits (NUM_LEVELS, ALPHABET) each level charges each symbol; only the encoder's choice uses them."""
    probabilities, _ = _level_tables()
    return -np.log2(probabilities.astype(np.float64))


class _LevelPredictor:
    """Transform 2's guess at a group's table index, which the index is coded against: the
    index the same bucket used last (at an earlier frequency of this channel), or, for a
    bucket not seen yet, the last index of the channel (0 at its start)."""

    def __init__(self, buckets: int) -> None:
        self._by_bucket: list[int | None] = [None] * buckets
        self._last = 0

    def guess(self, bucket: int) -> int:
        known = self._by_bucket[bucket]
        return self._last if known is None else known

    def saw(self, bucket: int, level: int) -> None:
        self._by_bucket[bucket] = self._last = level


class _EmptyOdds:
    """Transform 3's model of each group's empty flag (1: the group holds only zeros): the
    counts of empty and filled groups of the same bucket so far in this channel, as in
    FLAG_COUNT_LIMIT's comment."""

    def __init__(self, buckets: int) -> None:
        self._counts = [[1, 1] for _ in range(buckets)]

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


def _bucket_of(activity: np.ndarray, buckets: int) -> np.ndarray:
    """Activity (integers ≥ 0) → bucket: 0, 1, 2–3, 4–7, …, the last bucket open-ended."""
    # frexp's exponent of an integer a ≥ 1 is floor(log2 a) + 1, exactly; of 0 it is 0.
    return np.minimum(np.frexp(activity)[1], buckets - 1).astype(np.int16)


def _with_neighbours(own: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """2 · own activity + the sum of the four neighbour blocks' (edge blocks repeat themselves
    for a missing neighbour); ``own`` is (blocks,) or (blocks, frequencies) in raster order."""
    rows, cols = grid
    tiles = own.reshape(rows, cols, -1)
    total = 2 * tiles
    # Each neighbour shifted in, the edge row or column standing in for the one beyond it
    # (in place: a padded copy of the whole map took twice as long).
    total[1:] += tiles[:-1]
    total[:1] += tiles[:1]
    total[:-1] += tiles[1:]
    total[-1:] += tiles[-1:]
    total[:, 1:] += tiles[:, :-1]
    total[:, :1] += tiles[:, :1]
    total[:, :-1] += tiles[:, 1:]
    total[:, -1:] += tiles[:, -1:]
    return total.reshape(own.shape)


def _activity_buckets(quotients: np.ndarray, channel: int, frequency: int, grid: tuple[int, int],
                      grouping: _Grouping) -> np.ndarray:
    """Each block's group at one (channel, zigzag frequency), from coded quotients only."""
    activity = np.abs(quotients[channel, :, max(0, frequency - ACTIVITY_SPAN):frequency]).sum(axis=1, dtype=np.int64)
    if channel:
        activity += np.abs(quotients[0, :, frequency])
    if grouping.neighbours:
        activity = _with_neighbours(activity, grid)
    return _bucket_of(activity, grouping.buckets)


def _all_buckets(quotients: np.ndarray, channel: int, grid: tuple[int, int], grouping: _Grouping) -> np.ndarray:
    """_activity_buckets for every frequency of a channel at once, (blocks, 64): the encoder
    knows every quotient in advance, the decoder learns them frequency by frequency."""
    magnitudes = np.abs(quotients[channel])
    before = np.zeros((magnitudes.shape[0], BLOCK * BLOCK + 1), dtype=np.int32)
    np.cumsum(magnitudes, axis=1, out=before[:, 1:])  # before[:, f]: the sum over frequencies < f
    frequencies = np.arange(BLOCK * BLOCK)
    activity = before[:, frequencies] - before[:, np.maximum(frequencies - ACTIVITY_SPAN, 0)]
    if channel:
        activity += np.abs(quotients[0])
    if grouping.neighbours:
        activity = _with_neighbours(activity, grid)
    return _bucket_of(activity, grouping.buckets)


def _group_ids(quotients: np.ndarray, channel: int, grid: tuple[int, int], grouping: _Grouping) -> np.ndarray:
    """Each coefficient's group, frequency · buckets + bucket, (blocks, 64) int16: small
    integers, which numpy's stable argsort orders by radix sort, in linear time."""
    frequencies = np.arange(BLOCK * BLOCK, dtype=np.int16) * np.int16(grouping.buckets)
    return frequencies + _all_buckets(quotients, channel, grid, grouping)


def _cheapest_levels(groups: np.ndarray, symbols: np.ndarray, grouping: _Grouping) -> np.ndarray:
    """Per group, the level whose distribution codes its symbols in the fewest bits."""
    group_count = BLOCK * BLOCK * grouping.buckets
    histograms = np.bincount((groups.astype(np.int32) * ALPHABET + symbols).ravel(), minlength=group_count * ALPHABET)
    return np.argmin(histograms.reshape(group_count, ALPHABET) @ _level_code_lengths().T, axis=1)


def _channel_tables(quotients: np.ndarray, channel: int, grid: tuple[int, int],
                    grouping: _Grouping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One channel's coefficients as the coder sees them, in raster order of blocks then
    frequency: each one's group and symbol, and each group's cheapest level."""
    groups = _group_ids(quotients, channel, grid, grouping).ravel()
    symbols = _to_symbols(quotients[channel].ravel())
    return groups, symbols, _cheapest_levels(groups, symbols, grouping)


def _channel_groups(quotients: np.ndarray, channel: int, grid: tuple[int, int],
                    grouping: _Grouping) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """One channel's coded groups in the decoder's order (frequency, then bucket, then block):
    each group's bucket, cheapest level, symbols and escaped excesses (int32)."""
    groups, all_symbols, levels = _channel_tables(quotients, channel, grid, grouping)
    # Stable, so within a group the blocks keep their raster order (the coefficients are
    # block-major here; the group ids put frequency first).
    order = np.argsort(groups, kind="stable")
    values = quotients[channel].ravel()[order]
    symbols = all_symbols[order]
    ends = np.cumsum(np.bincount(groups, minlength=len(levels)))
    escaped = np.abs(values) > MAX_DIRECT
    excess = np.abs(values) - MAX_DIRECT - 1
    start = 0
    for group, end in enumerate(ends):
        if end > start:
            members = slice(start, end)
            yield group % grouping.buckets, int(levels[group]), symbols[members], excess[members][escaped[members]]
        start = end


def _to_symbols(quotients: np.ndarray) -> np.ndarray:
    symbols = np.clip(quotients, -MAX_DIRECT, MAX_DIRECT) + MAX_DIRECT
    symbols[quotients > MAX_DIRECT] = ESCAPE_POSITIVE
    symbols[quotients < -MAX_DIRECT] = ESCAPE_NEGATIVE
    return symbols


def _channels_to_planes(channels: np.ndarray) -> np.ndarray:
    if channels.shape[0] == 1:
        return channels[0]
    return np.einsum("ji,jhw->hwi", _ROTATION, channels)


def _strips(height: int, width: int) -> Iterator[tuple[slice, int, int]]:
    """The strips of STRIP_BLOCK_ROWS block rows the transforms work in, so that their float
    temporaries stay a strip's size on a large image: each strip's blocks (a slice of the
    raster order) and its pixel rows (top, bottom)."""
    rows = STRIP_BLOCK_ROWS * BLOCK
    per_strip = STRIP_BLOCK_ROWS * _block_grid(height, width)[1]
    for index, top in enumerate(range(0, height, rows)):
        yield slice(index * per_strip, (index + 1) * per_strip), top, min(top + rows, height)


@functools.cache
def _forward_matrix(channels: int) -> np.ndarray:
    """The colour rotation, the 2-D DCT and the zigzag order as one (C·64, C·64) matrix, rows
    (channel, zigzag frequency), columns (plane, pixel of the block in raster order): applied
    to a strip's blocks as one matrix product, it is 2–3 times faster than the three steps
    apart (which the decoder's _unblocks still takes, in the other direction)."""
    rotation = _ROTATION if channels == 3 else np.ones((1, 1))
    return np.kron(rotation, np.kron(_DCT, _DCT)[_ZIGZAG])


def _blocks(planes: np.ndarray) -> np.ndarray:
    """(h, W) or (h, W, 3) float planes → (C, blocks, 64) coefficients of the colour-rotated
    planes' DCT in zigzag order; edges padded by repetition."""
    pixels = planes.reshape(*planes.shape[:2], -1)
    height, width, count = pixels.shape
    padded = np.pad(pixels, ((0, -height % BLOCK), (0, -width % BLOCK), (0, 0)), mode="edge")
    rows, cols = padded.shape[0] // BLOCK, padded.shape[1] // BLOCK
    tiles = padded.reshape(rows, BLOCK, cols, BLOCK, count).transpose(0, 2, 4, 1, 3)
    coefficients = tiles.reshape(rows * cols, count * BLOCK * BLOCK) @ _forward_matrix(count).T
    return coefficients.reshape(rows * cols, count, BLOCK * BLOCK).transpose(1, 0, 2)


def _unblocks(coefficients: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of _blocks for a strip ``height`` pixels high: (C, blocks, 64) → (C, h, W)."""
    count = coefficients.shape[0]
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    natural = np.empty_like(coefficients)
    natural[:, :, _ZIGZAG] = coefficients
    tiles = _DCT.T @ natural.reshape(count, rows, cols, BLOCK, BLOCK) @ _DCT
    return tiles.transpose(0, 1, 3, 2, 4).reshape(count, rows * BLOCK, cols * BLOCK)[:, :height, :width]


def _quotients(source: np.ndarray, base: np.ndarray, step: float, rounding: float) -> tuple[np.ndarray, np.ndarray]:
    """The quantised DCT of the colour-rotated difference, (C, blocks, 64) int32, strip by strip:
    sign(c) · floor(|c| / step + rounding); and beside it what moving each quotient one step
    towards zero would add to its squared error, in step², (|c| − (m − 1))² − (|c| − m)² =
    2 (|c| − m) + 1 for c / step's magnitude |c| and the quotient's m (float32: it is only ever
    compared with a rate, by _lower_where_cheaper)."""
    rows, cols = _block_grid(*source.shape[:2])
    channels = 1 if source.ndim == 2 else 3
    quotients = np.empty((channels, rows * cols, BLOCK * BLOCK), dtype=np.int32)
    lowering_costs = np.empty(quotients.shape, dtype=np.float32)
    for blocks, top, bottom in _strips(*source.shape[:2]):
        scaled = _blocks(source[top:bottom].astype(np.float64) - base[top:bottom]) / step
        magnitude = np.abs(scaled)
        whole = np.floor(magnitude + rounding)
        quotients[:, blocks] = np.copysign(whole, scaled)
        lowering_costs[:, blocks] = 2 * (magnitude - whole) + 1
    return quotients, lowering_costs


def _lower_where_cheaper(quotients: np.ndarray, lowering_costs: np.ndarray, grid: tuple[int, int],
                         grouping: _Grouping, weight: float) -> None:
    """Rate–distortion optimised quantisation, one greedy pass, in place: a nonzero quotient
    moves one step towards zero where the squared error that adds (``lowering_costs``, in
    step²) is less than weight · (2 ln 2 / 12) · step² per bit its group's table saves (the
    slope of a uniform quantiser's distortion against its rate). Each group's table is the
    one the quotients as they stand would get, in every channel before any moves (the later
    channels' groups depend on the first's quotients); the decoder only ever sees the result."""
    lengths = _level_code_lengths()
    slope = weight * 2 * math.log(2) / 12  # in step² per bit
    lowered = []
    for channel in range(quotients.shape[0]):
        values = quotients[channel].ravel()
        groups, _, levels = _channel_tables(quotients, channel, grid, grouping)
        # Only nonzero quotients within the direct alphabet can move; at most steps they are few.
        candidates = np.flatnonzero((values != 0) & (np.abs(values) <= MAX_DIRECT))
        magnitude = np.abs(values[candidates])
        level = levels[groups[candidates]]
        saved = lengths[level, MAX_DIRECT + magnitude] - lengths[level, MAX_DIRECT + magnitude - 1]
        lowered.append(candidates[lowering_costs[channel].ravel()[candidates] < slope * saved])
    for channel, positions in enumerate(lowered):
        values = quotients[channel].reshape(-1)
        values[positions] -= np.sign(values[positions])


def _reconstruct(quotients: np.ndarray, base: np.ndarray, step: float) -> np.ndarray:
    """``base`` plus the dequantised, inverse-transformed quotients, rounded to uint8, strip by strip."""
    height, width = base.shape[:2]
    out = np.empty_like(base)
    for blocks, top, bottom in _strips(height, width):
        difference = _channels_to_planes(_unblocks(quotients[:, blocks] * step, bottom - top, width))
        out[top:bottom] = np.clip(np.rint(base[top:bottom] + difference), 0, 255)
    return out


def step_is_valid(step: float) -> bool:
    """Whether a step can be written: a whole number of sixteenths, from MIN_STEP_SIXTEENTHS to u16."""
    sixteenths = step * 16
    return math.isfinite(sixteenths) and sixteenths == int(sixteenths) and MIN_STEP_SIXTEENTHS <= sixteenths < 1 << 16


def _block_grid(height: int, width: int) -> tuple[int, int]:
    return -(-height // BLOCK), -(-width // BLOCK)


def encode(source: np.ndarray, base: np.ndarray, step: float, rounding: float = ROUNDING,
           transform: int = WRITTEN_TRANSFORM, rd_weight: float = RD_WEIGHT) -> bytes:
    """The DCT layer lifting ``base`` towards ``source`` (both uint8, (H, W) or (H, W, 3)).

    ``rounding`` and ``rd_weight`` are the encoder's own choices (the decoder reconstructs
    q · step whatever they were): rounding 0.5 rounds to the nearest multiple, less widens the
    dead zone around zero; a positive rd_weight then moves quotients towards zero where the
    bits saved are worth the error (_lower_where_cheaper), 0 leaves them."""
    if source.shape != base.shape or source.dtype != np.uint8 or base.dtype != np.uint8:
        raise ValueError(f"source {source.dtype} {source.shape} and base {base.dtype} {base.shape} differ")
    if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] != 3):
        raise ValueError(f"planes must be (H, W) or (H, W, 3), got {source.shape}")
    if not step_is_valid(step):
        raise ValueError(f"residual step {step} is not a whole number of sixteenths from "
                         f"{MIN_STEP_SIXTEENTHS / 16} up")
    if not 0.0 <= rounding <= 0.5:
        raise ValueError(f"rounding {rounding} is outside [0, 0.5]")
    if transform not in _GROUPINGS:
        raise ValueError(f"transform {transform} is not one of {sorted(_GROUPINGS)}")
    if not 0.0 <= rd_weight < math.inf:
        raise ValueError(f"rd_weight {rd_weight} is not a finite number ≥ 0")
    quotients, lowering_costs = _quotients(source, base, step, rounding)
    grid = _block_grid(source.shape[0], source.shape[1])
    grouping = _GROUPINGS[transform]
    if rd_weight:
        _lower_where_cheaper(quotients, lowering_costs, grid, grouping, rd_weight)
    del lowering_costs  # 4 bytes a coefficient, not needed by the coding that follows
    _, models = _level_tables()
    encoder = stream.queue.RangeEncoder()
    for channel in range(quotients.shape[0]):
        predictor = _LevelPredictor(grouping.buckets)
        odds = _EmptyOdds(grouping.buckets)
        for bucket, level, symbols, escaped in _channel_groups(quotients, channel, grid, grouping):
            if grouping.empty_flags:
                empty = not np.any(symbols != MAX_DIRECT)  # the symbol of a zero quotient
                encoder.encode(np.array([empty], dtype=np.int32), odds.model(bucket))
                odds.saw(bucket, empty)
                if empty:
                    continue
            if grouping.delta_levels:
                encoder.encode(np.array([level - predictor.guess(bucket) + MAX_DIRECT], dtype=np.int32),
                               models[DELTA_LEVEL])
                predictor.saw(bucket, level)
            else:
                encoder.encode(np.array([level], dtype=np.int32), _LEVEL_MODEL)
            encoder.encode(symbols, models[level])
            if escaped.size:
                encoder.encode(escaped, _ESCAPE_MODEL)
    words = encoder.get_compressed().astype("<u4").tobytes()
    return _LAYER_HEADER.pack(transform, int(step * 16)) + words


def _minimum_bits(symbol_count: int) -> float:
    """A lower bound on the bits ``symbol_count`` symbols take: each costs at least its level's
    most probable symbol (less a unit of constriction's 24-bit precision)."""
    probabilities, _ = _level_tables()
    most_probable = float(probabilities.max()) + 4.0 / 2**24
    return symbol_count * -math.log2(min(most_probable, 1.0))


def decode(layer: bytes, base: np.ndarray) -> np.ndarray:
    """``base`` (uint8 planes) with the DCT layer added: the planes the file decodes to."""
    if len(layer) <= _LAYER_HEADER.size or (len(layer) - _LAYER_HEADER.size) % 4:
        raise CorruptBitstreamError(f"DCT layer of {len(layer)} bytes is not a layer header and whole words")
    transform, sixteenths = _LAYER_HEADER.unpack_from(layer)
    if transform not in _GROUPINGS:
        raise CorruptBitstreamError(f"DCT layer declares transform {transform}; this build knows "
                                    f"{', '.join(map(str, sorted(_GROUPINGS)))}")
    grouping = _GROUPINGS[transform]
    if sixteenths < MIN_STEP_SIXTEENTHS:
        raise CorruptBitstreamError(f"DCT layer declares a step of {sixteenths}/16, below the "
                                    f"smallest, {MIN_STEP_SIXTEENTHS}/16")
    height, width = base.shape[:2]
    channels = 1 if base.ndim == 2 else 3
    grid = _block_grid(height, width)
    blocks = grid[0] * grid[1]
    words = np.frombuffer(layer, dtype="<u4", offset=_LAYER_HEADER.size).astype(np.uint32)
    # A few bytes declaring a huge image cost neither time nor memory: refuse a layer too
    # short for the symbols it must hold before decoding any. Under empty flags a layer of
    # empty groups is rightly a few bytes for any size; there the base's payload, decoded
    # first and bounded the same way (codec/entropy.py), is what ties the size to the file.
    if not grouping.empty_flags and len(words) * 32 * 1.01 + 64 < _minimum_bits(channels * blocks * BLOCK * BLOCK):
        raise CorruptBitstreamError(f"DCT layer of {len(layer)} bytes is too short for a "
                                    f"{width}×{height} image")
    _, models = _level_tables()
    quotients = np.zeros((channels, blocks, BLOCK * BLOCK), dtype=np.int32)
    decoder = stream.queue.RangeDecoder(words)
    with coder_errors("DCT layer"):
        for channel in range(channels):
            predictor = _LevelPredictor(grouping.buckets)
            odds = _EmptyOdds(grouping.buckets)
            for frequency in range(BLOCK * BLOCK):
                buckets = _activity_buckets(quotients, channel, frequency, grid, grouping)
                column = np.zeros(blocks, dtype=np.int64)
                for bucket in range(grouping.buckets):
                    members = buckets == bucket
                    count = int(members.sum())
                    if not count:
                        continue
                    if grouping.empty_flags:
                        empty = bool(decoder.decode(odds.model(bucket), 1)[0])
                        odds.saw(bucket, empty)
                        if empty:
                            continue
                    if grouping.delta_levels:
                        level = predictor.guess(bucket) + int(decoder.decode(models[DELTA_LEVEL], 1)[0]) - MAX_DIRECT
                        if not 0 <= level < NUM_LEVELS:
                            raise CorruptBitstreamError(f"DCT layer names table {level}, not one of "
                                                        f"0–{NUM_LEVELS - 1}")
                        predictor.saw(bucket, level)
                    else:
                        level = int(decoder.decode(_LEVEL_MODEL, 1)[0])
                    symbols = decoder.decode(models[level], count).astype(np.int64)
                    values = symbols - MAX_DIRECT
                    escaped = symbols >= ESCAPE_POSITIVE
                    if escaped.any():
                        excess = decoder.decode(_ESCAPE_MODEL, int(escaped.sum())).astype(np.int64) + MAX_DIRECT + 1
                        values[escaped] = np.where(symbols[escaped] == ESCAPE_POSITIVE, excess, -excess)
                    column[members] = values
                quotients[channel, :, frequency] = column
    if not decoder.maybe_exhausted():
        raise CorruptBitstreamError("DCT layer has data left after its last symbol")
    return _reconstruct(quotients, base, sixteenths / 16)
