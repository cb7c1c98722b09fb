"""The .dvq container: a fixed header, the coded payload, an alpha plane, a DCT layer, a CRC32.

docs/format.md is the full byte layout for a reader; in short (all integers little-endian):

     0 magic            4s   b"\\x89DVQ"
     4 version          u8   3 (no DCT layer) or 4 (with one)
     5 flags            u8   FLAG_*
     6 model_id         u16
     8 quality          u8   rate point, 1..255
     9 weights_id       8s   prefix of the weights file's sha256
    17 coder_id         u8   fixed: CODER_INDEX_MODEL
    18 table_precision  u8   fixed: TABLE_PRECISION (24)
    19 width            u32  original image size
    23 height           u32
    27 channels         u8   1 L, 2 LA, 3 RGB, 4 RGBA
    28 bit_depth        u8   source bits per sample, 8 or 16
    29 latent_h         u16
    31 latent_w         u16
    33 stages           u8   coded symbol streams (residual stages)
    34 payload_len      u32
    38 alpha_len        u32
    42 layer_len        u32  version 4 only, > 0
    42 or 46: payload, then alpha, then the DCT layer, then the CRC32 (u32) of every byte before it.

A file without a DCT layer is always written as version 3, so that the rate points the
network codes alone do not depend on the layer's format.

Rule for the future: a change that alters what ``encode`` writes takes a new format version,
and the decoder keeps reading every version a tagged release wrote (FORMAT_VERSIONS).

The magic, version and lengths are checked before the CRC so that a file of another kind,
a newer version or a cut-off download is reported as such rather than as "damaged".
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from diveq_codec.codec.errors import BitstreamError, CorruptBitstreamError, UnsupportedVersionError
from diveq_codec.codec.limits import check_dimensions

TABLE_PRECISION = 24  # bits of the index coder's probabilities (constriction's range coder)
MAGIC = b"\x89DVQ"  # non-ASCII first byte catches text-mode transfers, like PNG
FORMAT_VERSION = 4  # the newest version this build reads and writes
FORMAT_VERSIONS = (3, 4)  # every version a tagged release wrote, or this build writes
VERSION_WITH_LAYER = 4
# Versions that development builds before the first release wrote (static-table index
# coders): refused as such (exit 3).
DEVELOPMENT_VERSIONS = (1, 2)
# The coder_id byte has one allowed value: the index coder of codec/index_coder.py, whose
# probabilities come from the learned index model (codec/index_model.py).
CODER_INDEX_MODEL = 4
# The header's channels field: the mode the decoded image is restored to.
CHANNELS_TO_MODE = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
MODE_TO_CHANNELS = {mode: n for n, mode in CHANNELS_TO_MODE.items()}
FLAG_ALPHA = 1  # an alpha plane (zlib-deflated, lossless) follows the payload
FLAG_FROM_16BIT = 2  # the source had 16 bits per sample and was reduced to 8
FLAG_FROM_PALETTE = 4  # the source was a palette image
KNOWN_FLAGS = FLAG_ALPHA | FLAG_FROM_16BIT | FLAG_FROM_PALETTE
HEADER_SIZE = 42  # of a version-1 file
HEADER_SIZE_WITH_LAYER = 46
TRAILER_SIZE = 4

_HEADER = struct.Struct("<4sBBHB8sBBIIBBHHBII")
_LAYER_LEN = struct.Struct("<I")  # version 4's extra field, right after version 3's header
_CRC = struct.Struct("<I")
_MIN_SIZE = HEADER_SIZE + TRAILER_SIZE
assert _HEADER.size == HEADER_SIZE and HEADER_SIZE + _LAYER_LEN.size == HEADER_SIZE_WITH_LAYER

# Bit width of each integer header field, so pack can refuse values the layout cannot hold.
_FIELD_BITS = {
    "model_id": 16, "quality": 8, "coder_id": 8, "table_precision": 8, "width": 32, "height": 32,
    "channels": 8, "bit_depth": 8, "flags": 8, "latent_h": 16, "latent_w": 16, "stages": 8,
}


@dataclass(frozen=True)
class Header:
    model_id: int  # u16
    quality: int  # u8, rate point (1..255)
    weights_id: bytes  # exactly 8 bytes: prefix of the weights file's sha256
    coder_id: int  # u8, always CODER_INDEX_MODEL
    table_precision: int  # u8, always TABLE_PRECISION
    width: int  # u32, original image width
    height: int  # u32
    channels: int  # u8: channels of the image to restore: 1 (L), 2 (LA), 3 (RGB), 4 (RGBA)
    bit_depth: int  # u8: source bits per sample, 8 or 16
    flags: int  # u8, see FLAG_*
    latent_h: int  # u16
    latent_w: int  # u16
    stages: int  # u8, number of coded symbol streams (residual stages), >= 1


@dataclass(frozen=True)
class Container:
    header: Header
    payload: bytes  # entropy-coded indices
    alpha: bytes  # deflated alpha plane, b"" when FLAG_ALPHA is not set
    layer: bytes = b""  # the DCT layer (codec/dct_layer.py); b"" in a version-3 file

    @property
    def version(self) -> int:
        """The format version this container is written as: 4 only with a DCT layer."""
        return VERSION_WITH_LAYER if self.layer else FORMAT_VERSIONS[0]


def development_build_error(what: str) -> UnsupportedVersionError:
    """The error for a file whose ``what`` (e.g. "entropy coder 1") only a development build
    before the first release wrote: its bytes are sound, this build just does not read them."""
    return UnsupportedVersionError(f"made by a development build of diveq-codec before the first release "
                                   f"({what}); encode the image again")


def _field_problem(h: Header, payload_len: int, alpha_len: int) -> str | None:
    """Why the header's values are inconsistent, or None; shared so pack never writes what unpack refuses."""
    if h.flags & ~KNOWN_FLAGS:
        return f"unknown flag bits 0x{h.flags & ~KNOWN_FLAGS:02x}"
    if h.coder_id != CODER_INDEX_MODEL:
        return f"unknown entropy coder id {h.coder_id}"
    if h.table_precision != TABLE_PRECISION:
        return f"table precision of {h.table_precision} bits; this format's is {TABLE_PRECISION}"
    if h.channels not in (1, 2, 3, 4):
        return f"{h.channels} channels declared; expected 1, 2, 3 or 4"
    if h.bit_depth not in (8, 16):
        return f"bit depth {h.bit_depth} declared; expected 8 or 16"
    has_alpha = bool(h.flags & FLAG_ALPHA)
    if has_alpha != (h.channels in (2, 4)):
        return f"alpha flag is {'set' if has_alpha else 'clear'} for a {h.channels}-channel image"
    if has_alpha != (alpha_len > 0):
        return ("alpha flag is set but the alpha plane is empty" if has_alpha
                else f"alpha plane of {alpha_len} bytes without the alpha flag")
    if payload_len == 0 or payload_len % 4:
        return f"payload length {payload_len} is not a positive multiple of 4"
    if h.stages == 0:
        return "zero coded stages declared"
    if h.quality == 0:
        return "quality 0 declared; rate points start at 1"
    if h.latent_h == 0 or h.latent_w == 0:
        return f"latent grid {h.latent_h}×{h.latent_w} is empty"
    return check_dimensions(h.width, h.height)


