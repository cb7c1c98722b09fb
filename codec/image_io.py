"""Images in and out: any Pillow-readable file to the 8-bit planes the model codes, and back.

The reader is the codec's trust boundary for images. Everything it cannot use becomes an
InputError with a one-line message (never a traceback), and size limits are enforced from the
header *before* pixels are decoded, so a small file declaring a huge image costs nothing.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, features

from diveq_codec.codec.errors import CorruptBitstreamError, InputError, OutputError, UsageError
from diveq_codec.codec.limits import check_dimensions
from diveq_codec.codec.output_formats import DEFAULT_JPEG_QUALITY, OutputFormat

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REDUCED_16 = "16-bit input reduced to 8 bits"
ICC_DROPPED = ("ICC colour profile not kept: the samples are coded as stored and decode untagged "
               "(viewers then assume sRGB)")
# zlib level of decoded PNGs (Pillow's default is 6): 2.2-2.8x faster to write and at most
# 0.2 % larger, on decoded training photos and a 12 MP decode (experiments/png_level).
PNG_COMPRESS_LEVEL = 3
# Modes whose colours Pillow converts to RGB by formula; the note names the space.
_OTHER_COLOUR_SPACES = {"LAB": "CIELAB", "HSV": "HSV", "YCbCr": "YCbCr", "CMYK": "CMYK"}

# What Pillow raises on damaged or hostile input (found by fuzzing: its plugins are not
# consistent). The set is wide, so it wraps only opening, decoding and mode conversion.
_PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, NotImplementedError,
    struct.error, zlib.error, Image.DecompressionBombError, Image.DecompressionBombWarning,
)

@dataclass
class SourceImage:
    """An input image reduced to what the model codes, plus what decoding must restore."""

    rgb: np.ndarray  # uint8 (H, W, 3), C-contiguous; gray sources are replicated to 3 channels
    alpha: np.ndarray | None  # uint8 (H, W), coded losslessly beside the model's output
    mode: str  # "L", "LA", "RGB" or "RGBA": the mode decoding restores
    bit_depth: int  # 8 or 16: bits per sample of the source, recorded in the header
    from_palette: bool
    notices: list[str] = field(default_factory=list)  # one-line, human-facing


def _reason(exc: BaseException) -> str:
    """A short one-line reason from a Pillow/zlib exception (its messages can span lines)."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _png_header(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None when data is not a PNG.

    Pillow 13 silently reduces 16-bit RGB(A) and gray+alpha PNGs to 8 bits (keeping the high
    byte), so the header is the only place that says the source had 16 bits per sample.
    """
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    return data[24], data[25]


def _from_high_depth_gray(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """8-bit gray (and alpha from a tRNS key) from an I;16* image, or an I image whose samples
    are 0..65535 (Pillow opens 16-bit PGM as I): v/257 rounded maps 0..65535 onto 0..255."""
    values = np.asarray(img)
    alpha = None
    key = img.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
    wide = np.nan_to_num(values.astype(np.float64), nan=0.0)
    gray = np.clip(np.floor((wide + 128.0) / 257.0), 0, 255).astype(np.uint8)
    return gray, alpha


def _canonical(
    img: Image.Image, png: tuple[int, int] | None
) -> tuple[str, np.ndarray, np.ndarray | None, int, list[str]]:
    """(mode, planes, alpha, bit depth, notices) for a loaded image of any Pillow mode.

    planes is (H, W) for L/LA and (H, W, 3) otherwise. The decision is by mode so that what
    decoding restores matches what the user gave: gray stays gray, alpha stays alpha.
    """
    mode = img.mode
    has_key = img.info.get("transparency") is not None
    notices = [ICC_DROPPED] if img.info.get("icc_profile") else []
    if mode == "F":
        raise InputError("32-bit float images are not supported (their range is not defined); "
                         "save it with 8 or 16 bits per sample")
    if mode == "I":
        low, high = img.getextrema()
        if low < 0 or high > 65535:
            raise InputError(f"32-bit integer samples from {low} to {high} do not fit 16 bits; "
                             f"save it with 8 or 16 bits per sample")
    if mode.startswith("I;16") or mode == "I":
        gray, alpha = _from_high_depth_gray(img)
        notice = "32-bit integer input (0..65535) reduced to 8 bits" if mode == "I" else REDUCED_16
        return ("LA" if alpha is not None else "L"), gray, alpha, 16, notices + [notice]
    bit_depth = 16 if png is not None and png[0] == 16 else 8
    notices += [REDUCED_16] if bit_depth == 16 else []
    if mode in _OTHER_COLOUR_SPACES:
        notices.append(f"{_OTHER_COLOUR_SPACES[mode]} image converted to RGB (Pillow's conversion, no colour profile)")
        mode = "RGB"
    if png is not None and png[1] == 4 and mode == "RGBA":
        mode = "LA"  # a 16-bit gray+alpha PNG, which Pillow widens to RGBA with R = G = B
    if mode == "P":
        mode = "RGBA" if has_key else "RGB"
    elif mode in ("1", "L"):
        mode = "LA" if has_key and mode == "L" else "L"
    elif mode == "La":
        mode = "LA"  # convert() un-premultiplies
    elif mode == "RGB" and has_key:
        mode = "RGBA"
    elif mode not in ("LA", "RGB", "RGBA"):
        mode = "RGBA" if mode in ("PA", "RGBa") else "RGB"  # RGBa: convert() un-premultiplies
    converted = img if img.mode == mode else img.convert(mode)
    planes = np.asarray(converted)
    if mode == "L":
        return mode, planes, None, bit_depth, notices
    if mode == "LA":
        return mode, planes[..., 0], planes[..., 1], bit_depth, notices
    if mode == "RGB":
        return mode, planes, None, bit_depth, notices
    return mode, planes[..., :3], planes[..., 3], bit_depth, notices


def read_image(data: bytes, name: str = "input") -> SourceImage:
    """Decode image bytes into a SourceImage, or raise InputError with a one-line reason.

    Warning filters change for the duration of the call only: Pillow's DecompressionBombWarning
    becomes an error, so its own guard agrees with ours instead of letting a warned-about image
    through.
    """
    if not data:
        raise InputError(f"cannot read {name}: the file is empty")
    png = _png_header(data)
    notices: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Pillow warns about damaged metadata (e.g. "Corrupt EXIF data") on stderr; the user gets
        # our one-line result instead, so those multi-line warnings are noise.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            img = Image.open(io.BytesIO(data), formats=None)
        except Image.UnidentifiedImageError:
            raise InputError(f"cannot read {name}: not a recognised image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow checks its own limit while parsing the header, before ours can run.
            raise InputError(f"{name}: image too large: {_reason(exc)}") from None
        except _PILLOW_ERRORS as exc:
            raise InputError(f"cannot read {name}: {_reason(exc)}") from None
        return _to_source(img, png, name, notices)


def source_from_image(img: Image.Image, name: str = "image") -> SourceImage:
    """A PIL image in any mode (the Python API's input), read like a file of that mode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return _to_source(img, None, name, [])


def _to_source(img: Image.Image, png: tuple[int, int] | None, name: str, notices: list[str]) -> SourceImage:
    problem = check_dimensions(img.width, img.height)
    if problem is not None:
        raise InputError(f"{name}: {problem}")
    try:
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            img.seek(0)
            notices.append(f"animated image: coding the first of {frames} frames")
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        if orientation in range(2, 9):
            img = ImageOps.exif_transpose(img)
            notices.append("EXIF orientation applied")
        mode, planes, alpha, bit_depth, mode_notices = _canonical(img, png)
    except _PILLOW_ERRORS as exc:
        raise InputError(f"cannot read {name}: {_reason(exc)}") from None
    rgb = np.repeat(planes[..., None], 3, axis=2) if planes.ndim == 2 else planes
    return SourceImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.uint8),
        alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.uint8),
        mode=mode,
        bit_depth=bit_depth,
        from_palette=img.mode in ("P", "PA"),
        notices=notices + mode_notices,
    )


