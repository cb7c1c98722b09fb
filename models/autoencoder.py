"""The VQ-VAE: analysis transform → quantizer → synthesis transform.

Transforms are small on purpose (the codec must run a Kodak image in well under a
second on two CPU cores): strided convolutions with simplified GDN (Johnston et al.
2018: y = x / (β + γ|x|)), which decorrelates features at a fraction of the cost of
stacked residual blocks, and sub-pixel upsampling (no checkerboard artefacts). A config
may add residual blocks at the latent resolution, where they are cheapest (1/64 of the pixels).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from diveq_codec.models import chunked_search, tiling
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.diveq import DiVeQ, DiVeQDetach
from diveq_codec.models.quantizer import Quantizer, QuantizerOutput
from diveq_codec.models.residual import RateCosts, ResidualDiVeQ
from diveq_codec.models.sf_diveq import SFDiVeQ, SFDiVeQDetach


# Pixels per piece of SimplifiedGDN's CPU inference path: 128 channels × 4096 float32 values
# are 2 MiB, so |x|, the channel mix and the division each find the piece still in cache. On the
# 2-core CPU a half-resolution GDN of a Kodak image took 41 ms this way, 114 ms as one 1×1
# convolution over the whole map (three passes over 50 MB).
GDN_PIECE = 4096


class SimplifiedGDN(nn.Module):
    """y = x / (β + γ * |x|) over channels (inverse: multiply), with β, γ kept positive."""

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = (self.beta.abs() + 1e-4).to(x.dtype)
        gamma = self.gamma.abs().to(x.dtype)
        records_graph = torch.is_grad_enabled() and (x.requires_grad or gamma.requires_grad or beta.requires_grad)
        if x.device.type == "cpu" and not records_graph:  # out= writes cannot be differentiated
            return self._in_pieces(x, gamma, beta)
        norm = F.conv2d(x.abs(), gamma.view(*gamma.shape, 1, 1), beta)
        return x * norm if self.inverse else x / norm

    def _in_pieces(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The same function, GDN_PIECE pixels at a time (the CPU coding path), in x's memory
        layout: channels-last input (the synthesis, fed by the quantizer's per-cell vectors)
        is mixed as rows of channels, any other as columns; converting it would cost more
        than the pieces save."""
        pixel_rows = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        out = torch.empty_like(x, memory_format=torch.channels_last if pixel_rows else torch.contiguous_format)
        combine = torch.mul if self.inverse else torch.div
        channels = x.shape[1]
        for image, result in zip(x, out):
            if pixel_rows:  # (pixels, channels)
                pixels = image.permute(1, 2, 0).reshape(-1, channels)
                results = result.permute(1, 2, 0).view(-1, channels)
                for start in range(0, pixels.shape[0], GDN_PIECE):
                    piece = pixels[start:start + GDN_PIECE]
                    norm = torch.addmm(beta, piece.abs(), gamma.t())
                    combine(piece, norm, out=results[start:start + GDN_PIECE])
            else:  # (channels, pixels)
                pixels, results = image.reshape(channels, -1), result.view(channels, -1)
                for start in range(0, pixels.shape[1], GDN_PIECE):
                    piece = pixels[:, start:start + GDN_PIECE]
                    norm = torch.addmm(beta.unsqueeze(1), gamma, piece.abs())
                    combine(piece, norm, out=results[:, start:start + GDN_PIECE])
        return out


