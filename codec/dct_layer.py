"""The DCT layer: what the network's decoded pixels miss, coded as quantised 8×8 DCT blocks.

However many residual stages it spends, the network's reconstruction stops near 32.5 dB on
Kodak (experiments/transform_ceiling/), where JPEG goes on to 40 dB. The rate points above
that ceiling add this layer to a network rate point: the difference between the source and
the network's decoded 8-bit planes is rotated to decorrelate its colours, cut into 8×8
blocks, transformed by the orthonormal DCT (codec/dct_transform.py), quantised with one
uniform step for every coefficient (a flat step minimises squared error for the bits: PSNR
is what it is judged on) and range-coded (codec/dct_layer_coding.py), with contexts that
include the detail the network's codewords put around each block (base_detail, integers
from the file's indices). The decoder adds what it decodes to its own base planes and rounds.

Layout of the layer (the container's last section, codec/container.py; docs/format.md):

     0 transform  u8   fixed: WRITTEN_TRANSFORM
     1 step       u16  the quantiser's step, in 1/16 of an 8-bit level (≥ MIN_LAYER_STEP_SIXTEENTHS)
     3 words           the range-coded symbols, little-endian u32 words
"""

from __future__ import annotations

import math
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from constriction import stream

from diveq_codec.codec.container import development_build_error
from diveq_codec.codec.dct_layer_coding import (
    COEFFICIENT_PIECE,
    MAX_DIRECT,
    channel_tables,
    decode_channel,
    encode_channel,
    level_code_lengths,
)
from diveq_codec.codec.dct_transform import COEFFICIENTS, block_grid, quantise, reconstruct
from diveq_codec.codec.errors import CorruptBitstreamError
from diveq_codec.codec.freed_memory import return_freed_memory
from diveq_codec.codec.index_coder import coder_errors
from diveq_codec.codec.limits import MIN_LAYER_STEP_SIXTEENTHS, layer_step_is_valid

# The layer's first byte has one allowed value. Development builds before the first release
# wrote 1 to 3 (other groupings of the quotients; 3 without the base's detail): refused as
# such (exit 3).
WRITTEN_TRANSFORM = 4
DEVELOPMENT_TRANSFORMS = (1, 2, 3)
# The encoder's quantiser, its own choice (the decoder reconstructs q · step whatever it was):
# a quotient starts as sign(c) · floor(|c| / step + ROUNDING), a dead zone a little wider
# than nearest rounding's, and then lower_where_cheaper moves it one towards zero where the
# bits its group's table saves are worth more than the squared error it adds, at RD_WEIGHT
# times a uniform quantiser's slope. Small coefficients are the many, and each costs more bits
# per unit of squared error it saves than a large one. Chosen on 20 training photos with
# experiments/dct_layer/dct_layer_probe.py (--rounding 0.32,0.4,0.45,0.5 --rd-weight 0,1 over 20
# steps from 100 to 4.5): against a plain dead zone of 0.32 (itself +0.5 to +0.9 dB over
# nearest rounding from 0.45 to 1.5 bpp), 0.45 with the rate–distortion pass gained +0.01 to
# +0.06 dB at steps 100–40 and up to +0.49 dB at the finest, and was within 0.02 dB of the
# best setting tried at every step.
ROUNDING = 0.45
RD_WEIGHT = 1.0

_LAYER_HEADER = struct.Struct("<BH")


