"""The quantizer's search over many latent vectors, in chunks of rows: each row is searched
on its own, so chunks give the same indices, and the (N, K) distance matrix stays a chunk's size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

QUANTIZE_CHUNK = 16_384  # latent vectors per quantizer call: bounds its (N, K) distance matrix


def _in_chunks(search: Callable[..., Any], vectors: torch.Tensor, chunk: int, options: dict[str, Any]) -> list[Any]:
    """search(rows, **options) over chunks of rows; a rate term per latent is cut to the chunk."""
    rate = options.get("rate")
    parts = []
    for i in range(0, max(vectors.shape[0], 1), chunk):
        chunk_options = options if rate is None else {**options, "rate": rate.rows(slice(i, i + chunk))}
        parts.append(search(vectors[i:i + chunk], **chunk_options))
    return parts


def chunked_indices(quantizer: nn.Module, vectors: torch.Tensor, num_stages: int | None,
                    chunk: int = QUANTIZE_CHUNK, **search: Any) -> torch.Tensor:
    """quantizer.indices over rows in chunks: same result (rows are independent), bounded memory.
    ``search`` options (a rate term, a beam) go to the quantizer, a rate per latent cut to each chunk."""
    parts = _in_chunks(lambda rows, **options: quantizer.indices(rows, num_stages, **options), vectors, chunk, search)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def chunked_indices_and_gaps(quantizer: nn.Module, vectors: torch.Tensor, num_stages: int | None,
                             chunk: int = QUANTIZE_CHUNK, **search: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """quantizer.indices_and_gaps over rows in chunks (None where the quantizer has no gaps)."""
    parts = _in_chunks(lambda rows, **options: quantizer.indices_and_gaps(rows, num_stages, **options),
                       vectors, chunk, search)
    if parts[0] is None:
        return None
    return torch.cat([i for i, _ in parts], dim=1), torch.cat([g for _, g in parts])
