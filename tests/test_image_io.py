"""codec.image_io: every odd input becomes a SourceImage or a one-line InputError, never a traceback.

All images are generated here with numpy and Pillow (16-bit colour PNGs by hand, since Pillow
cannot write them), so the suite needs no files.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diveq_codec.codec.errors import CorruptBitstreamError, InputError, UsageError
from diveq_codec.codec.image_io import (
    SourceImage,
    alpha_from_bytes,
    alpha_to_bytes,
    encode_image_file,
    read_image,
    restore_image,
)
from diveq_codec.codec.limits import MAX_PIXELS, MAX_SIDE
from diveq_codec.codec.output_formats import format_for

RNG = np.random.default_rng(1234)


def _noise(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _save(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG built by hand (Pillow writes only 16-bit gray): colour type 0, 2, 4 or 6."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched (CRC fixed) to declare width × height."""
    data = bytearray(_save(Image.new("L", (8, 8)), "PNG"))
    body = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:33] = body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
    return bytes(data)


def _check_invariants(source: SourceImage) -> None:
    assert source.rgb.dtype == np.uint8 and source.rgb.ndim == 3 and source.rgb.shape[2] == 3
    assert source.rgb.flags.c_contiguous
    assert source.mode in ("L", "LA", "RGB", "RGBA")
    assert (source.alpha is not None) == (source.mode in ("LA", "RGBA"))
    if source.alpha is not None:
        assert source.alpha.dtype == np.uint8 and source.alpha.shape == source.rgb.shape[:2]
    if source.mode in ("L", "LA"):
        assert (source.rgb == source.rgb[..., :1]).all()
    assert source.bit_depth in (8, 16)
    assert all("\n" not in notice for notice in source.notices)


# --- modes -----------------------------------------------------------------------------------


def test_rgb() -> None:
    pixels = _noise(5, 7, 3)
    source = read_image(_save(Image.fromarray(pixels), "PNG"))
    _check_invariants(source)
    assert (source.mode, source.bit_depth, source.from_palette, source.notices) == ("RGB", 8, False, [])
    assert source.alpha is None
    np.testing.assert_array_equal(source.rgb, pixels)


def test_rgba_keeps_alpha_exactly() -> None:
    pixels = _noise(6, 4, 4)
    source = read_image(_save(Image.fromarray(pixels, "RGBA"), "PNG"))
    _check_invariants(source)
    assert source.mode == "RGBA"
    np.testing.assert_array_equal(source.rgb, pixels[..., :3])
    np.testing.assert_array_equal(source.alpha, pixels[..., 3])


def test_gray_is_replicated() -> None:
    gray = _noise(4, 9)
    source = read_image(_save(Image.fromarray(gray, "L"), "PNG"))
    _check_invariants(source)
    assert source.mode == "L"
    np.testing.assert_array_equal(source.rgb[..., 1], gray)


def test_gray_alpha() -> None:
    planes = _noise(4, 9, 2)
    source = read_image(_save(Image.fromarray(planes, "LA"), "PNG"))
    _check_invariants(source)
    assert source.mode == "LA"
    np.testing.assert_array_equal(source.rgb[..., 2], planes[..., 0])
    np.testing.assert_array_equal(source.alpha, planes[..., 1])


def test_palette_without_transparency_is_rgb() -> None:
    img = Image.fromarray(_noise(8, 8, 3)).quantize(16)
    source = read_image(_save(img, "PNG"))
    _check_invariants(source)
    assert (source.mode, source.from_palette) == ("RGB", True)
    np.testing.assert_array_equal(source.rgb, np.asarray(img.convert("RGB")))


def test_palette_with_transparency_is_rgba() -> None:
    indices = np.arange(64, dtype=np.uint8).reshape(8, 8) % 16
    img = Image.fromarray(indices, "L").convert("P")
    source = read_image(_save(img, "PNG", transparency=3))
    _check_invariants(source)
    assert (source.mode, source.from_palette) == ("RGBA", True)
    np.testing.assert_array_equal(source.alpha, np.where(indices == 3, 0, 255))


