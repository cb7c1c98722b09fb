"""The .dvq container: round trips, golden layout, and every refusal of a damaged, hostile or
development-build file (docs/format.md is the layout these tests pin down)."""

from __future__ import annotations

import dataclasses
import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import fuzzing  # tests/fuzzing.py
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diveq_codec.codec.container import (
    CODER_INDEX_MODEL, DEVELOPMENT_VERSIONS, FLAG_ALPHA, FLAG_FROM_16BIT, FLAG_FROM_PALETTE, FORMAT_VERSION,
    FORMAT_VERSIONS, HEADER_SIZE, HEADER_SIZE_WITH_LAYER, MAGIC, TRAILER_SIZE, VERSION_WITH_LAYER, Container, Header,
    pack, peek_header, unpack,
)
from diveq_codec.codec.errors import BitstreamError, CorruptBitstreamError, UnsupportedVersionError
from diveq_codec.codec.limits import MAX_PIXELS, MAX_SIDE

# The layout written out independently of codec/container.py: name -> (offset, struct code).
FIELDS = {
    "magic": (0, "4s"), "version": (4, "B"), "flags": (5, "B"), "model_id": (6, "H"), "quality": (8, "B"),
    "weights_id": (9, "8s"), "coder_id": (17, "B"), "table_precision": (18, "B"), "width": (19, "I"),
    "height": (23, "I"), "channels": (27, "B"), "bit_depth": (28, "B"), "latent_h": (29, "H"),
    "latent_w": (31, "H"), "stages": (33, "B"), "payload_len": (34, "I"), "alpha_len": (38, "I"),
}

RGBA = Header(model_id=0x0102, quality=5, weights_id=bytes.fromhex("0011223344556677"),
              coder_id=CODER_INDEX_MODEL, table_precision=24, width=640, height=480, channels=4,
              bit_depth=16, flags=FLAG_ALPHA | FLAG_FROM_16BIT, latent_h=30, latent_w=40, stages=2)
RGBA_FILE = pack(Container(RGBA, bytes.fromhex("deadbeef01020304"), bytes.fromhex("aabbccdd")))
RGB = dataclasses.replace(RGBA, channels=3, bit_depth=8, flags=FLAG_FROM_PALETTE)
RGB_FILE = pack(Container(RGB, bytes.fromhex("deadbeef01020304"), b""))
FILES = {"rgba": RGBA_FILE, "rgb": RGB_FILE}

GOLDEN_HEX = (
    "89445651"  # 0 magic
    "03"  # 4 version: no DCT layer
    "03"  # 5 flags: alpha | from 16-bit
    "0201"  # 6 model_id 0x0102
    "05"  # 8 quality
    "0011223344556677"  # 9 weights_id
    "04"  # 17 coder_id: fixed (the index model's coder)
    "18"  # 18 table_precision 24: fixed
    "80020000"  # 19 width 640
    "e0010000"  # 23 height 480
    "04"  # 27 channels
    "10"  # 28 bit_depth 16
    "1e00"  # 29 latent_h 30
    "2800"  # 31 latent_w 40
    "02"  # 33 stages
    "08000000"  # 34 payload_len
    "04000000"  # 38 alpha_len
    "deadbeef01020304"  # 42 payload
    "aabbccdd"  # 50 alpha
    "62a782d8"  # 54 CRC32 of bytes 0..53
)


def _edit(data: bytes, **fields: int | bytes) -> bytes:
    """`data` with header fields rewritten and the CRC recomputed, so the check behind the CRC is reached."""
    body = bytearray(data[:-TRAILER_SIZE])
    for name, value in fields.items():
        offset, code = FIELDS[name]
        struct.pack_into("<" + code, body, offset, value)
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def _refused(data: bytes, kind: type[BitstreamError], match: str) -> None:
    """unpack and peek_header both refuse `data` with exactly `kind` and a one-line message."""
    for parse in (unpack, peek_header):
        with pytest.raises(BitstreamError) as info:
            parse(data)
        assert type(info.value) is kind
        assert match in str(info.value)
        assert "\n" not in str(info.value)