def pack(container: Container) -> bytes:
    """Serialize a container; ValueError for a header or lengths that no valid file can carry."""
    h = container.header
    payload, alpha, layer = bytes(container.payload), bytes(container.alpha), bytes(container.layer)
    if not isinstance(h.weights_id, bytes) or len(h.weights_id) != 8:
        raise ValueError(f"weights_id must be exactly 8 bytes, got {h.weights_id!r}")
    for name, bits in _FIELD_BITS.items():
        value = getattr(h, name)
        if not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise ValueError(f"{name}={value!r} does not fit an unsigned {bits}-bit field")
    for name, blob in (("payload", payload), ("alpha", alpha), ("layer", layer)):
        if len(blob) >= 1 << 32:
            raise ValueError(f"{name} of {len(blob)} bytes does not fit a u32 length")
    problem = _field_problem(h, len(payload), len(alpha))
    if problem is not None:
        raise ValueError(problem)
    body = _HEADER.pack(
        MAGIC, container.version, h.flags, h.model_id, h.quality, h.weights_id, h.coder_id,
        h.table_precision, h.width, h.height, h.channels, h.bit_depth, h.latent_h, h.latent_w,
        h.stages, len(payload), len(alpha),
    )
    if layer:
        body += _LAYER_LEN.pack(len(layer))
    body += payload + alpha + layer
    return body + _CRC.pack(zlib.crc32(body))


