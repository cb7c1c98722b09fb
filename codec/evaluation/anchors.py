"""Classical codecs through Pillow, measured the way we measure ourselves.

Each anchor encodes an RGB image to bytes in memory, decodes those bytes, and reports
bpp (all bytes × 8 / pixels, container included), PSNR-RGB on the 8-bit decoded image,
MS-SSIM, and the encode/decode wall time.

Sweeps (the "quality" of a row is the codec's own parameter):

* ``jpeg``: Pillow JPEG, quality 1 and 5…95 in steps of 5 (the published CompressAI
  sweep), Pillow defaults otherwise (4:2:0, baseline, standard tables). Quality 1 adds
  the lowest rate JPEG reaches (qualities 1–3 clip nearly every table entry at 255 and give
  nearly the same file).
* ``webp``: Pillow lossy WebP, quality 0…95 (method 4, the default).
* ``jpeg2000``: Pillow/OpenJPEG, ``irreversible=True`` (9/7 wavelet), ``mct=1`` (colour
  transform; without it PSNR is ~3.7 dB worse), ``quality_mode="rates"`` with one layer
  at compression ratios 10…190 (the published sweep: 24/ratio bpp, 2.4…0.13) and on to
  800 (0.03 bpp). Written as a raw J2K codestream (``no_jp2=True``), the smallest file a
  decoder accepts.
* ``avif``: Pillow's AVIF plugin (libavif) where ``PIL.features.check("avif")``, quality
  0…90, default speed and subsampling (4:2:0).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, features

from diveq_codec.codec.evaluation.msssim import ms_ssim
from diveq_codec.codec.metrics import bits_per_pixel, psnr


@dataclass(frozen=True)
class Anchor:
    key: str  # as given to --anchors and used in file names
    name: str  # "name" of the results JSON
    description: str
    qualities: tuple[int, ...]
    feature: str  # PIL.features name that must be present
    _save: Callable[[Image.Image, io.BytesIO, int], None]

    def available(self) -> bool:
        return bool(features.check(self.feature))

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buf = io.BytesIO()
        self._save(image, buf, quality)
        return buf.getvalue()


def _jpeg(image: Image.Image, buf: io.BytesIO, q: int) -> None:
    image.save(buf, format="JPEG", quality=q)


def _webp(image: Image.Image, buf: io.BytesIO, q: int) -> None:
    image.save(buf, format="WEBP", quality=q, lossless=False)


def _jpeg2000(image: Image.Image, buf: io.BytesIO, ratio: int) -> None:
    image.save(buf, format="JPEG2000", irreversible=True, mct=1, quality_mode="rates",
               quality_layers=[ratio], no_jp2=True)


def _avif(image: Image.Image, buf: io.BytesIO, q: int) -> None:
    image.save(buf, format="AVIF", quality=q)


ANCHORS: dict[str, Anchor] = {
    a.key: a
    for a in (
        Anchor("jpeg", "JPEG", "JPEG via Pillow (libjpeg), 4:2:0, quality sweep", (1, *range(5, 100, 5)),
               "jpg", _jpeg),
        Anchor("webp", "WebP", "lossy WebP via Pillow (libwebp), quality sweep", tuple(range(0, 100, 5)),
               "webp", _webp),
        Anchor("jpeg2000", "JPEG2000", "JPEG 2000 via Pillow (OpenJPEG), 9/7 wavelet, mct=1, "
               "compression-ratio sweep (quality = ratio)",
               (*range(10, 200, 10), 240, 320, 400, 560, 800), "jpg_2000", _jpeg2000),
        Anchor("avif", "AVIF", "AVIF via Pillow (libavif), default speed, 4:2:0, quality sweep",
               tuple(range(0, 100, 10)), "avif", _avif),
    )
}


def resolve_anchors(spec: str | None) -> tuple[list[Anchor], list[str]]:
    """Anchors for ``--anchors``: None = every available one, "none", or a comma list.

    Returns the anchors and notes about default ones skipped. Asking explicitly for an
    unknown or unavailable anchor is a ValueError (a usage error).
    """
    notes: list[str] = []
    if spec is None:
        chosen = []
        for anchor in ANCHORS.values():
            if anchor.available():
                chosen.append(anchor)
            else:
                notes.append(f"anchor {anchor.key} skipped: this Pillow has no {anchor.feature} support")
        return chosen, notes
    keys = [k.strip().lower() for k in spec.split(",") if k.strip()]
    if keys in ([], ["none"]):
        return [], notes
    chosen = []
    for key in keys:
        if key not in ANCHORS:
            raise ValueError(f"unknown anchor {key!r}; choose from {', '.join(ANCHORS)} or none")
        anchor = ANCHORS[key]
        if not anchor.available():
            raise ValueError(f"anchor {key} is not available: this Pillow has no {anchor.feature} support")
        if anchor not in chosen:
            chosen.append(anchor)
    return chosen, notes


@dataclass(frozen=True)
class Measurement:
    num_bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_s: float
    decode_s: float


def measure_decoded(rgb: np.ndarray, data: bytes, decoded: Image.Image, encode_s: float,
                    decode_s: float) -> Measurement:
    """Quality figures of a decoded image against the uint8 H×W×3 original."""
    out = np.asarray(decoded.convert("RGB"))
    if out.shape != rgb.shape:
        raise ValueError(f"decoded image is {out.shape[1]}×{out.shape[0]}, expected {rgb.shape[1]}×{rgb.shape[0]}")
    height, width = rgb.shape[:2]
    return Measurement(len(data), bits_per_pixel(len(data), width, height), psnr(rgb, out), ms_ssim(rgb, out),
                       encode_s, decode_s)


def decode_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def measure(anchor: Anchor, rgb: np.ndarray, quality: int) -> Measurement:
    """Encode ``rgb`` (uint8 H×W×3) at ``quality``, decode it back, measure both ways."""
    image = Image.fromarray(rgb, "RGB")
    start = time.perf_counter()
    data = anchor.encode(image, quality)
    encoded = time.perf_counter()
    decoded = decode_bytes(data).convert("RGB")
    done = time.perf_counter()
    return measure_decoded(rgb, data, decoded, encoded - start, done - encoded)