@st.composite
def containers(draw: st.DrawFn) -> Container:
    channels = draw(st.sampled_from([1, 2, 3, 4]))
    alpha = channels in (2, 4)
    width = draw(st.integers(1, MAX_SIDE))
    header = Header(
        model_id=draw(st.integers(0, 0xFFFF)), quality=draw(st.integers(1, 255)),
        weights_id=draw(st.binary(min_size=8, max_size=8)), coder_id=CODER_INDEX_MODEL,
        table_precision=24, width=width,
        height=draw(st.integers(1, min(MAX_SIDE, MAX_PIXELS // width))), channels=channels,
        bit_depth=draw(st.sampled_from([8, 16])),
        flags=(FLAG_ALPHA if alpha else 0) | draw(st.sampled_from([0, FLAG_FROM_16BIT, FLAG_FROM_PALETTE, 6])),
        latent_h=draw(st.integers(1, 0xFFFF)), latent_w=draw(st.integers(1, 0xFFFF)),
        stages=draw(st.integers(1, 255)),
    )
    payload = draw(st.binary(min_size=1, max_size=64).map(lambda b: b * 4))
    return Container(header, payload, draw(st.binary(min_size=1, max_size=64)) if alpha else b"")


@settings(max_examples=200, deadline=None)
@given(containers())
def test_round_trip(container: Container) -> None:
    data = pack(container)
    assert len(data) == HEADER_SIZE + len(container.payload) + len(container.alpha) + TRAILER_SIZE
    assert unpack(data) == container
    assert peek_header(data) == container.header


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"", MAGIC + b"\x03", MAGIC + b"\x04", MAGIC + b"\x02"]), st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_bitstream_errors(prefix: bytes, tail: bytes) -> None:
    """Past the magic and version too (random bytes alone would stop at the magic check)."""
    try:
        unpack(prefix + tail)
    except BitstreamError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=29, max_size=29))
def test_arbitrary_header_fields_behind_a_valid_crc(fields: bytes) -> None:
    """Bytes 5..33 (all but magic, version and lengths), resealed: parsed as written or refused
    as corrupt; never as another version (the version byte alone says which build wrote a file)."""
    body = RGBA_FILE[:5] + fields + RGBA_FILE[34:-TRAILER_SIZE]
    data = body + struct.pack("<I", zlib.crc32(body))
    try:
        container = unpack(data)
    except CorruptBitstreamError as error:
        assert str(error).startswith("invalid header: ")
    else:
        assert data[17] == CODER_INDEX_MODEL
        assert pack(container) == data


def test_golden_layout() -> None:
    """Any change here changes every file on disk: bump the format version with it (and keep
    decoding the versions tagged releases wrote)."""
    assert RGBA_FILE.hex() == GOLDEN_HEX
    assert int.from_bytes(RGBA_FILE[-4:], "little") == zlib.crc32(RGBA_FILE[:-4])
    assert unpack(bytes.fromhex(GOLDEN_HEX)) == Container(RGBA, bytes.fromhex("deadbeef01020304"),
                                                          bytes.fromhex("aabbccdd"))


def test_peek_header_agrees_with_unpack() -> None:
    for data in (RGBA_FILE, RGB_FILE):
        assert peek_header(data) == unpack(data).header


def test_edit_helper_keeps_a_valid_file_valid() -> None:
    """Guards the refusal tests below: an edit to an equally valid value must still parse."""
    assert unpack(_edit(RGBA_FILE, quality=9)).header == dataclasses.replace(RGBA, quality=9)


@pytest.mark.parametrize("data", [
    pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(60), id="png"),
    pytest.param(b"\x89PNG", id="short-not-a-magic-prefix"),
    pytest.param(b"x", id="one-byte"),
    pytest.param(MAGIC[:3] + b"!" + RGBA_FILE[4:], id="last-magic-byte"),
    pytest.param(b"\xc2\x89DVQ" + RGBA_FILE[4:], id="utf8-text-transfer"),
])
def test_bad_magic(data: bytes) -> None:
    _refused(data, BitstreamError, "not a diveq-codec file (bad magic)")


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 20, 45])
def test_too_short_for_a_header(size: int) -> None:
    """A prefix of the magic is a cut-off .dvq file, not a different kind of file."""
    _refused(RGBA_FILE[:size], CorruptBitstreamError, f"truncated: {size} bytes, a .dvq file has at least 46")


def test_the_versions_this_build_reads_and_writes() -> None:
    assert FORMAT_VERSIONS == (3, 4) and FORMAT_VERSION == VERSION_WITH_LAYER == 4
    assert DEVELOPMENT_VERSIONS == (1, 2) and CODER_INDEX_MODEL == 4
    assert RGBA_FILE[4] == 3 and RGBA_FILE[17] == CODER_INDEX_MODEL