def test_bilevel_becomes_gray() -> None:
    bits = _noise(5, 11) > 127
    source = read_image(_save(Image.fromarray(bits), "PNG"))
    _check_invariants(source)
    assert source.mode == "L"
    np.testing.assert_array_equal(source.rgb[..., 0], np.where(bits, 255, 0))


def test_gray_with_transparent_key_gets_alpha() -> None:
    gray = np.array([[5, 6], [7, 5]], dtype=np.uint8)
    source = read_image(_save(Image.fromarray(gray, "L"), "PNG", transparency=5))
    _check_invariants(source)
    assert source.mode == "LA"
    np.testing.assert_array_equal(source.alpha, [[0, 255], [255, 0]])


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (16, 8), (10, 200, 30, 0))
    source = read_image(_save(img, "JPEG", quality=95))
    _check_invariants(source)
    assert source.mode == "RGB" and source.rgb.shape == (8, 16, 3)
    np.testing.assert_allclose(source.rgb.reshape(-1, 3).mean(0), img.convert("RGB").getpixel((0, 0)), atol=4)


def test_premultiplied_gray_alpha_is_unpremultiplied() -> None:
    """A TIFF with associated alpha (ExtraSamples = 1) opens as "La"; Pillow writes only unassociated."""
    data = _save(Image.new("LA", (3, 2), (100, 128)), "TIFF")
    unassociated = struct.pack("<HHII", 0x0152, 3, 1, 2)  # ExtraSamples, SHORT, 1 value: 2
    assert data.count(unassociated) == 1
    source = read_image(data.replace(unassociated, struct.pack("<HHII", 0x0152, 3, 1, 1)))
    _check_invariants(source)
    assert source.mode == "LA"
    assert source.rgb[0, 0, 0] == 199 and source.alpha[0, 0] == 128  # 100 × 255 / 128


def test_16bit_gray_png_is_rounded_to_8_bits() -> None:
    values = np.array([[0, 128, 129, 385], [65535, 32767, 257, 65407]], dtype=np.uint16)
    data = _save(Image.fromarray(values), "PNG")  # Pillow writes I;16 as a 16-bit gray PNG
    source = read_image(data)
    _check_invariants(source)
    assert (source.mode, source.bit_depth) == ("L", 16)
    assert source.notices == ["16-bit input reduced to 8 bits"]
    np.testing.assert_array_equal(source.rgb[..., 0], (values.astype(int) + 128) // 257)


def test_16bit_pgm_is_reduced() -> None:
    values = np.array([[0, 65535, 1000]], dtype=np.uint16)
    source = read_image(_save(Image.fromarray(values), "PPM"))  # Pillow reads it back as mode "I"
    _check_invariants(source)
    assert (source.mode, source.bit_depth) == ("L", 16)
    np.testing.assert_array_equal(source.rgb[0, :, 0], [0, 255, 4])


@pytest.mark.parametrize(("color_type", "channels", "mode"), [(2, 3, "RGB"), (6, 4, "RGBA"), (4, 2, "LA")])
def test_16bit_colour_png_is_flagged(color_type: int, channels: int, mode: str) -> None:
    """Pillow 13 hands these over as 8-bit (high byte), so the depth must come from the IHDR."""
    samples = RNG.integers(0, 65536, (3, 5, channels), dtype=np.uint16)
    source = read_image(_png16(samples, color_type))
    _check_invariants(source)
    assert (source.mode, source.bit_depth) == (mode, 16)
    assert source.notices == ["16-bit input reduced to 8 bits"]
    expected = np.round(samples / 257.0).astype(int)
    if mode == "LA":
        color, wanted = source.rgb[..., 0], expected[..., 0]
    else:
        color, wanted = source.rgb, expected[..., :3]
    assert np.abs(color.astype(int) - wanted).max() <= 1
    if source.alpha is not None:
        assert np.abs(source.alpha.astype(int) - expected[..., -1]).max() <= 1


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # a bright left band: rotated 90° clockwise, it becomes the top band
    exif = Image.Exif()
    exif[0x0112] = 6
    source = read_image(_save(Image.fromarray(pixels), "JPEG", exif=exif, quality=95))
    _check_invariants(source)
    assert source.rgb.shape == (30, 20, 3)
    assert "EXIF orientation applied" in source.notices
    assert source.rgb[:8].mean() > 200 and source.rgb[12:].mean() < 50


def test_no_orientation_no_notice() -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    source = read_image(_save(Image.new("RGB", (6, 4)), "JPEG", exif=exif))
    assert source.rgb.shape == (4, 6, 3) and source.notices == []


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_codes_the_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (5, 4), (value, value, value)) for value in (40, 120, 200)]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, lossless=True)
    source = read_image(data, "anim")
    _check_invariants(source)
    assert source.notices == ["animated image: coding the first of 3 frames"]
    assert source.rgb.shape == (4, 5, 3)
    np.testing.assert_allclose(source.rgb, 40, atol=1)


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (37, 1)])
def test_tiny_sizes(size: tuple[int, int]) -> None:
    pixels = _noise(*size, 3)
    source = read_image(_save(Image.fromarray(pixels), "PNG"))
    _check_invariants(source)
    np.testing.assert_array_equal(source.rgb, pixels)


