"""Analysis by synthesis: move an image's latent so that its codewords decode closer to it.

The analysis transform is trained to give latents whose codewords decode well on average;
for one given image, its latent is not the best starting point of the codeword search.
Here the latent y takes a few Adam steps on the decoded image's squared error, through the
codeword search itself with a straight-through gradient: z = y + (Q(y) − y) held constant,
Q the encoder's own search (its rate point's λ and beam), so each step moves y across the
search's walls where the decoded pixels gain by it (as Campos et al., 2019, do for a
scalar-quantised codec). The decoder never knows: a refined file is an ordinary file.

Its price is encode time (one synthesis forward and backward pass per step) and one
guarantee: the float32 steps round differently on other machines, so the same image may
give another (equally valid) file elsewhere; every file still decodes to the same pixels
everywhere.

The settings were chosen on nine training photos (experiments/refine; README,
"Effort 3"): 10 steps of 1e-3 gain 0.08–0.16 dB at equal rate over the beam search alone at
qualities 4, 8 and 12. With the greedy search, 20 steps, or larger steps, drifted to dearer
codewords and gained less at the lower qualities.
"""

from __future__ import annotations

from typing import Any

import torch

from diveq_codec.models import chunked_search, progress, tiling
from diveq_codec.models.autoencoder import VQAutoencoder

STEPS = 10
STEP_SIZE = 1e-3


def latent_indices(model: VQAutoencoder, latent: torch.Tensor, num_stages: int,
                   search: dict[str, Any]) -> torch.Tensor:
    """The encoder's search (``search``: its rate term and beam) on every cell of a latent
    (1, D, h, w): indices (S, h·w), from the latent as it is (no float64 re-decision)."""
    with torch.no_grad():
        return chunked_search.chunked_indices(model.quantizer, model.to_vectors(latent), num_stages, **search)


def quantized(model: VQAutoencoder, latent: torch.Tensor, num_stages: int, search: dict[str, Any]) -> torch.Tensor:
    """The latent's codewords summed back into a latent (same shape), by the encoder's search."""
    _, _, h, w = latent.shape
    indices = latent_indices(model, latent, num_stages, search)
    return model.to_latent(model.quantizer.lookup(indices).to(latent.dtype), 1, h, w)


@torch.enable_grad()  # the steps need gradients even when the caller runs under torch.no_grad()
def refine_latent(model: VQAutoencoder, x: torch.Tensor, latent: torch.Tensor, num_stages: int,
                  search: dict[str, Any], steps: int = STEPS, step_size: float = STEP_SIZE) -> torch.Tensor:
    """The latent (1, D, h, w) of image x (1, 3, H, W) after ``steps`` refinement steps.

    An image larger than one synthesis tile is refined tile by tile (block coordinate
    descent): each tile's core cells move, scored on their own pixels as decoded from the
    core plus the synthesis margin, so memory stays bounded by the tile as in decoding.
    """
    refined = latent.detach().float().clone()
    grid_h, grid_w = refined.shape[-2:]
    stride, height, width = model.stride, x.shape[-2], x.shape[-1]
    margin = tiling.synthesis_margin(model.synthesis)
    cells = model.tile_size // stride
    target = x.float()
    tiles = list(tiling.grid_tiles(grid_h, grid_w, cells, margin))
    for tile_number, ((cy0, cy1, ty0, ty1), (cx0, cx1, tx0, tx1)) in enumerate(tiles):
        window = refined[..., ty0:ty1, tx0:tx1].clone().requires_grad_(True)
        core = torch.zeros_like(window[:, :1])
        core[..., cy0 - ty0:cy1 - ty0, cx0 - tx0:cx1 - tx0] = 1.0
        # The core's pixels inside the image: padding pixels are never shown.
        py0, py1 = (cy0 - ty0) * stride, min(cy1 * stride, height) - ty0 * stride
        px0, px1 = (cx0 - tx0) * stride, min(cx1 * stride, width) - tx0 * stride
        wanted = target[..., cy0 * stride:cy0 * stride + py1 - py0, cx0 * stride:cx0 * stride + px1 - px0]
        optimizer = torch.optim.Adam([window], lr=step_size)
        for step in range(steps):
            progress.report("refine", tile_number * steps + step, len(tiles) * steps)
            straight_through = window + (quantized(model, window, num_stages, search) - window).detach()
            decoded = model.synthesis(straight_through)[..., py0:py1, px0:px1]
            loss = (decoded - wanted).square().mean()
            (gradient,) = torch.autograd.grad(loss, window)
            window.grad = gradient * core  # the margin is another tile's core: it stays
            optimizer.step()
        refined[..., cy0:cy1, cx0:cx1] = window.detach()[..., cy0 - ty0:cy1 - ty0, cx0 - tx0:cx1 - tx0]
    progress.report("refine", len(tiles) * steps, len(tiles) * steps)
    return refined


def refined_indices(model: VQAutoencoder, x: torch.Tensor, num_stages: int, search: dict[str, Any],
                    steps: int = STEPS) -> tuple[torch.Tensor, tuple[int, int]]:
    """Coding path at a refining effort: image (1, 3, H, W) → indices (S, h·w) and the grid."""
    with torch.no_grad():
        latent = model.analyse(model.analysis, x.float())
    refined = refine_latent(model, x, latent, num_stages, search, steps)
    return latent_indices(model, refined, num_stages, search), (refined.shape[-2], refined.shape[-1])