@pytest.mark.parametrize("version", [0, 5, 6, 255])
def test_bad_version(version: int) -> None:
    _refused(_edit(RGBA_FILE, version=version), UnsupportedVersionError,
             f"format version {version} is not supported by this build (reads 3 to 4)")


def test_version_is_checked_before_length_and_crc() -> None:
    """A newer file may be laid out differently: its version is the only thing worth reporting."""
    newer = bytearray(RGBA_FILE + b"more")
    newer[4] = 5
    _refused(bytes(newer), UnsupportedVersionError, "format version 5")
    older = bytearray(RGBA_FILE + b"more")
    older[4] = 2
    _refused(bytes(older), UnsupportedVersionError, "development build")


LAYER = bytes.fromhex("0380000102030405")  # the container does not look inside the DCT layer
LAYER_FILE = pack(Container(RGBA, bytes.fromhex("deadbeef01020304"), bytes.fromhex("aabbccdd"), LAYER))


def test_a_dct_layer_makes_a_version_4_file_with_one_more_length() -> None:
    assert LAYER_FILE[4] == 4 and RGBA_FILE[4] == 3
    assert len(LAYER_FILE) == HEADER_SIZE_WITH_LAYER + 8 + 4 + len(LAYER) + TRAILER_SIZE
    assert LAYER_FILE[HEADER_SIZE:HEADER_SIZE_WITH_LAYER] == len(LAYER).to_bytes(4, "little")
    # Everything else is version 3's layout: the same fields, then the sections in order.
    assert LAYER_FILE[5:HEADER_SIZE] == RGBA_FILE[5:HEADER_SIZE]
    assert LAYER_FILE[HEADER_SIZE_WITH_LAYER:-TRAILER_SIZE] == RGBA_FILE[HEADER_SIZE:-TRAILER_SIZE] + LAYER
    assert unpack(LAYER_FILE) == Container(RGBA, bytes.fromhex("deadbeef01020304"), bytes.fromhex("aabbccdd"), LAYER)
    assert peek_header(LAYER_FILE) == RGBA


def test_version_4_damage_is_refused() -> None:
    _refused(LAYER_FILE[:-1], CorruptBitstreamError, f"truncated: {len(LAYER_FILE) - 1} bytes, the header declares")
    _refused(LAYER_FILE[:HEADER_SIZE + 6], CorruptBitstreamError, "a version-4 file has at least 50")
    flipped = bytearray(LAYER_FILE)
    flipped[-TRAILER_SIZE - 1] ^= 1  # in the DCT layer: only the CRC can see it
    _refused(bytes(flipped), CorruptBitstreamError, "checksum mismatch")
    empty = bytearray(RGBA_FILE[:HEADER_SIZE] + b"\0\0\0\0" + RGBA_FILE[HEADER_SIZE:-TRAILER_SIZE])
    empty[4] = 4
    _refused(bytes(empty) + zlib.crc32(bytes(empty)).to_bytes(4, "little"), CorruptBitstreamError,
             "a version-4 file without a DCT layer (such a file is written as version 3)")


def test_truncation_declared_by_header() -> None:
    _refused(RGBA_FILE[:-1], CorruptBitstreamError, f"truncated: {len(RGBA_FILE) - 1} bytes, the header declares 58")


def test_trailing_bytes() -> None:
    _refused(RGBA_FILE + b"\x00\x00", CorruptBitstreamError, "2 trailing bytes")


def test_crc_mismatch() -> None:
    damaged = bytearray(RGBA_FILE)
    damaged[45] ^= 0xFF  # inside the payload
    _refused(bytes(damaged), CorruptBitstreamError, "checksum mismatch")


@pytest.mark.parametrize("name", FILES)
def test_every_truncation_is_refused(name: str) -> None:
    data = FILES[name]
    for size in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:size])


@pytest.mark.parametrize("name", FILES)
def test_every_single_bit_flip_is_refused(name: str) -> None:
    """CRC32 catches every single-bit error; magic, version and lengths are caught before it."""
    data = FILES[name]
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            unpack(bytes(damaged))