# --- refusals ----------------------------------------------------------------------------------


def _refused(data: bytes, *fragments: str) -> InputError:
    with pytest.raises(InputError) as caught:
        read_image(data, "pic.dat")
    message = str(caught.value)
    assert "\n" not in message and "pic.dat" in message
    for fragment in fragments:
        assert fragment in message
    return caught.value


def test_zero_bytes() -> None:
    _refused(b"", "empty")


def test_random_bytes() -> None:
    _refused(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a recognised image")


def test_text_file() -> None:
    _refused(b"hello, world\nthis is not an image\n" * 10, "not a recognised image")


def test_truncated_png() -> None:
    data = _save(Image.fromarray(_noise(64, 64, 3)), "PNG")
    _refused(data[: len(data) // 2], "truncated")


def test_truncated_jpeg_mid_scan() -> None:
    data = _save(Image.fromarray(_noise(64, 64, 3)), "JPEG", quality=90)
    start_of_scan = data.index(b"\xff\xda")
    cut = start_of_scan + (len(data) - start_of_scan) // 2
    _refused(data[:cut], "truncated")


@pytest.mark.parametrize(("width", "height", "fragment"), [
    (10_000, 6_000, f"{MAX_PIXELS:,}-pixel limit"),  # over ours, under Pillow's own
    (20_000, 20_000, "image too large"),  # Pillow refuses it while parsing the header
    (MAX_SIDE + 1, 4, "side limit"),
])
def test_bomb_is_refused_before_decoding(width: int, height: int, fragment: str) -> None:
    start = time.perf_counter()
    _refused(_declaring(width, height), fragment)
    assert time.perf_counter() - start < 1.0


def test_pillow_bomb_warning_is_an_error_within_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 12 × 12 = 144: Pillow merely warns
    filters_before = list(warnings.filters)
    _refused(_save(Image.new("L", (12, 12)), "PNG"), "decompression bomb")
    assert warnings.filters == filters_before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]), data=st.data())
