"""Every Pillow mode has a stated result (docs/input-images.md): coded as it is, converted with
a note, or refused with exit 5; alpha is never silently lost."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from diveq_codec.codec.errors import InputError
from diveq_codec.codec.image_io import ICC_DROPPED, read_image, source_from_image

RGB = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)


def stored(image: Image.Image, fmt: str = "TIFF", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def colour(mode: str) -> Image.Image:
    return Image.fromarray(RGB).convert(mode)


# mode -> (how it is stored, the mode the decoder restores, the note, whether alpha is coded)
CASES = {
    "1": (lambda: colour("1"), "L", None),
    "L": (lambda: colour("L"), "L", None),
    "LA": (lambda: colour("LA"), "LA", None),
    "P": (lambda: colour("P"), "RGB", None),
    "PA": (lambda: Image.fromarray(RGB).convert("P").convert("PA"), "RGBA", None),
    "RGB": (lambda: colour("RGB"), "RGB", None),
    "RGBA": (lambda: colour("RGBA"), "RGBA", None),
    "RGBX": (lambda: colour("RGBX"), "RGB", None),
    "RGBa": (lambda: colour("RGBa"), "RGBA", None),
    "CMYK": (lambda: colour("CMYK"), "RGB", "CMYK image converted to RGB"),
    "YCbCr": (lambda: colour("YCbCr"), "RGB", "YCbCr image converted to RGB"),
    "LAB": (lambda: colour("LAB"), "RGB", "CIELAB image converted to RGB"),
    "HSV": (lambda: colour("HSV"), "RGB", "HSV image converted to RGB"),
    "I;16": (lambda: Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "L", "16-bit input reduced to 8 bits"),
    "I;16B": (lambda: Image.fromarray(RGB[..., 0].astype(np.uint16) * 257).convert("I;16B"), "L",
              "16-bit input reduced to 8 bits"),
    "I": (lambda: Image.fromarray(RGB[..., 0].astype(np.int32) * 257), "L", "32-bit integer input"),
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_each_mode_has_a_stated_result(mode: str) -> None:
    make, restored, note = CASES[mode]
    image = make()
    assert image.mode == mode
    source = source_from_image(image, "x")  # what the Python API is given; files below

    assert source.mode == restored
    notices = [n for n in source.notices if n != ICC_DROPPED]  # Pillow's LAB carries a LAB profile
    if note is None:
        assert notices == []
    else:
        assert len(notices) == 1 and notices[0].startswith(note)
    if restored in ("LA", "RGBA"):
        expected = np.asarray(image.convert("RGBA" if restored == "RGBA" else "LA"))[..., -1]
        np.testing.assert_array_equal(source.alpha, expected)  # alpha coded exactly, never dropped
    if mode == "LAB":  # its a* band is colour, not alpha
        assert source.alpha is None


def test_lab_tiff_is_not_taken_for_rgba() -> None:
    source = read_image(stored(colour("LAB")), "lab.tif")
    assert source.mode == "RGB" and source.alpha is None


@pytest.mark.parametrize("values, words", [
    (np.array([[-5, 10]], dtype=np.int32), "-5 to 10 do not fit 16 bits"),
    (np.array([[0, 70000]], dtype=np.int32), "0 to 70000 do not fit 16 bits"),
])
def test_32_bit_integers_outside_16_bits_are_refused(values: np.ndarray, words: str) -> None:
    with pytest.raises(InputError, match=words):
        read_image(stored(Image.fromarray(values)), "wide.tif")


def test_float_images_are_refused() -> None:
    with pytest.raises(InputError, match="32-bit float images are not supported"):
        read_image(stored(Image.fromarray(np.ones((3, 3), dtype=np.float32))), "float.tif")


def test_an_icc_profile_is_dropped_with_a_note() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = read_image(stored(colour("RGB"), "PNG", icc_profile=profile), "tagged.png")
    assert source.notices == [ICC_DROPPED]
    np.testing.assert_array_equal(source.rgb, RGB)  # the samples as stored