# Each edit leaves the total length unchanged and the CRC valid, so only the field check can refuse it.
FIELD_REFUSALS = [
    ("rgba", {"flags": FLAG_ALPHA | 8}, "unknown flag bits 0x08"),
    ("rgba", {"flags": 0xFF}, "unknown flag bits 0xf8"),
    ("rgba", {"coder_id": 0}, "unknown entropy coder id 0"),
    ("rgba", {"coder_id": 1}, "unknown entropy coder id 1"),
    ("rgba", {"coder_id": 2}, "unknown entropy coder id 2"),
    ("rgba", {"coder_id": 3}, "unknown entropy coder id 3"),
    ("rgba", {"coder_id": 5}, "unknown entropy coder id 5"),
    ("rgba", {"coder_id": 255}, "unknown entropy coder id 255"),
    ("rgba", {"table_precision": 0}, "table precision of 0 bits"),
    ("rgba", {"table_precision": 16}, "table precision of 16 bits; this format's is 24"),
    ("rgba", {"table_precision": 33}, "table precision of 33 bits"),
    ("rgba", {"channels": 0}, "0 channels"),
    ("rgba", {"channels": 5}, "5 channels"),
    ("rgba", {"bit_depth": 0}, "bit depth 0"),
    ("rgba", {"bit_depth": 12}, "bit depth 12"),
    ("rgba", {"channels": 3}, "alpha flag is set for a 3-channel image"),
    ("rgba", {"channels": 1}, "alpha flag is set for a 1-channel image"),
    ("rgba", {"flags": FLAG_FROM_16BIT}, "alpha flag is clear for a 4-channel image"),
    ("rgb", {"channels": 2}, "alpha flag is clear for a 2-channel image"),
    ("rgba", {"payload_len": 12, "alpha_len": 0}, "alpha flag is set but the alpha plane is empty"),
    ("rgb", {"payload_len": 4, "alpha_len": 4}, "alpha plane of 4 bytes without the alpha flag"),
    ("rgba", {"payload_len": 0, "alpha_len": 12}, "payload length 0 is not a positive multiple of 4"),
    ("rgba", {"payload_len": 6, "alpha_len": 6}, "payload length 6 is not a positive multiple of 4"),
    ("rgba", {"stages": 0}, "zero coded stages"),
    ("rgba", {"quality": 0}, "quality 0"),
    ("rgba", {"latent_h": 0}, "latent grid 0×40 is empty"),
    ("rgba", {"latent_w": 0}, "latent grid 30×0 is empty"),
    ("rgba", {"width": 0}, "image size 0×480 is empty"),
    ("rgba", {"height": 0}, "image size 640×0 is empty"),
    ("rgba", {"width": MAX_SIDE + 1}, "side limit"),
    ("rgba", {"width": 20_000, "height": 20_000}, "pixel limit"),
]


@pytest.mark.parametrize(("name", "fields", "match"), FIELD_REFUSALS, ids=[m for _, _, m in FIELD_REFUSALS])
def test_field_refusals(name: str, fields: dict[str, int], match: str) -> None:
    data = _edit(FILES[name], **fields)
    _refused(data, CorruptBitstreamError, match)
    with pytest.raises(CorruptBitstreamError, match="^invalid header: "):
        unpack(data)


