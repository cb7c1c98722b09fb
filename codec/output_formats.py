"""The image formats ``decode`` writes, chosen by the output's extension (or ``--format``).

PNG, lossless WebP, TIFF and BMP hold the decoded pixels exactly; JPEG is lossy and says so.
Resolved from the name alone, before any work, so a typo costs nothing. Imports no imaging
library: the command line answers here without loading one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from diveq_codec.codec.errors import UsageError

STDIO = "-"
DEFAULT_JPEG_QUALITY = 95


@dataclass(frozen=True)
class OutputFormat:
    name: str  # what --format takes
    pillow_format: str
    extension: str  # what a batch names its outputs with
    exact: bool  # the written pixels are the decoded pixels
    holds_alpha: bool


FORMATS = {f.name: f for f in (
    OutputFormat("png", "PNG", ".png", exact=True, holds_alpha=True),
    OutputFormat("webp", "WEBP", ".webp", exact=True, holds_alpha=True),
    OutputFormat("tiff", "TIFF", ".tiff", exact=True, holds_alpha=True),
    # Pillow writes RGBA as a 32-bit BMP that it (and most readers) read back without alpha.
    OutputFormat("bmp", "BMP", ".bmp", exact=True, holds_alpha=False),
    OutputFormat("jpeg", "JPEG", ".jpg", exact=False, holds_alpha=False),
)}
EXTENSIONS = {".png": "png", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
              ".jpg": "jpeg", ".jpeg": "jpeg"}
SUPPORTED_TEXT = ", ".join(sorted(EXTENSIONS))


def format_named(name: str) -> OutputFormat:
    """The format ``--format NAME`` asks for."""
    key = name.lower().lstrip(".")
    key = EXTENSIONS.get(f".{key}", key)
    if key not in FORMATS:
        raise UsageError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[key]


def format_for(path: str, override: str | None = None) -> OutputFormat:
    """The format an output path gets: ``override`` if given, PNG for stdout, else by extension."""
    if override is not None:
        return format_named(override)
    if path == STDIO:
        return FORMATS["png"]
    suffix = PurePath(path).suffix.lower()
    if suffix not in EXTENSIONS:
        shown = f"extension {suffix!r}" if suffix else "no extension"
        raise UsageError(f"{path}: {shown} is not an image format decode writes; use one of {SUPPORTED_TEXT}")
    return FORMATS[EXTENSIONS[suffix]]


def check_alpha_fits(fmt: OutputFormat, has_alpha: bool, path: str) -> None:
    """Refuse, before decoding, to drop an alpha channel the format cannot hold."""
    if has_alpha and not fmt.holds_alpha:
        raise UsageError(f"{path}: {fmt.name.upper()} cannot hold the image's alpha channel; "
                         f"use .png, .webp or .tiff")