def lower_where_cheaper(quotients: np.ndarray, lowering_costs: np.ndarray, grid: tuple[int, int],
                        detail: np.ndarray, weight: float) -> None:
    """Rate–distortion optimised quantisation, one greedy pass, in place: a nonzero quotient
    moves one step towards zero where the squared error that adds (``lowering_costs``, in
    step²) is less than weight · (2 ln 2 / 12) · step² per bit its group's table saves (the
    slope of a uniform quantiser's distortion against its rate). Each group's table is the
    one the quotients as they stand would get, in every channel before any moves (the later
    channels' groups depend on the first's quotients); the decoder only ever sees the result."""
    lengths = level_code_lengths()
    slope = weight * 2 * math.log(2) / 12  # in step² per bit

    def lowered(channel: int) -> np.ndarray:
        values, costs = quotients[channel].ravel(), lowering_costs[channel].ravel()
        groups, _, levels = channel_tables(quotients, channel, grid, detail)
        moves = []
        for start in range(0, values.size, COEFFICIENT_PIECE):
            piece = values[start:start + COEFFICIENT_PIECE]
            # Only nonzero quotients within the direct alphabet can move; at most steps they are few.
            candidates = start + np.flatnonzero((piece != 0) & (piece >= -MAX_DIRECT) & (piece <= MAX_DIRECT))
            magnitude = np.abs(values[candidates])
            level = levels[groups[candidates]]
            saved = lengths[level, MAX_DIRECT + magnitude] - lengths[level, MAX_DIRECT + magnitude - 1]
            moves.append(candidates[costs[candidates] < slope * saved])
        return np.concatenate(moves)

    # The channels' tables are independent (each reads the quotients before any move): two at
    # a time, on both cores (numpy's array steps let go of the interpreter's lock).
    with ThreadPoolExecutor(max_workers=2) as pool:
        moves = list(pool.map(lowered, range(quotients.shape[0])))
    for channel, positions in enumerate(moves):
        values = quotients[channel].reshape(-1)
        values[positions] -= np.sign(values[positions])


def encode_with_planes(source: np.ndarray, base: np.ndarray, step: float, detail: np.ndarray,
                       rounding: float = ROUNDING, rd_weight: float = RD_WEIGHT,
                       planes: bool = True) -> tuple[bytes, np.ndarray | None]:
    """The DCT layer lifting ``base`` towards ``source`` (both uint8, (H, W) or (H, W, 3)), and
    (with ``planes``) the planes it decodes to, reconstructed from the quotients exactly as
    decode() does, so the encoder reports what the file gives without decoding it. ``detail``
    is the base's detail per 8×8 block (base_detail of the base's indices; zeros for a base
    without any), which the decoder must be given too.

    ``rounding`` and ``rd_weight`` are the encoder's own choices (the decoder reconstructs
    q · step whatever they were): rounding 0.5 rounds to the nearest multiple, less widens the
    dead zone around zero; a positive rd_weight then moves quotients towards zero where the
    bits saved are worth the error (lower_where_cheaper), 0 leaves them."""
    if source.shape != base.shape or source.dtype != np.uint8 or base.dtype != np.uint8:
        raise ValueError(f"source {source.dtype} {source.shape} and base {base.dtype} {base.shape} differ")
    if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] != 3):
        raise ValueError(f"planes must be (H, W) or (H, W, 3), got {source.shape}")
    if not layer_step_is_valid(step):
        raise ValueError(f"layer step {step} is not a whole number of sixteenths from "
                         f"{MIN_LAYER_STEP_SIXTEENTHS / 16} up")
    if not 0.0 <= rounding <= 0.5:
        raise ValueError(f"rounding {rounding} is outside [0, 0.5]")
    if not 0.0 <= rd_weight < math.inf:
        raise ValueError(f"rd_weight {rd_weight} is not a finite number ≥ 0")
    grid = block_grid(source.shape[0], source.shape[1])
    _check_detail(detail, grid)
    quotients, lowering_costs = quantise(source, base, step, rounding)
    if rd_weight:
        lower_where_cheaper(quotients, lowering_costs, grid, detail, rd_weight)
    del lowering_costs  # 4 bytes a coefficient, not needed by the coding that follows
    pixels = source.shape[0] * source.shape[1]
    return_freed_memory(pixels)  # the pass's tables, built on other threads (their own arenas)
    encoder = stream.queue.RangeEncoder()
    # Each channel's tables are built on a second thread while the one before is coded, and
    # the planes are reconstructed beside the coding (both only read the final quotients).
    with ThreadPoolExecutor(max_workers=2) as pool:
        reconstructed = pool.submit(reconstruct, quotients, base, step) if planes else None
        tables = pool.submit(channel_tables, quotients, 0, grid, detail)
        for channel in range(quotients.shape[0]):
            current = tables.result()
            if channel + 1 < quotients.shape[0]:
                tables = pool.submit(channel_tables, quotients, channel + 1, grid, detail)
            encode_channel(encoder, quotients, channel, current)
            del current
        words = encoder.get_compressed().astype("<u4").tobytes()
        layer = _LAYER_HEADER.pack(WRITTEN_TRANSFORM, int(step * 16)) + words
        return layer, None if reconstructed is None else reconstructed.result()


