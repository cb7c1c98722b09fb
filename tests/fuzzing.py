"""Mutation fuzzing of .dvq files through the whole decoder (shared by tests and scripts/).

Every case starts from a valid file made by ``codec.pipeline.encode`` of a small image and
applies one mutation strategy. Each strategy exists in two flavours: *raw* (the CRC is left
as it was, so most cases stop at the container's checks) and *fixed* (the CRC is recomputed,
so the damage reaches the deeper paths: weights lookup, latent-grid check, entropy decode,
alpha inflate and synthesis). A case passes when decoding either returns an image of the
declared size and mode or raises a ``CodecError`` subclass; any other exception, a case
slower than the time limit, or memory beyond what the declared image needs, is a failure.

Cases are reproducible one by one: case ``i`` of seed ``s`` draws from ``Random(f"{s}:{i}")``.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import struct
import time
import tracemalloc
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from diveq_codec.codec import container
from diveq_codec.codec.errors import CodecError
from diveq_codec.codec.limits import MAX_PIXELS, MAX_SIDE, check_dimensions

MiB = 1 << 20
MODEL_ALLOWANCE = 64 * MiB  # fixed allowance for the model's own working memory
BYTES_PER_PIXEL = 64  # allowance per declared pixel
# A decode that really runs the synthesis holds a few 128-channel float32 maps at full
# resolution (512 B a pixel each): the allowance of a valid payload's pixels.
DECODE_BYTES_PER_PIXEL = 4096
TIME_LIMIT_S = 5.0

# name -> (offset, struct code): the layout of codec/container.py, written out independently.
FIELDS: dict[str, tuple[int, str]] = {
    "magic": (0, "4s"), "version": (4, "B"), "flags": (5, "B"), "model_id": (6, "H"), "quality": (8, "B"),
    "weights_id": (9, "8s"), "coder_id": (17, "B"), "table_precision": (18, "B"), "width": (19, "I"),
    "height": (23, "I"), "channels": (27, "B"), "bit_depth": (28, "B"), "latent_h": (29, "H"),
    "latent_w": (31, "H"), "stages": (33, "B"), "payload_len": (34, "I"), "alpha_len": (38, "I"),
}
HEADER_SIZE = 42
HEADER_SIZE_WITH_LAYER = 46  # version 4 adds layer_len (u32) at offset 42
VERSION_WITH_LAYER = 4  # version 3: no DCT layer; 1 and 2 were development builds
TRAILER = 4


# --- the valid files mutations start from -------------------------------------------------------


def base_images() -> dict[str, tuple[Image.Image, int | None]]:
    """Small images of every kind the container distinguishes, with the quality to code them at."""
    rng = np.random.default_rng(2024)
    noise = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    yy, xx = np.mgrid[0:24, 0:40]
    gradient = Image.fromarray(np.dstack([xx * 6, yy * 10, (xx + yy) * 4]).astype(np.uint8), "RGB")
    rgba = Image.fromarray(np.dstack([rng.integers(0, 256, (16, 24, 3)), rng.integers(0, 256, (16, 24))])
                           .astype(np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (7, 9), dtype=np.uint8), "L")
    la = Image.fromarray(np.dstack([np.full((8, 8), 90), np.tile(np.arange(8) * 32, (8, 1))]).astype(np.uint8), "LA")
    return {"rgb16x16": (noise, None), "rgb40x24": (gradient, "max"), "rgba24x16": (rgba, "min"),
            "gray9x7": (gray, None), "la8x8": (la, "max")}


def make_bases(device: str = "cpu", every_quality: bool = False) -> dict[str, bytes]:
    """The valid .dvq files of :func:`base_images`, at the lowest rate point, the default and
    the highest (the default and the highest add a DCT layer: format version 4); with
    ``every_quality``, each image at every rate point instead (named ``image@qN``)."""
    from diveq_codec.codec.pipeline import encode
    from diveq_codec.codec.zoo import rate_points

    qualities = [p.quality for p in rate_points()]
    if every_quality:
        return {f"{name}@q{q}": encode(image, quality=q, device=device)
                for name, (image, _) in base_images().items() for q in qualities}
    pick = {"min": qualities[0], "max": qualities[-1], None: None}
    return {name: encode(image, quality=pick[q], device=device) for name, (image, q) in base_images().items()}


# --- mutations -----------------------------------------------------------------------------------


def fix_crc(data: bytes) -> bytes:
    """data with its last 4 bytes replaced by the CRC32 of the rest (no-op shape check)."""
    if len(data) < TRAILER:
        return data
    body = data[:-TRAILER]
    return body + struct.pack("<I", zlib.crc32(body))


def set_field(data: bytes, name: str, value: int | bytes) -> bytes:
    offset, code = FIELDS[name]
    buf = bytearray(data)
    if len(buf) < offset + struct.calcsize(code):
        buf.extend(b"\0" * (offset + struct.calcsize(code) - len(buf)))
    struct.pack_into("<" + code, buf, offset, value)
    return bytes(buf)


def get_field(data: bytes, name: str) -> int | bytes | None:
    offset, code = FIELDS[name]
    if len(data) < offset + struct.calcsize(code):
        return None
    return struct.unpack_from("<" + code, data, offset)[0]


def _header_size(data: bytes) -> int:
    return HEADER_SIZE_WITH_LAYER if len(data) > 4 and data[4] == VERSION_WITH_LAYER else HEADER_SIZE


def regions(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of the parts of a (valid) file, as its own header declares them."""
    payload_len = get_field(data, "payload_len") or 0
    alpha_len = get_field(data, "alpha_len") or 0
    h = _header_size(data)
    layer_len = struct.unpack_from("<I", data, HEADER_SIZE)[0] if h == HEADER_SIZE_WITH_LAYER else 0
    p0, a0 = h, h + int(payload_len)
    r0 = a0 + int(alpha_len)
    return {"header": (0, h), "payload": (p0, a0), "alpha": (a0, r0), "layer": (r0, r0 + layer_len),
            "crc": (len(data) - TRAILER, len(data)), "all": (0, len(data))}


