"""The pixel side of the DCT layer (codec/dct_layer.py): the colour rotation, the 8×8 blocks
and their orthonormal DCT in zigzag order, the quantiser and the reconstruction.

Both sides run these in float64 and round only at the end, so the pixels a file decodes to
agree across machines to float noise, as the network's own output does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import torch

BLOCK = 8
COEFFICIENTS = BLOCK * BLOCK
# Blocks per strip of the transforms, in whole block rows (at least one). The transforms hold
# about ten float64 temporaries of a strip's size: 8000 pixels wide, strips of 64 block rows
# took 0.6 GB. Every block is transformed on its own (the forward product's rows gave the
# same values in strips of 16 and 64 rows), so the strips change no value.
STRIP_BLOCKS = 8192


def _orthonormal_dct(n: int) -> np.ndarray:
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis


_DCT = _orthonormal_dct(BLOCK)
# An orthonormal colour rotation (luma-like sum, two differences): it concentrates the
# difference's energy in the first channel without changing squared errors.
_ROTATION = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
_ROTATION /= np.sqrt((_ROTATION**2).sum(axis=1, keepdims=True))
# Zigzag order of the 64 frequencies (low to high), as indices into a row-major 8×8 block.
_ZIGZAG = np.array([u * BLOCK + v for u, v in sorted(
    ((u, v) for u in range(BLOCK) for v in range(BLOCK)),
    key=lambda uv: (uv[0] + uv[1], uv[1] if (uv[0] + uv[1]) % 2 else uv[0]))])


def block_grid(height: int, width: int) -> tuple[int, int]:
    """Block rows and columns of an image (its edges padded to whole blocks)."""
    return -(-height // BLOCK), -(-width // BLOCK)


def strips(height: int, width: int) -> Iterator[tuple[slice, int, int]]:
    """The strips of about STRIP_BLOCKS blocks the transforms work in, so that their float
    temporaries stay a strip's size on a large image: each strip's blocks (a slice of the
    raster order) and its pixel rows (top, bottom)."""
    cols = block_grid(height, width)[1]
    block_rows = max(1, STRIP_BLOCKS // cols)
    rows, per_strip = block_rows * BLOCK, block_rows * cols
    for index, top in enumerate(range(0, height, rows)):
        yield slice(index * per_strip, (index + 1) * per_strip), top, min(top + rows, height)


@functools.cache
def _forward_matrix(channels: int) -> np.ndarray:
    """The colour rotation, the 2-D DCT and the zigzag order as one (C·64, C·64) matrix, rows
    (channel, zigzag frequency), columns (plane, pixel of the block in raster order): applied
    to a strip's blocks as one matrix product, it is 2–3 times faster than the three steps
    apart. Orthonormal, so its transpose is the inverse (_inverse_matrix)."""
    rotation = _ROTATION if channels == 3 else np.ones((1, 1))
    return np.kron(rotation, np.kron(_DCT, _DCT)[_ZIGZAG])


def forward_blocks(planes: np.ndarray) -> torch.Tensor:
    """(h, W) or (h, W, 3) float planes → (C, 64, blocks) coefficients of the colour-rotated
    planes' DCT in zigzag order, frequency-major; edges padded by repetition."""
    pixels = planes.reshape(*planes.shape[:2], -1)
    height, width, count = pixels.shape
    if height % BLOCK or width % BLOCK:
        pixels = np.pad(pixels, ((0, -height % BLOCK), (0, -width % BLOCK), (0, 0)), mode="edge")
    rows, cols = pixels.shape[0] // BLOCK, pixels.shape[1] // BLOCK
    # Blocks as rows, reordered by torch (on both cores); torch's product, not numpy's:
    # OpenBLAS's threads, which numpy would wake, keep spinning after the call and slowed the
    # network that runs next by a third (docs/results.md)
    tiles = torch.from_numpy(pixels).view(rows, BLOCK, cols, BLOCK, count).permute(0, 2, 4, 1, 3)
    coefficients = tiles.reshape(rows * cols, count * COEFFICIENTS) @ torch.from_numpy(_forward_matrix(count).T)
    # Transposed after the product, which stays the one that chose every file's quotients.
    return coefficients.t().contiguous().view(count, COEFFICIENTS, rows * cols)


@functools.cache
def _inverse_matrix(channels: int) -> torch.Tensor:
    """forward_blocks undone: (plane · pixel of the block, channel · zigzag frequency)."""
    return torch.from_numpy(np.ascontiguousarray(_forward_matrix(channels).T))


def inverse_blocks(coefficients: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Inverse of forward_blocks for a strip ``height`` pixels high: (C, 64, blocks)
    coefficients → (h, W, C) float64 planes."""
    count = coefficients.shape[0]
    rows, cols = block_grid(height, width)
    # One product with torch's threads, then a single reordering of the pixels: the three
    # steps apart (8×8 products per block, the colour rotation) took three times as long.
    pixels = _inverse_matrix(count) @ torch.from_numpy(coefficients.reshape(count * COEFFICIENTS, rows * cols))
    planes = pixels.view(count, BLOCK, BLOCK, rows, cols).permute(3, 1, 4, 2, 0)
    return planes.reshape(rows * BLOCK, cols * BLOCK, count)[:height, :width]


def quantise(source: np.ndarray, base: np.ndarray, step: float, rounding: float) -> tuple[np.ndarray, np.ndarray]:
    """The quantised DCT of the colour-rotated difference, (C, 64, blocks) int32 (frequency-
    major, as the coder reads it), strip by strip: sign(c) · floor(|c| / step + rounding);
    and beside it what moving each quotient one step towards zero would add to its squared
    error, in step², (|c| − (m − 1))² − (|c| − m)² = 2 (|c| − m) + 1 for c / step's magnitude
    |c| and the quotient's m (float32: it is only ever compared with a rate, by
    dct_layer.lower_where_cheaper)."""
    rows, cols = block_grid(*source.shape[:2])
    channels = 1 if source.ndim == 2 else 3
    quotients = np.empty((channels, COEFFICIENTS, rows * cols), dtype=np.int32)
    lowering_costs = np.empty(quotients.shape, dtype=np.float32)
    # In torch, whose elementwise steps use both cores; the same IEEE operations as numpy's.
    quotients_t, costs_t = torch.from_numpy(quotients), torch.from_numpy(lowering_costs)
    for blocks, top, bottom in strips(*source.shape[:2]):
        scaled = forward_blocks(source[top:bottom].astype(np.float64) - base[top:bottom]).div_(step)
        magnitude = scaled.abs()
        whole = torch.floor(magnitude + rounding)
        quotients_t[:, :, blocks] = torch.copysign(whole, scaled)
        costs_t[:, :, blocks] = magnitude.sub_(whole).mul_(2).add_(1)
    return quotients, lowering_costs


def reconstruct(quotients: np.ndarray, base: np.ndarray, step: float) -> np.ndarray:
    """``base`` plus the dequantised, inverse-transformed quotients ((C, 64, blocks), as
    quantise gives them), rounded to uint8, strip by strip."""
    height, width = base.shape[:2]
    out = np.empty_like(base)
    for blocks, top, bottom in strips(height, width):
        difference = inverse_blocks(quotients[:, :, blocks] * step, bottom - top, width)
        planes = torch.from_numpy(base[top:bottom].reshape(bottom - top, width, -1).astype(np.float64)).add_(difference)
        out[top:bottom] = planes.round_().clamp_(0, 255).to(torch.uint8).numpy().reshape(out[top:bottom].shape)
    return out
