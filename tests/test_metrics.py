"""PSNR and bpp as the field reports them; PSNR summed exactly in strips (no full-size copies)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diveq_codec.codec import metrics
from diveq_codec.codec.metrics import bits_per_pixel, psnr


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (600, 500, 3), (metrics.STRIP_ROWS + 1, 3, 3)])
def test_psnr_equals_the_float64_mean_formula(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    a, b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert psnr(a, b) == 10 * math.log10(255**2 / mse)
    assert psnr(a, a) == math.inf


def test_psnr_refuses_other_shapes_and_bpp_counts_every_byte() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    assert bits_per_pixel(100, 20, 10) == 4.0
