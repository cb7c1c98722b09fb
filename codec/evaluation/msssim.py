"""MS-SSIM (Wang, Simoncelli & Bovik 2003) of 8-bit images, as learned-codec papers report it.

The numbers are those of the ``pytorch-msssim`` package that CompressAI's evaluation uses
(``ms_ssim(X, Y, data_range=255)`` with its defaults: 5 scales, Gaussian window 11, σ 1.5,
weights 0.0448/0.2856/0.3001/0.2363/0.1333, K = 0.01/0.03, valid filtering, 2×2 average
pooling between scales, per-plane product of the scales, then the mean over the planes):
the "ms-ssim-rgb" of CompressAI's results files. The tests check agreement with that
package to 1e-6.

Why not call the package: on this project's 2-core CPUs its grouped float convolutions
take 0.7–4 s for one 768×512 image; the same algorithm with ``scipy.ndimage``'s separable
1-D filters in float64 takes about 0.1–0.25 s, which decides whether a Kodak sweep over
five codecs takes minutes or an hour. (scipy comes with the ``eval`` extra and is imported
only when MS-SSIM is computed.)

Five scales with an 11-tap window need the short side to be at least
:data:`MIN_SIDE` = (11 − 1)·2⁴ + 1 = 161 pixels (the coarsest scale must still hold one
window). For smaller images :func:`ms_ssim` returns NaN: fewer scales or a smaller
window would give numbers not comparable with anyone else's MS-SSIM.

Like the package, a side of odd length is pooled with one implicit zero row/column in
front (``avg_pool2d(padding=1)``, zeros counted); Kodak's 768×512 never hits this.
"""

from __future__ import annotations

import functools
import math

import numpy as np

WIN_SIZE = 11
WIN_SIGMA = 1.5
WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
MIN_SIDE = (WIN_SIZE - 1) * 2 ** (len(WEIGHTS) - 1) + 1  # 161


@functools.cache
def _window() -> np.ndarray:
    # Made in float32 with the package's own torch operations, then widened: the results then
    # agree with it (and so with CompressAI's published MS-SSIM) to ~1e-15 instead of ~1e-6.
    import torch

    coords = torch.arange(WIN_SIZE, dtype=torch.float)
    coords -= WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * WIN_SIGMA**2))
    g /= g.sum()
    return g.numpy().astype(np.float64)


_HALF = WIN_SIZE // 2


def _blur(maps: np.ndarray) -> np.ndarray:
    """Gaussian filter over the last two axes, 'valid' part only (no padding effects)."""
    from scipy.ndimage import correlate1d

    window = _window()
    out = correlate1d(maps, window, axis=-2, mode="constant")[..., _HALF:-_HALF, :]
    return correlate1d(out, window, axis=-1, mode="constant")[..., _HALF:-_HALF]


def _pool(x: np.ndarray) -> np.ndarray:
    """2×2 average pooling with avg_pool2d's padding=(h % 2, w % 2), zeros included."""
    ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
    if ph or pw:
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)])
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * h, : 2 * w]
    return x.reshape(*x.shape[:-2], h, 2, w, 2).mean(axis=(-3, -1))


def _ssim_cs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-plane mean SSIM and contrast-structure term; x, y are (C, H, W) float64."""
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_x, mu_y, xx, yy, xy = _blur(np.stack([x, y, x * x, y * y, x * y]))
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    cs_map = (2 * (xy - mu_xy) + c2) / ((xx - mu_xx) + (yy - mu_yy) + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    return ssim_map.mean(axis=(-2, -1)), cs_map.mean(axis=(-2, -1))


def _planes(image: np.ndarray) -> np.ndarray:
    """uint8 H×W or H×W×C → float64 (C, H, W)."""
    if image.dtype != np.uint8:
        raise ValueError(f"MS-SSIM expects uint8 images, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"MS-SSIM expects H×W or H×W×C images, got shape {image.shape}")
    return np.moveaxis(image, -1, 0).astype(np.float64)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM in [0, 1] of two uint8 images (H×W or H×W×C) of the same shape.

    NaN when the short side is under :data:`MIN_SIDE` (161) pixels.
    """
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {decoded.shape}")
    if reference.ndim < 2 or min(reference.shape[:2]) < MIN_SIDE:
        return math.nan
    x, y = _planes(reference), _planes(decoded)
    levels = []
    for level in range(len(WEIGHTS)):
        ssim, cs = _ssim_cs(x, y)
        if level < len(WEIGHTS) - 1:
            levels.append(np.maximum(cs, 0.0))
            x, y = _pool(x), _pool(y)
    levels.append(np.maximum(ssim, 0.0))
    per_plane = np.prod(np.stack(levels) ** np.asarray(WEIGHTS)[:, None], axis=0)
    return float(per_plane.mean())


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on the dB scale papers plot: −10·log10(1 − MS-SSIM)."""
    if not math.isfinite(value):
        return math.nan
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)