def _parse(data: bytes) -> tuple[Header, int, int, int, int]:
    """Every check of the format, in order; returns the header, the header's size and the
    payload, alpha and layer lengths."""
    if data[:4] != MAGIC[:len(data[:4])]:
        raise BitstreamError("not a diveq-codec file (bad magic)")
    if len(data) < _MIN_SIZE:
        raise CorruptBitstreamError(f"truncated: {len(data)} bytes, a .dvq file has at least {_MIN_SIZE}")
    (_, version, flags, model_id, quality, weights_id, coder_id, table_precision, width, height,
     channels, bit_depth, latent_h, latent_w, stages, payload_len, alpha_len) = _HEADER.unpack_from(data)
    if version in DEVELOPMENT_VERSIONS:
        raise development_build_error(f"format version {version}")
    if version not in FORMAT_VERSIONS:
        raise UnsupportedVersionError(f"format version {version} is not supported by this build "
                                      f"(reads {FORMAT_VERSIONS[0]} to {FORMAT_VERSION})")
    header_size, layer_len = HEADER_SIZE, 0
    if version == VERSION_WITH_LAYER:
        header_size = HEADER_SIZE_WITH_LAYER
        if len(data) < header_size + TRAILER_SIZE:
            raise CorruptBitstreamError(
                f"truncated: {len(data)} bytes, a version-{version} file has at least {header_size + TRAILER_SIZE}")
        (layer_len,) = _LAYER_LEN.unpack_from(data, HEADER_SIZE)
    declared = header_size + payload_len + alpha_len + layer_len + TRAILER_SIZE
    if len(data) < declared:
        raise CorruptBitstreamError(f"truncated: {len(data)} bytes, the header declares {declared}")
    if len(data) > declared:
        raise CorruptBitstreamError(
            f"{len(data) - declared} trailing bytes after the {declared} bytes the header declares")
    (stored,) = _CRC.unpack_from(data, declared - TRAILER_SIZE)
    computed = zlib.crc32(memoryview(data)[:declared - TRAILER_SIZE])
    if stored != computed:
        raise CorruptBitstreamError(
            f"checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x}): the file is damaged")
    header = Header(model_id, quality, weights_id, coder_id, table_precision, width, height, channels,
                    bit_depth, flags, latent_h, latent_w, stages)
    problem = _field_problem(header, payload_len, alpha_len)
    if problem is None and version == VERSION_WITH_LAYER and layer_len == 0:
        problem = f"a version-{version} file without a DCT layer (such a file is written as version {FORMAT_VERSIONS[0]})"
    if problem is not None:
        raise CorruptBitstreamError(f"invalid header: {problem}")
    return header, header_size, payload_len, alpha_len, layer_len


def unpack(data: bytes) -> Container:
    """Parse and fully validate a .dvq file; raises only BitstreamError (or a subclass)."""
    header, start, payload_len, alpha_len, layer_len = _parse(data)
    payload_end = start + payload_len
    alpha_end = payload_end + alpha_len
    return Container(header, bytes(data[start:payload_end]), bytes(data[payload_end:alpha_end]),
                     bytes(data[alpha_end:alpha_end + layer_len]))


def peek_header(data: bytes) -> Header:
    """The header of a valid file, with every check of unpack, without copying the payload."""
    return _parse(data)[0]