def test_giant_declared_image_is_refused_without_allocating() -> None:
    data = _edit(RGBA_FILE, width=100_000, height=100_000)
    tracemalloc.start()
    try:
        _refused(data, CorruptBitstreamError, "100000×100000")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_giant_declared_length_is_refused_without_allocating() -> None:
    data = _edit(RGBA_FILE, payload_len=0xFFFF_FFFC, alpha_len=0xFFFF_FFFF)
    tracemalloc.start()
    try:
        _refused(data, CorruptBitstreamError, "truncated: 58 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


PACK_REFUSALS = [
    ({"weights_id": b"short"}, "weights_id"),
    ({"coder_id": 1}, "unknown entropy coder id 1"),
    ({"coder_id": 3}, "unknown entropy coder id 3"),
    ({"table_precision": 16}, "table precision of 16 bits"),
    ({"model_id": 0x10000}, "model_id"),
    ({"width": -1}, "width"),
    ({"stages": 256}, "stages"),
    ({"channels": 5}, "5 channels"),
    ({"channels": 3}, "alpha flag"),
    ({"quality": 0}, "quality 0"),
    ({"width": 100_000, "height": 100_000}, "side limit"),
]


@pytest.mark.parametrize(("change", "match"), PACK_REFUSALS, ids=[m for _, m in PACK_REFUSALS])
def test_pack_refuses_invalid_headers(change: dict[str, object], match: str) -> None:
    header = dataclasses.replace(RGBA, **change)
    with pytest.raises(ValueError, match=match):
        pack(Container(header, b"\x00" * 8, b"\x01"))


@pytest.mark.parametrize(("payload", "alpha", "match"), [
    (b"", b"\x01", "payload length 0"),
    (b"\x00" * 5, b"\x01", "payload length 5"),
    (b"\x00" * 8, b"", "alpha plane is empty"),
], ids=["empty-payload", "odd-payload", "no-alpha"])
def test_pack_refuses_inconsistent_lengths(payload: bytes, alpha: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pack(Container(RGBA, payload, alpha))


# --- files of development builds, and weights the format cannot use -------------------------


def _with_version(data: bytes, version: int) -> bytes:
    body = bytearray(data[:-TRAILER_SIZE])
    body[FIELDS["version"][0]] = version
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("version", DEVELOPMENT_VERSIONS)
def test_a_development_builds_version_is_refused_as_such(version: int) -> None:
    """Versions 1 and 2 (static-table index coders) were written only by builds before the
    first release: their files are sound, so the refusal says what they are and what to do,
    not "damaged", and says it before their length or CRC is looked at."""
    expected = (f"made by a development build of diveq-codec before the first release (format version {version}); "
                f"encode the image again")
    for original in (RGBA_FILE, LAYER_FILE):
        _refused(_with_version(original, version), UnsupportedVersionError, expected)
        unsealed = bytearray(original + b"more")  # another layout: neither its length nor its CRC is checked
        unsealed[4] = version
        _refused(bytes(unsealed), UnsupportedVersionError, expected)


def _real_file(parrots_path: Path, quality: int = 2) -> bytes:
    from diveq_codec.codec.pipeline import encode

    return encode(Image.open(parrots_path).convert("RGB").crop((0, 0, 48, 40)), quality=quality, device="cpu")


def _decode_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes) -> tuple[int, str]:
    """The CLI's exit code and stderr for decoding ``data``."""
    from diveq_codec.codec.cli.app import run_app

    path = tmp_path / "in.dvq"
    path.write_bytes(data)
    code = run_app(["decode", str(path), str(tmp_path / "out.png"), "--device", "cpu", "--force"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("version", DEVELOPMENT_VERSIONS)
def test_a_real_file_of_a_development_version_exits_3(parrots_path: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], version: int) -> None:
    data = _real_file(parrots_path)
    assert data[4] in FORMAT_VERSIONS and data[17] == CODER_INDEX_MODEL
    code, err = _decode_exit(tmp_path, capsys, fuzzing.fix_crc(fuzzing.set_field(data, "version", version)))
    assert code == 3 and f"development build of diveq-codec before the first release (format version {version})" in err
    assert err.count("\n") == 1


def test_a_real_file_with_the_development_coder_id_exits_3(parrots_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Coder 3 (the two-context static tables) was never written with versions 3 and 4: such
    a header is corrupt, one line."""
    data = _real_file(parrots_path)
    code, err = _decode_exit(tmp_path, capsys, fuzzing.fix_crc(fuzzing.set_field(data, "coder_id", 3)))
    assert code == 3 and "invalid header: unknown entropy coder id 3" in err
    assert err.count("\n") == 1


def test_weights_without_an_index_model_are_a_weights_error(parrots_path: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            weights_copy: Path) -> None:
    """Weights exported before the format's coder existed lack its index model: they load
    (their network still chooses indices) but neither encode nor decode can use them
    (exit 4, one line naming the file), rather than writing or reading something else."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from diveq_codec.codec import zoo
    from diveq_codec.codec.errors import WeightsError
    from diveq_codec.codec.index_model import TENSOR_PREFIX
    from diveq_codec.models.weights_file import file_sha256

    data = _real_file(parrots_path)
    card_path = next(weights_copy.glob("*.json"))
    card = json.loads(card_path.read_text())
    file = weights_copy / card["file"]
    with safe_open(str(file), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    dropped = [name for name in tensors if name.startswith(TENSOR_PREFIX)]
    assert dropped
    for name in dropped:
        del tensors[name]
    save_file(tensors, str(file), metadata=metadata)
    card["sha256"] = file_sha256(file)
    card_path.write_text(json.dumps(card))
    zoo.clear_model_cache()
    assert zoo.load_model(card["model_id"]).index_model is None
    with pytest.raises(WeightsError, match=f"weights file {file.name} has no index model"):
        _real_file(parrots_path)
    # The file names the original weights: give it the new id so that only the index model differs.
    renamed = bytes.fromhex(card["sha256"])[:8]
    code, err = _decode_exit(tmp_path, capsys, fuzzing.fix_crc(fuzzing.set_field(data, "weights_id", renamed)))
    assert code == 4 and f"weights file {file.name} has no index model" in err
    assert err.count("\n") == 1
