"""The encoder's codeword choices at a model's rate points, for training statistics.

The entropy tables (``codec.export``) and the decoder fine-tune (``models.decoder_finetune``)
are measured on what the encoder actually codes: at each rate point, its stages chosen
entropy-constrained at its λ. This is the float32 search alone; the coding path's float64
re-decision of the few latents near a tie (``VQAutoencoder.encode_indices``) would cost more
than the whole search here and change no statistic that matters.
"""

from __future__ import annotations

import numpy as np
import torch

from diveq_codec.models import chunked_search
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.residual import RateCosts

# (stages, λ) of each rate point.
Points = list[tuple[int, float]]


@torch.no_grad()
def choices_at_points(model: VQAutoencoder, x: torch.Tensor, points: Points,
                      lengths: tuple[np.ndarray, np.ndarray]) -> list[torch.Tensor]:
    """Indices (stages, h, w) of the image x (1, 3, H, W) at each point, from one analysis;
    ``lengths`` are the code lengths (``codec.entropy.code_lengths``) λ weighs."""
    latent = model.analyse(model.analysis, x)
    grid = latent.shape[-2:]
    vectors = model.to_vectors(latent)
    choices = []
    for stages, weight in points:
        rate = RateCosts.from_lengths(lengths, weight)
        search = {} if rate is None else {"rate": rate}
        choices.append(chunked_search.chunked_indices(model.quantizer, vectors, stages, **search).reshape(stages, *grid))
    return choices