def restore_image(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """The decoded planes as a PIL image in the source's mode ("L", "LA", "RGB" or "RGBA")."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    wants_alpha = mode in ("LA", "RGBA")
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"cannot restore mode {mode!r}")
    if wants_alpha != (alpha is not None):
        raise ValueError(f"mode {mode} {'needs' if wants_alpha else 'takes no'} alpha plane")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]):
        raise ValueError(f"alpha must be uint8 {rgb.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if alpha is None:
        image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        return image.convert("L") if mode == "L" else image
    image = Image.fromarray(np.ascontiguousarray(np.dstack([rgb, alpha])), "RGBA")
    return image.convert("LA") if mode == "LA" else image


def encode_image_file(image: Image.Image, fmt: OutputFormat, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """The image encoded as ``fmt`` (codec/output_formats.py), as bytes to write atomically.

    Every format but JPEG keeps the pixels exactly; a mode the format cannot hold (alpha in
    JPEG or BMP) is refused rather than silently dropped.
    """
    if image.mode in ("LA", "RGBA") and not fmt.holds_alpha:
        raise UsageError(f"{fmt.name.upper()} cannot hold the image's alpha channel ({image.mode}); "
                         f"use .png, .webp or .tiff")
    options: dict[str, object] = {}
    if fmt.name == "png":
        options = {"compress_level": PNG_COMPRESS_LEVEL}
    elif fmt.name == "jpeg":
        options = {"quality": jpeg_quality}
    elif fmt.name == "webp":
        options = {"lossless": True, "exact": True}  # exact: keep colour under transparent pixels
    elif fmt.name == "tiff":
        options = {"compression": "tiff_adobe_deflate"} if features.check("libtiff") else {}
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt.pillow_format, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise OutputError(f"cannot write a {image.mode} image as {fmt.name.upper()} ({_reason(exc)}); "
                          f"use .png or .tiff") from None
    return buf.getvalue()


def alpha_to_bytes(alpha: np.ndarray) -> bytes:
    """The alpha plane deflated at level 9: it is coded losslessly, so size is all that varies."""
    return zlib.compress(np.ascontiguousarray(alpha, dtype=np.uint8).tobytes(), 9)


def alpha_from_bytes(blob: bytes, width: int, height: int) -> np.ndarray:
    """Inflate an alpha plane, never producing more than width × height bytes.

    The output cap makes a zip bomb in a hostile .dvq harmless; a short, long, unterminated or
    trailing-garbage stream is a damaged file (CorruptBitstreamError), not a bad user input.
    """
    expected = width * height
    if expected < 1:  # max_length=0 would mean "unlimited" to zlib
        raise CorruptBitstreamError("alpha plane is damaged")
    inflater = zlib.decompressobj()
    try:
        plane = inflater.decompress(blob, expected)
        if not inflater.eof and len(plane) == expected:
            # Exactly full: the end-of-stream marker may not have been read yet. Anything it
            # yields beyond the plane means the stream is too long.
            plane += inflater.decompress(inflater.unconsumed_tail, 1)
    except zlib.error:
        raise CorruptBitstreamError("alpha plane is damaged") from None
    if len(plane) != expected or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        raise CorruptBitstreamError("alpha plane is damaged")
    return np.frombuffer(plane, dtype=np.uint8).reshape(height, width).copy()
