"""Quality and rate measures, computed the way the field reports them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of the same shape (peak 255); inf when identical."""
    import numpy as np  # here, not at the top: `info` reports bpp without loading numpy

    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {decoded.shape}")
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """Whole-file rate: every byte of the file, header and checksum included."""
    return num_bytes * 8.0 / (width * height)