class Upsample(nn.Module):
    """3×3 convolution to 4× channels, then pixel shuffle (×2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), 3×3 convolutions. The second convolution starts at zero, so a
    new block is the identity: blocks can be added to a trained model without changing it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def analysis_transform(config: ModelConfig) -> nn.Sequential:
    n = config.channels
    layers: list[nn.Module] = [nn.Conv2d(3, n, 5, stride=2, padding=2), SimplifiedGDN(n)]
    for _ in range(config.downsamplings - 1):
        layers += [nn.Conv2d(n, n, 3, stride=2, padding=1), SimplifiedGDN(n)]
    if config.residual_blocks:
        layers.append(nn.Sequential(*(ResidualBlock(n) for _ in range(config.residual_blocks))))
    layers.append(nn.Conv2d(n, config.latent_dim, 3, padding=1))
    return nn.Sequential(*layers)


def synthesis_transform(config: ModelConfig) -> nn.Sequential:
    n = config.channels
    layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, n, 3, padding=1), SimplifiedGDN(n, inverse=True)]
    if config.residual_blocks:
        layers.append(nn.Sequential(*(ResidualBlock(n) for _ in range(config.residual_blocks))))
    for _ in range(config.downsamplings - 1):
        layers += [Upsample(n, n), SimplifiedGDN(n, inverse=True)]
    layers.append(Upsample(n, 3))
    return nn.Sequential(*layers)


def build_quantizer(config: ModelConfig) -> Quantizer:
    if config.quantizer == "diveq":
        if config.num_stages == 1:
            return DiVeQ(config.num_codes, config.latent_dim, noise_std=config.noise_std)
        return ResidualDiVeQ(config.num_stages, config.num_codes, config.latent_dim, noise_std=config.noise_std)
    if config.quantizer == "diveq-detach":
        if config.num_stages == 1:
            return DiVeQDetach(config.num_codes, config.latent_dim)
        return ResidualDiVeQ(config.num_stages, config.num_codes, config.latent_dim, noise_std=0.0)
    if config.quantizer == "sf-diveq":
        return SFDiVeQ(config.num_codes, config.latent_dim, noise_std=config.noise_std, t_bits=config.sf_t_bits)
    if config.quantizer == "sf-diveq-detach":
        return SFDiVeQDetach(config.num_codes, config.latent_dim, t_bits=config.sf_t_bits)
    raise ValueError(f"unknown quantizer {config.quantizer!r}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom/right edges so H and W are multiples of ``multiple``.

    Replicating the edge (rather than zeros) avoids spending bits on an artificial
    black border whose ringing would leak into the visible image near the crop line.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    # 'replicate' needs at least one pixel; it handles pads larger than the image.
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x[..., :height, :width]


# How far a float32 latent can be from the float64 one, relative to its length, measured with
# the shipped model (experiments/float_choices): at most 1.11e-6 over the 1.8 million latents of
# the 678 training photos, 9.1e-7 on Kodak; 1.02e-6 and 8.7e-7 with oneDNN switched off (other
# summation orders: a stand-in for other machines), the same as two threads with one. The tail
# falls by a factor of ten every 1.3e-7 to 2e-7 (99.9th / 99.99th / 99.999th percentiles 6.1e-7,
# 7.5e-7, 8.8e-7 on the training photos). A latent nearer than EXACT_SEARCH_MARGIN to a decision
# boundary is re-decided in float64: 2.7 times the largest error measured, some nine factors of
# ten beyond it at that rate of fall. A larger margin re-decides more latents and costs encode
# time: 5e-6 (until this version) took 0.03-0.09 s more per Kodak image at qualities 10 to 12.
EXACT_SEARCH_MARGIN = 3e-6


def search_options(rate: RateCosts | None = None, beam: int = 1) -> dict[str, object]:
    """A quantizer search's keyword arguments for a rate term and a beam width: none at the
    defaults (the nearest codewords, greedily), which every quantizer searches."""
    return {**({} if rate is None else {"rate": rate}), **({"beam": beam} if beam > 1 else {})}


# Turns a search's indices (S, h·w) on grid (h, w) into the next search's rate term, or None
# to stop (VQAutoencoder.encode_indices).
Recost = Callable[[torch.Tensor, tuple[int, int]], RateCosts | None]


def searched_in_rounds(search: Callable[..., torch.Tensor], options: dict[str, object], recost: Recost | None,
                       grid: tuple[int, int]) -> torch.Tensor:
    """``search(**options)``'s indices, then again with each rate term ``recost`` gives for
    the indices so far, until it gives None."""
    indices = search(**options)
    while recost is not None and (rate := recost(indices, grid)) is not None:
        indices = search(**{**options, "rate": rate})
    return indices


def unsure_choices(vectors: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
    """Which rows' float32 choices could differ from the exact ones (a boolean per row): those
    nearer to a decision boundary than ``EXACT_SEARCH_MARGIN`` of their length."""
    return gaps < EXACT_SEARCH_MARGIN * torch.linalg.vector_norm(vectors, dim=1)


class VQAutoencoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.analysis = analysis_transform(config)
        self.quantizer = build_quantizer(config)
        self.synthesis = synthesis_transform(config)
        # Images larger than this (pixels per side) are coded in overlapping tiles.
        self.tile_size = tiling.DEFAULT_TILE_SIZE

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def num_stages(self) -> int:
        return len(self.quantizer.alphabet_sizes)

    @staticmethod
    def to_vectors(latent: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) → (B·h·w, D), row-major over (b, y, x)."""
        return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])

    @staticmethod
    def to_latent(vectors: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        return vectors.reshape(batch, height, width, -1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, active_stages: torch.Tensor | None = None,
                quantize: bool = True) -> tuple[torch.Tensor, QuantizerOutput | None]:
        """Training path on images already a multiple of the stride, values in [0, 1].

        ``quantize=False`` runs the plain autoencoder (the warm-up before codebook init).
        """
        latent = self.analysis(x)
        if not quantize:
            return self.synthesis(latent), None
        b, _, h, w = latent.shape
        # Quantize in float32 even under bf16 autocast: residual stages subtract ever smaller
        # codewords, and bf16's 8-bit mantissa would drown the later stages in rounding.
        vectors = self.to_vectors(latent).float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            if active_stages is not None and isinstance(self.quantizer, ResidualDiVeQ):
                per_vector = active_stages.repeat_interleave(h * w)
                out = self.quantizer(vectors, per_vector)
            else:
                out = self.quantizer(vectors)
        x_hat = self.synthesis(self.to_latent(out.z_q, b, h, w))
        return x_hat, out

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor, num_stages: int | None = None, dtype: torch.dtype = torch.float32,
                       rate: RateCosts | None = None, beam: int = 1,
                       recost: Recost | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Coding path: image (1, 3, H, W) in [0, 1] → indices (S, h·w) and the grid (h, w).

        The indices are the ones exact arithmetic would choose, on every device, so that the
        same image gives the same file anywhere. Float32 rounding differs between machines
        (a GPU's convolutions are not a CPU's), and a latent within that rounding of the
        boundary between two codewords would get another index. Hence:

        - ``dtype=torch.float64`` (what an accelerator uses) runs the analysis and the
          search in double precision: exact choices at twice the cost.
        - ``dtype=torch.float32`` (the CPU default) searches in float32, then re-decides in
          float64 every latent closer to a decision boundary than ``EXACT_SEARCH_MARGIN`` of
          its length, from a float64 analysis of just its tile. On Kodak that is 0.5 % of
          the latents, and the result equals the float64 one (tests, experiments/float_choices).

        A padded image larger than ``self.tile_size`` pixels in either direction is analysed
        in overlapping tiles (see models/tiling.py): same indices, bounded memory.

        ``rate`` (a residual quantizer's only) makes the choices entropy-constrained: the
        cheapest codeword in distance plus rate rather than the nearest (see RateCosts).
        ``beam`` > 1 (likewise) searches the stages jointly, keeping that many partial paths
        (see ResidualDiVeQ._beam_search); its gaps make the same exact re-decision work.
        ``recost`` turns each search's indices into the next search's rate term, until it
        gives None: the coder's own costs given the choices so far (rounds of the same exact
        search, on the same latent).
        """
        if (rate is not None or beam > 1) and not isinstance(self.quantizer, ResidualDiVeQ):
            raise ValueError(f"a rate term or a beam needs a residual quantizer, not {type(self.quantizer).__name__}")
        if dtype == torch.float64:
            latent = self.analyse(self.float64_analysis(), x.double())
            _, _, h, w = latent.shape
            return self.vector_indices(self.to_vectors(latent), (h, w), num_stages, rate, beam, recost), (h, w)
        latent = self.analyse(self.analysis, x.float())
        _, _, h, w = latent.shape
        vectors = self.to_vectors(latent)
        if chunked_search.chunked_indices_and_gaps(self.quantizer, vectors[:1], num_stages) is None:
            # a quantizer that cannot say how sure it is: all in float64
            return self.encode_indices(x, num_stages, torch.float64, rate, beam, recost)
        del latent
        # float64 vectors of the latents re-decided so far: the rounds re-decide many of the same
        exact_rows: dict[int, torch.Tensor] = {}

        def search(**options: object) -> torch.Tensor:
            decided = chunked_search.chunked_indices_and_gaps(self.quantizer, vectors, num_stages, **options)
            assert decided is not None
            indices, gaps = decided
            unsure = torch.nonzero(unsure_choices(vectors, gaps)).squeeze(1)
            if unsure.numel():
                new = [int(i) for i in unsure if int(i) not in exact_rows]
                if new:
                    cells = torch.tensor([[i // w, i % w] for i in new], dtype=torch.long, device=vectors.device)
                    analysed = tiling.analysis_at(self.float64_analysis(), x, self.stride, cells)
                    exact_rows.update(zip(new, analysed, strict=True))
                exact = torch.stack([exact_rows[int(i)] for i in unsure])
                chosen_rate = options.get("rate")
                exact_options = options if chosen_rate is None else {**options, "rate": chosen_rate.rows(unsure)}
                indices[:, unsure] = self.quantizer.indices(exact, num_stages, **exact_options)
            return indices

        return searched_in_rounds(search, search_options(rate, beam), recost, (h, w)), (h, w)

    @torch.no_grad()
    def vector_indices(self, vectors: torch.Tensor, grid: tuple[int, int], num_stages: int | None = None,
                       rate: RateCosts | None = None, beam: int = 1, recost: Recost | None = None) -> torch.Tensor:
        """The search of ``encode_indices`` on latent vectors (h·w, D) already analysed, as
        they are (float64 vectors: the exact choices), rounds included."""

        def search(**options: object) -> torch.Tensor:
            return chunked_search.chunked_indices(self.quantizer, vectors, num_stages, **options)

        return searched_in_rounds(search, search_options(rate, beam), recost, grid)

    def float64_analysis(self) -> nn.Module:
        """A double-precision copy of the analysis transform (the model itself stays float32).

        Kept between calls while the weights are unchanged (same storage, same in-place
        version: an optimiser step or load_state_dict bumps it): copying costs 5 ms an encode.
        """
        key = tuple((p.data_ptr(), p._version) for p in self.analysis.parameters())
        cached = self.__dict__.get("_float64_analysis")
        if cached is None or cached[0] != key:
            cached = (key, copy.deepcopy(self.analysis).double())
            self.__dict__["_float64_analysis"] = cached  # in __dict__: not a submodule, never saved
        return cached[1]

    def analyse(self, analysis: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """analysis(pad(x)), in tiles when x is larger than one tile."""
        padded_h, padded_w = (-(-side // self.stride) * self.stride for side in x.shape[-2:])
        if tiling.needs_tiling(padded_h, padded_w, self.tile_size):
            return tiling.tiled_analysis(analysis, x, self.stride, self.tile_size)
        return analysis(pad_to_multiple(x, self.stride))

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor, grid: tuple[int, int], height: int, width: int) -> torch.Tensor:
        """Coding path: indices (S, h·w) → image (1, 3, height, width), clamped to [0, 1].

        Synthesis runs in overlapping latent tiles when the image exceeds ``self.tile_size``.
        """
        tile_size = self.tile_size
        vectors = self.quantizer.lookup(indices)
        latent = self.to_latent(vectors, 1, grid[0], grid[1])
        if tiling.needs_tiling(grid[0] * self.stride, grid[1] * self.stride, tile_size):
            x_hat = tiling.tiled_synthesis(self.synthesis, latent, self.stride, tile_size, clamp=True)
            return crop_to(x_hat, height, width)
        x_hat = self.synthesis(latent)
        return crop_to(x_hat, height, width).clamp(0.0, 1.0)


def with_residual_blocks(config: ModelConfig, state: dict[str, torch.Tensor],
                         blocks: int) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A model without residual blocks, grown to ``blocks`` identity blocks per transform.

    The grown model computes exactly what the original did (each new block adds zero), so
    fine-tuning starts from the trained model instead of from scratch. The blocks take one
    slot in each transform's layer list (found in the grown model, not assumed here), so the
    layers after them move up by one.
    """
    if config.residual_blocks:
        raise ValueError(f"the model already has {config.residual_blocks} residual blocks")
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    grown_config = replace(config, residual_blocks=blocks)
    grown_model = VQAutoencoder(grown_config)
    first_moved = {part: next(i for i, layer in enumerate(getattr(grown_model, part))
                              if isinstance(layer, nn.Sequential))
                   for part in ("analysis", "synthesis")}
    grown = grown_model.state_dict()
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part in first_moved:
            index, _, name = rest.partition(".")
            if int(index) >= first_moved[part]:
                key = f"{part}.{int(index) + 1}.{name}"
        if key not in grown or grown[key].shape != value.shape:
            raise ValueError(f"weight {key} does not fit a model of config {grown_config}")
        grown[key] = value
    return grown_config, grown