def _pick_region(rng: random.Random, data: bytes) -> tuple[int, int]:
    present = {k: v for k, v in regions(data).items() if v[1] > v[0]}
    return present[rng.choice(sorted(present))]


def bit_flips(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    lo, hi = _pick_region(rng, data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        pos = rng.randrange(lo, hi)
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf)


def byte_overwrites(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    lo, hi = _pick_region(rng, data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        buf[rng.randrange(lo, hi)] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(buf)


def truncation(rng: random.Random, data: bytes) -> bytes:
    cut = rng.choice([0, 1, 3, 4, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, len(data) - 1,
                      len(data) - TRAILER, rng.randrange(len(data))])
    return data[:max(0, min(cut, len(data) - 1))]


def extension(rng: random.Random, data: bytes) -> bytes:
    extra = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 4, 8, 64, 1000])))
    where = rng.choice(["end", "before_crc", "after_header"])
    if where == "end":
        return data + extra
    if where == "before_crc":
        return data[:-TRAILER] + extra + data[-TRAILER:]
    return data[:HEADER_SIZE] + extra + data[HEADER_SIZE:]


def _interesting(rng: random.Random, original: int, bits: int) -> int:
    top = (1 << bits) - 1
    candidates = [0, 1, 2, 3, 4, 8, 16, 255, top, top - 1, 1 << (bits - 1), original - 1, original + 1,
                  original * 2, original // 2, original ^ (1 << rng.randrange(bits)), rng.randrange(top + 1)]
    return rng.choice(candidates) & top


def header_field(rng: random.Random, data: bytes) -> bytes:
    """One header field set to a boundary, neighbouring or random value."""
    name = rng.choice(sorted(FIELDS))
    offset, code = FIELDS[name]
    original = get_field(data, name)
    if code.endswith("s"):
        size = struct.calcsize(code)
        value = bytearray(original if isinstance(original, bytes) else b"\0" * size)
        if rng.random() < 0.5:
            value[rng.randrange(size)] ^= 1 << rng.randrange(8)
        else:
            value = bytearray(rng.randrange(256) for _ in range(size))
        return set_field(data, name, bytes(value))
    bits = 8 * struct.calcsize(code)
    return set_field(data, name, _interesting(rng, int(original or 0), bits))


def several_fields(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randrange(2, 5)):
        data = header_field(rng, data)
    return data


# Declared sizes for a consistent resize: tiny, stride edges, large but legal, and over the limits.
_SIZES = [(1, 1), (1, 9), (9, 1), (7, 8), (8, 8), (9, 9), (17, 23), (64, 64), (640, 480), (4000, 3000),
          (7071, 7071), (MAX_SIDE, 1), (1, MAX_SIDE), (MAX_SIDE, MAX_PIXELS // MAX_SIDE),
          (MAX_SIDE + 1, 1), (MAX_SIDE, MAX_SIDE), (10_000, 6_000), (0, 16), (65_535, 65_535),
          (2**32 - 1, 2**32 - 1)]


def consistent_resize(rng: random.Random, data: bytes) -> bytes:
    """Declare another image size with a latent grid that fits it, so only the payload can object.

    This is the hostile case the limits exist for: a few bytes declaring a giant image.
    """
    width, height = rng.choice(_SIZES) if rng.random() < 0.7 else (rng.randrange(1, 5000), rng.randrange(1, 5000))
    stride = rng.choice([8, 8, 8, 16, 4])
    data = set_field(data, "width", width)
    data = set_field(data, "height", height)
    data = set_field(data, "latent_h", min(-(-height // stride), 0xFFFF))
    return set_field(data, "latent_w", min(-(-width // stride), 0xFFFF))


def _with_lengths(data: bytes, payload: bytes, alpha: bytes, layer: bytes | None = None) -> bytes:
    """data with other sections and lengths that match them; a version-4 file keeps its
    DCT layer unless another is given."""
    h = _header_size(data)
    if layer is None:
        layer = data[slice(*regions(data)["layer"])]
    header = set_field(set_field(data[:h], "payload_len", len(payload)), "alpha_len", len(alpha))
    if h == HEADER_SIZE_WITH_LAYER:
        header = header[:HEADER_SIZE] + struct.pack("<I", len(layer))
    return header + payload + alpha + layer + data[-TRAILER:]


def replace_payload(rng: random.Random, data: bytes) -> bytes:
    """A payload of another length or content, with payload_len kept consistent."""
    parts = regions(data)
    payload = data[slice(*parts["payload"])]
    alpha = data[slice(*parts["alpha"])]
    kind = rng.choice(["random", "zeros", "ones", "short", "long", "odd", "reversed", "words_shuffled", "empty"])
    if kind == "random":
        new = bytes(rng.randrange(256) for _ in range(len(payload)))
    elif kind == "zeros":
        new = b"\0" * max(4, len(payload))
    elif kind == "ones":
        new = b"\xff" * max(4, len(payload))
    elif kind == "short":
        new = payload[:4 * rng.randrange(0, max(1, len(payload) // 4))]
    elif kind == "long":
        new = payload + bytes(rng.randrange(256) for _ in range(4 * rng.choice([1, 2, 16, 256])))
    elif kind == "odd":
        new = payload + b"\x01" * rng.choice([1, 2, 3])
    elif kind == "reversed":
        new = payload[::-1]
    elif kind == "words_shuffled":
        words = [payload[i:i + 4] for i in range(0, len(payload), 4)]
        rng.shuffle(words)
        new = b"".join(words)
    else:
        new = b""
    return _with_lengths(data, new, alpha)


def replace_alpha(rng: random.Random, data: bytes) -> bytes:
    """An alpha plane that is damaged, of the wrong size, a zip bomb, or present where none belongs."""
    parts = regions(data)
    payload = data[slice(*parts["payload"])]
    alpha = data[slice(*parts["alpha"])]
    width = int(get_field(data, "width") or 1)
    height = int(get_field(data, "height") or 1)
    n = width * height
    kind = rng.choice(["bomb", "short_plane", "long_plane", "trailing", "raw_deflate", "garbage", "cut", "empty",
                       "gzip"])
    if kind == "bomb":
        new = zlib.compress(b"\0" * rng.choice([n + 1, 10 * n + 7, 16 * MiB]), 9)
    elif kind == "short_plane":
        new = zlib.compress(b"\x80" * max(0, n - rng.choice([1, n])))
    elif kind == "long_plane":
        new = zlib.compress(b"\x80" * (n + rng.choice([1, 1000])))
    elif kind == "trailing":
        new = zlib.compress(b"\x80" * n) + b"junk"
    elif kind == "raw_deflate":
        c = zlib.compressobj(wbits=-15)
        new = c.compress(b"\x80" * n) + c.flush()
    elif kind == "garbage":
        new = bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 100])))
    elif kind == "cut":
        new = alpha[:rng.randrange(len(alpha))] if alpha else b"\x78"
    elif kind == "gzip":
        import gzip
        new = gzip.compress(b"\x80" * n, mtime=0)  # mtime fixed: cases must be reproducible
    else:
        new = b""
    if rng.random() < 0.3:  # keep the flag consistent with the plane's presence, or not
        flags = int(get_field(data, "flags") or 0)
        data = set_field(data, "flags", flags ^ container.FLAG_ALPHA)
    return _with_lengths(data, payload, new)


def replace_layer(rng: random.Random, data: bytes) -> bytes:
    """A DCT layer that is cut, extended, garbage, of another step or transform (the
    lengths kept consistent); a version-3 file gets one it has no field for."""
    layer = data[slice(*regions(data)["layer"])]
    kind = rng.choice(["random", "short", "long", "step", "transform", "header_only", "empty"])
    if kind == "random":
        new = layer[:3] + bytes(rng.randrange(256) for _ in range(max(4, len(layer) - 3)))
    elif kind == "short":
        new = layer[:3 + 4 * rng.randrange(0, max(1, (len(layer) - 3) // 4))]
    elif kind == "long":
        new = layer + bytes(rng.randrange(256) for _ in range(4 * rng.choice([1, 2, 64])))
    elif kind == "step":
        new = layer[:1] + struct.pack("<H", _interesting(rng, 96, 16)) + layer[3:]
    elif kind == "transform":
        new = bytes([rng.randrange(256)]) + layer[1:]
    elif kind == "header_only":
        new = layer[:3]
    else:
        new = b""
    r = regions(data)
    return _with_lengths(data, data[slice(*r["payload"])], data[slice(*r["alpha"])], new)


def splice(rng: random.Random, data: bytes, bases: dict[str, bytes]) -> bytes:
    """Header of one valid file with the payload (and alpha) of another."""
    other = bases[rng.choice(sorted(bases))]
    r = regions(other)
    return _with_lengths(data, other[slice(*r["payload"])], other[slice(*r["alpha"])])


Mutator = Callable[[random.Random, bytes], bytes]
def recoded_at_size(rng: random.Random, data: bytes) -> bytes:
    """A *valid* payload, coded by the real index coder, for another declared size: a
    constant map (the cheapest a payload can be) or runs of a few codewords, on a grid of up
    to 32 × 32 latents (256 × 256 pixels: a hundred thousand cases stay a matter of minutes);
    no alpha, no DCT layer. What the file declares is real work, paid for by its bytes."""
    from diveq_codec.codec import index_coder  # late: the fuzzer's other strategies need no model
    from diveq_codec.codec.zoo import load_model

    try:
        header = container.unpack(data).header
        model = load_model(header.model_id).require_index_model()
    except CodecError:
        return data
    grid_h, grid_w = rng.randrange(1, 33), rng.randrange(1, 33)
    stages = rng.randrange(1, len(model.stages) + 1)
    if rng.random() < 0.5:
        indices = np.array([[rng.randrange(model.codes)] * (grid_h * grid_w) for _ in range(stages)])
    else:
        palette = [rng.randrange(model.codes) for _ in range(rng.choice([2, 3, 8]))]
        run = rng.choice([1, 4, 16])
        indices = np.array([[palette[(i // run) % len(palette)] for i in range(grid_h * grid_w)] for _ in range(stages)])
    width, height = grid_w * 8 - rng.randrange(8), grid_h * 8 - rng.randrange(8)
    payload = index_coder.encode_indices(indices, model, grid_w, index_coder.min_payload_bytes(width * height))
    sized = dataclasses.replace(header, width=width, height=height, latent_h=grid_h, latent_w=grid_w,
                                stages=stages, channels=3, flags=0)
    return container.pack(container.Container(sized, payload, b""))


MUTATORS: dict[str, Mutator] = {
    "bit_flips": bit_flips, "byte_overwrites": byte_overwrites, "truncation": truncation,
    "extension": extension, "header_field": header_field, "several_fields": several_fields,
    "consistent_resize": consistent_resize, "replace_payload": replace_payload, "replace_alpha": replace_alpha,
    "replace_layer": replace_layer, "recoded_at_size": recoded_at_size,
}
STRATEGIES = sorted(MUTATORS) + ["splice"]


def make_case(seed: int, index: int, bases: dict[str, bytes]) -> tuple[str, bytes]:
    """Case ``index`` of ``seed``: (description, mutated bytes). Deterministic."""
    rng = random.Random(f"{seed}:{index}")
    base_name = rng.choice(sorted(bases))
    data = bases[base_name]
    strategy = rng.choice(STRATEGIES)
    for _ in range(20):  # a mutation that happens to change nothing (same value, same base) is redrawn
        mutated = splice(rng, data, bases) if strategy == "splice" else MUTATORS[strategy](rng, data)
        if mutated != data:
            break
    fixed = rng.random() < 0.6 and len(mutated) >= TRAILER and fix_crc(mutated) != data
    if fixed:  # (recomputing the CRC over damage to the CRC alone would give the original back)
        mutated = fix_crc(mutated)
    return f"{base_name}/{strategy}/{'crc-fixed' if fixed else 'raw'}", mutated


# --- running cases -------------------------------------------------------------------------------


def declared_budget(data: bytes, valid_payload: bool = False) -> int:
    """Memory a case may use: 64 B per declared pixel (only if the size is legal) + 64 MiB;
    for a valid payload (``recoded_at_size``), which really decodes at its size, what the
    synthesis needs per pixel instead (DECODE_BYTES_PER_PIXEL)."""
    width, height = get_field(data, "width"), get_field(data, "height")
    if isinstance(width, int) and isinstance(height, int) and check_dimensions(width, height) is None:
        per_pixel = DECODE_BYTES_PER_PIXEL if valid_payload else BYTES_PER_PIXEL
        return MODEL_ALLOWANCE + per_pixel * width * height
    return MODEL_ALLOWANCE


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


@dataclass
class Summary:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)  # "decoded" or an exception class name
    by_strategy: Counter = field(default_factory=Counter)  # "strategy/flavour outcome"
    failures: list[str] = field(default_factory=list)  # one description per failed case
    uncaught: int = 0
    slow: int = 0
    over_memory: int = 0
    wrong_image: int = 0
    max_time_s: float = 0.0
    max_time_case: str = ""
    max_traced_bytes: int = 0  # tracemalloc peak of the worst case
    max_ms_per_byte: float = 0.0  # decode time per byte of the file, worst case
    max_traced_per_byte: float = 0.0  # tracemalloc peak per byte of the file, worst case
    max_rss_growth: int = 0  # how far a case raised ru_maxrss above the RSS it started from
    start_rss: int = 0
    end_rss: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        out = [f"cases: {self.cases}  wall: {self.wall_s:.1f} s  failures: {len(self.failures)} "
               f"(uncaught {self.uncaught}, slow {self.slow}, over memory {self.over_memory}, "
               f"wrong image {self.wrong_image})",
               f"max time: {self.max_time_s * 1000:.1f} ms ({self.max_time_case}); per byte of the file at most "
               f"{self.max_ms_per_byte:.3f} ms and {self.max_traced_per_byte / 1024:.1f} KiB traced",
               f"memory: max traced peak per case {self.max_traced_bytes / MiB:.1f} MiB; peak RSS rose "
               f"{self.max_rss_growth / MiB:.1f} MiB at most in one case; RSS {self.start_rss / MiB:.0f} → "
               f"{self.end_rss / MiB:.0f} MiB",
               "outcomes:"]
        out += [f"  {count:8d}  {name}" for name, count in self.outcomes.most_common()]
        out += [f"FAIL {f}" for f in self.failures[:20]]
        return out


def run_case(data: bytes, device: str = "cpu") -> tuple[str, BaseException | None, object]:
    """Decode once: ("decoded" | exception class name, unexpected exception or None, image or None)."""
    from diveq_codec.codec.pipeline import decode

    try:
        image = decode(data, device=device)
    except CodecError as exc:
        if "\n" in str(exc):
            return type(exc).__name__, ValueError(f"multi-line message: {exc!r}"), None
        return type(exc).__name__, None, None
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a finding
        return type(exc).__name__, exc, None
    return "decoded", None, image




def fuzz(cases: int, seed: int, bases: dict[str, bytes] | None = None, device: str = "cpu",
         trace_memory: bool = True, time_limit_s: float = TIME_LIMIT_S, start: int = 0,
         progress: Callable[[int, Summary], None] | None = None) -> Summary:
    """Run cases start .. start+cases-1 of ``seed`` and collect a Summary (never raises for a case)."""
    bases = make_bases(device) if bases is None else bases
    for data in bases.values():  # warm up: model loaded, allocator pools filled
        run_case(data, device)
    summary = Summary(start_rss=_rss_bytes())
    if trace_memory:
        tracemalloc.start()
    began = time.perf_counter()
    try:
        for index in range(start, start + cases):
            name, data = make_case(seed, index, bases)
            budget = declared_budget(data, valid_payload="/recoded_at_size/" in name)
            if trace_memory:
                tracemalloc.reset_peak()
            max_before, rss_before = _max_rss_bytes(), _rss_bytes()
            t0 = time.perf_counter()
            outcome, unexpected, image = run_case(data, device)
            elapsed = time.perf_counter() - t0
            traced = tracemalloc.get_traced_memory()[1] if trace_memory else 0
            max_after = _max_rss_bytes()
            # ru_maxrss only ever rises: a case is charged only when it raised it, with how far
            # above the RSS it started from (what earlier cases left in the allocators is theirs).
            rss_growth = max_after - rss_before if max_after > max_before else 0
            summary.cases += 1
            summary.outcomes[outcome] += 1
            summary.by_strategy[f"{name.split('/', 1)[1]} {outcome}"] += 1
            if elapsed > summary.max_time_s:
                summary.max_time_s, summary.max_time_case = elapsed, f"#{index} {name}"
            summary.max_traced_bytes = max(summary.max_traced_bytes, traced)
            summary.max_ms_per_byte = max(summary.max_ms_per_byte, elapsed * 1000 / len(data)) if data else 0.0
            summary.max_traced_per_byte = max(summary.max_traced_per_byte, traced / max(1, len(data)))
            summary.max_rss_growth = max(summary.max_rss_growth, rss_growth)
            where = f"case #{index} (seed {seed}) {name}"
            if unexpected is not None:
                summary.uncaught += 1
                tb = "".join(traceback.format_exception_only(type(unexpected), unexpected)).strip()
                summary.failures.append(f"{where}: uncaught {tb}")
            if elapsed > time_limit_s:
                summary.slow += 1
                summary.failures.append(f"{where}: took {elapsed:.2f} s")
            if traced > budget or rss_growth > budget:
                summary.over_memory += 1
                summary.failures.append(f"{where}: traced {traced / MiB:.1f} MiB, RSS +{rss_growth / MiB:.1f} MiB "
                                        f"over a budget of {budget / MiB:.1f} MiB")
            if image is not None:
                size = (get_field(data, "width"), get_field(data, "height"))
                mode = container.CHANNELS_TO_MODE.get(int(get_field(data, "channels") or 0))
                if image.size != size or image.mode != mode:
                    summary.wrong_image += 1
                    summary.failures.append(f"{where}: decoded {image.size} {image.mode}, header says {size} {mode}")
            if progress is not None:
                progress(index, summary)
    finally:
        if trace_memory:
            tracemalloc.stop()
        summary.wall_s = time.perf_counter() - began
        summary.end_rss = _rss_bytes()
    return summary