def test_damaged_files_give_input_error_or_an_image(fmt: str, data: st.DataObject) -> None:
    """Whatever the damage, the result is a valid SourceImage or an InputError: nothing else."""
    pixels = np.random.default_rng(7).integers(0, 256, (12, 10, 3), dtype=np.uint8)  # same every run
    original = bytearray(_save(Image.fromarray(pixels), fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    damaged = bytes(original[: data.draw(st.integers(0, len(original)))])
    try:
        source = read_image(damaged, "fuzz")
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        _check_invariants(source)


# --- restore -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_restore_round_trip(mode: str) -> None:
    original = Image.fromarray(_noise(7, 5, len(mode)).squeeze(), mode)
    source = read_image(_save(original, "PNG"))
    restored = restore_image(source.rgb, source.alpha, source.mode)
    assert restored.mode == mode
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(original))


def test_restore_rejects_inconsistent_planes() -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        restore_image(rgb, None, "RGBA")
    with pytest.raises(ValueError):
        restore_image(rgb, np.zeros((3, 2), dtype=np.uint8), "LA")
    with pytest.raises(ValueError):
        restore_image(rgb.astype(np.float32), None, "RGB")


# --- alpha plane -------------------------------------------------------------------------------


def test_alpha_round_trip() -> None:
    alpha = _noise(13, 17)
    blob = alpha_to_bytes(alpha)
    np.testing.assert_array_equal(alpha_from_bytes(blob, 17, 13), alpha)
    flat = np.full((300, 400), 255, dtype=np.uint8)
    np.testing.assert_array_equal(alpha_from_bytes(alpha_to_bytes(flat), 400, 300), flat)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "trailing", "too_long", "too_short", "bomb"])
def test_damaged_alpha_is_a_bitstream_error(damage: str) -> None:
    alpha = _noise(10, 10)
    blob = alpha_to_bytes(alpha)
    damaged = {
        "truncated": blob[:-5],
        "garbage": bytes(len(blob)),
        "trailing": blob + b"\x00",
        "too_long": alpha_to_bytes(np.zeros(101, dtype=np.uint8)),
        "too_short": alpha_to_bytes(np.zeros(99, dtype=np.uint8)),
        "bomb": zlib.compress(bytes(1 << 26), 9),
    }[damage]
    with pytest.raises(CorruptBitstreamError, match="alpha plane is damaged"):
        alpha_from_bytes(damaged, 10, 10)


# --- writing images ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), [
    ("out.png", "PNG"), ("OUT.JPG", "JPEG"), ("out.jpeg", "JPEG"), ("out.webp", "WEBP"), ("out.bmp", "BMP"),
    ("out.tif", "TIFF"), ("out.tiff", "TIFF"), ("-", "PNG"),
])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_every_output_format_is_exact_but_jpeg(name: str, fmt: str, mode: str) -> None:
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    original = Image.fromarray(_noise(6, 9, channels) if channels > 1 else _noise(6, 9), mode)
    output = format_for(name)
    if mode in ("LA", "RGBA") and not output.holds_alpha:  # refused, never silently dropped
        with pytest.raises(UsageError, match="alpha"):
            encode_image_file(original, output)
        return
    decoded = Image.open(io.BytesIO(encode_image_file(original, output)))
    assert decoded.format == fmt
    if output.exact:
        np.testing.assert_array_equal(np.asarray(decoded.convert(mode)), np.asarray(original))
        # WebP has no gray modes: gray is stored as equal RGB channels, exactly.
        assert decoded.mode == mode or (fmt, decoded.mode, mode) in {("WEBP", "RGB", "L"), ("WEBP", "RGBA", "LA")}


def test_jpeg_quality_is_the_users() -> None:
    original = Image.fromarray(_noise(32, 32, 3))
    small = encode_image_file(original, format_for("a.jpg"), jpeg_quality=10)
    large = encode_image_file(original, format_for("a.jpg"), jpeg_quality=100)
    assert len(small) < len(large)


def test_png_is_written_at_the_chosen_zlib_level() -> None:
    data = encode_image_file(Image.fromarray(_noise(40, 40, 3)), format_for("a.png"))
    idat = data.index(b"IDAT") + 4
    # zlib's FLEVEL bits (RFC 1950): 1 is "fast" (levels 2-5); Pillow's default 6 writes 2.
    assert data[idat + 1] >> 6 == 1


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.gif", "out.ppm"])
def test_unknown_extensions_are_usage_errors_naming_the_supported_ones(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        format_for(name)
    assert ".png" in str(caught.value) and ".webp" in str(caught.value) and "\n" not in str(caught.value)
    assert format_for(name, "webp").name == "webp"  # --format decides whatever the name