def encode(source: np.ndarray, base: np.ndarray, step: float, detail: np.ndarray, rounding: float = ROUNDING,
           rd_weight: float = RD_WEIGHT) -> bytes:
    """The DCT layer's bytes alone (see encode_with_planes)."""
    return encode_with_planes(source, base, step, detail, rounding, rd_weight, planes=False)[0]


def _check_detail(detail: np.ndarray, grid: tuple[int, int]) -> None:
    if detail.shape != (grid[0] * grid[1],) or detail.dtype != np.int32:
        raise ValueError(f"detail must be int32 ({grid[0] * grid[1]},), one per 8×8 block, "
                         f"got {detail.dtype} {detail.shape}")


def read_layer_header(layer: bytes) -> float:
    """The step of a layer this build reads; UnsupportedVersionError for a layer of a
    development build, CorruptBitstreamError for one no build wrote (both exit 3)."""
    if len(layer) <= _LAYER_HEADER.size or (len(layer) - _LAYER_HEADER.size) % 4:
        raise CorruptBitstreamError(f"DCT layer of {len(layer)} bytes is not a layer header and whole words")
    transform, sixteenths = _LAYER_HEADER.unpack_from(layer)
    if transform in DEVELOPMENT_TRANSFORMS:
        raise development_build_error(f"DCT-layer transform {transform}")
    if transform != WRITTEN_TRANSFORM:
        raise CorruptBitstreamError(f"DCT layer declares transform {transform}; the format's is {WRITTEN_TRANSFORM}")
    if sixteenths < MIN_LAYER_STEP_SIXTEENTHS:
        raise CorruptBitstreamError(f"DCT layer declares a step of {sixteenths}/16, below the "
                                    f"smallest, {MIN_LAYER_STEP_SIXTEENTHS}/16")
    return sixteenths / 16


def decode(layer: bytes, base: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """``base`` (uint8 planes) with the DCT layer added: the planes the file decodes to.
    ``detail`` is the encoder's (see encode_with_planes).

    A layer of empty groups is rightly a few bytes for any image size, so no length check
    ties the layer to the size here: the base's payload, decoded first and bounded by its
    own (codec/index_coder.py), is what does.
    """
    step = read_layer_header(layer)
    height, width = base.shape[:2]
    channels = 1 if base.ndim == 2 else 3
    grid = block_grid(height, width)
    _check_detail(detail, grid)
    by_frequency = np.zeros((channels, COEFFICIENTS, grid[0] * grid[1]), dtype=np.int32)  # see decode_channel
    decoder = stream.queue.RangeDecoder(np.frombuffer(layer, dtype="<u4", offset=_LAYER_HEADER.size).astype(np.uint32))
    # As for the payload (codec/index_coder.py): the decoder reads ahead, so only the decoded
    # symbols coded again tell an exact layer from one with a word appended or altered.
    echo = stream.queue.RangeEncoder()
    with coder_errors("DCT layer"):
        for channel in range(channels):
            decode_channel(decoder, by_frequency, channel, grid, detail, echo)
    if not decoder.maybe_exhausted() or echo.get_compressed().astype("<u4").tobytes() != layer[_LAYER_HEADER.size:]:
        raise CorruptBitstreamError("DCT layer is not the stream of its quotients (extra or altered words)")
    return reconstruct(by_frequency, base, step)
