"""Tiled analysis/synthesis (models/tiling.py): no seams, same indices, bounded memory.

The seam tests force small tiles onto small images, so they run in seconds; the 4000×3000
memory benchmark is the `slow` test at the end (scripts/bench_large.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diveq_codec.codec.metrics import psnr
from diveq_codec.models import chunked_search, tiling
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> VQAutoencoder:
    from diveq_codec.codec.zoo import load_model, rate_points

    return load_model(rate_points()[-1].model_id, "cpu").model


@pytest.fixture
def untiled(model: VQAutoencoder, monkeypatch: pytest.MonkeyPatch):
    """Set the model's tile size for one test (restored afterwards: the loaded model is shared)."""

    def use(tile_size: int) -> VQAutoencoder:
        monkeypatch.setattr(model, "tile_size", tile_size, raising=False)
        return model

    return use


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


def tensor_to_pixels(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def parrots_4x4() -> Image.Image:
    """samples/parrots.png tiled 4×4: 1024×768, with the tile borders as hard edges."""
    tile = np.asarray(Image.open(REPO / "samples" / "parrots.png").convert("RGB"))
    return Image.fromarray(np.tile(tile, (4, 4, 1)))


# --- receptive fields and spans ---------------------------------------------------------------------


def _measured_reach(transform: torch.nn.Module, channels: int, size: int, scale: float) -> int:
    """How far (in output cells, then divided by ``scale``) one input perturbation travels."""
    torch.manual_seed(0)
    x = torch.rand(1, channels, size, size)
    base = transform(x)
    centre = size // 2
    y = x.clone()
    y[..., centre, centre] += 1.0
    changed = (transform(y) - base).abs().amax(dim=(0, 1)) > 0
    rows = torch.nonzero(changed.any(dim=1)).flatten()
    cols = torch.nonzero(changed.any(dim=0)).flatten()
    anchor = centre * scale
    return int(max(anchor - rows.min().item(), rows.max().item() - anchor,
                   anchor - cols.min().item(), cols.max().item() - anchor))


def test_margins_cover_the_measured_receptive_fields(model: VQAutoencoder) -> None:
    stride = model.stride
    a_margin = tiling.analysis_margin(model.analysis, stride)  # latent cells
    s_margin = tiling.synthesis_margin(model.synthesis)  # latent cells
    # Analysis: a pixel perturbation reaches latents within ±(margin·stride) pixels of it.
    reach_latents = _measured_reach(model.analysis, 3, 96, 1 / stride)
    assert 1 <= reach_latents <= a_margin
    left, right, jump = tiling.reach(model.analysis)
    assert jump == stride and a_margin * stride >= max(left, right)
    # Synthesis: a latent perturbation reaches pixels within the margin (in latent cells).
    reach_pixels = _measured_reach(model.synthesis, model.config.latent_dim, 16, stride)
    assert stride <= reach_pixels <= s_margin * stride + stride - 1


@pytest.mark.parametrize(("length", "core", "margin"), [(1, 64, 2), (64, 64, 2), (65, 64, 2), (500, 64, 4),
                                                        (7, 1, 0), (129, 64, 100)])
def test_spans_partition_the_axis(length: int, core: int, margin: int) -> None:
    parts = tiling.spans(length, core, margin)
    assert parts[0][0] == 0 and parts[-1][1] == length
    for (a0, a1, t0, t1), nxt in zip(parts, parts[1:] + [None]):
        assert 0 < a1 - a0 <= core
        assert t0 == max(0, a0 - margin) and t1 == min(length, a1 + margin)
        if nxt is not None:
            assert nxt[0] == a1
    sizes = [a1 - a0 for a0, a1, _, _ in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced: no sliver tile at the end


def test_unknown_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot tile"):
        tiling.reach(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.AvgPool2d(2)))
    with pytest.raises(ValueError, match="square"):
        tiling.reach(torch.nn.Conv2d(3, 3, (3, 5), padding=1))


# --- seams: tiled and untiled agree ---------------------------------------------------------------------


def test_parrots_4x4_tiled_equals_untiled(model: VQAutoencoder, untiled, parrots_4x4: Image.Image) -> None:
    """1024×768 with 128-pixel tiles (8×6 tiles): indices 100 % identical, pixels within float noise."""
    x = _tensor(parrots_4x4)
    reference = np.asarray(parrots_4x4)
    untiled(1 << 30)
    idx_full, grid = model.encode_indices(x)
    out_full = tensor_to_pixels(model.decode_indices(idx_full, grid, 768, 1024))
    untiled(128)
    idx_tiled, grid_tiled = model.encode_indices(x)
    out_tiled = tensor_to_pixels(model.decode_indices(idx_full, grid, 768, 1024))
    assert grid_tiled == grid == (96, 128)
    differing = int((idx_tiled != idx_full).sum())
    assert differing == 0, f"{differing} of {idx_full.numel()} indices differ"
    # Same indices → synthesis alone decides; tiled synthesis may differ by float rounding only.
    assert np.abs(out_full.astype(int) - out_tiled.astype(int)).max() <= 1
    assert abs(psnr(reference, out_full) - psnr(reference, out_tiled)) < 0.01  # brief: within 0.1 dB


@pytest.mark.parametrize(("height", "width", "tile_size"), [(77, 203, 64), (203, 77, 32), (9, 300, 8), (130, 130, 64)])
def test_odd_sizes_and_tiny_tiles(model: VQAutoencoder, untiled, height: int, width: int, tile_size: int) -> None:
    """Sizes off the stride (replicate padding per tile), tiles of one latent, a lone latent row."""
    rng = np.random.default_rng(height * width)
    base = np.asarray(Image.open(REPO / "samples" / "parrots.png").convert("RGB").resize((width, height)))
    noisy = np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    x = _tensor(Image.fromarray(noisy))
    untiled(1 << 30)
    idx_full, grid = model.encode_indices(x)
    full = model.decode_indices(idx_full, grid, height, width)
    untiled(tile_size)
    idx_tiled, _ = model.encode_indices(x)
    tiled = model.decode_indices(idx_full, grid, height, width)
    assert torch.equal(idx_tiled, idx_full)
    assert tiled.shape == full.shape == (1, 3, height, width)
    assert (tiled - full).abs().max().item() < 1e-4


def test_a_too_small_margin_shows_seams(model: VQAutoencoder, parrots_4x4: Image.Image) -> None:
    """The agreement above is the margins' doing: without them, tiles do disagree."""
    x = _tensor(parrots_4x4.crop((0, 0, 256, 256)))
    latent_full = model.analysis(x)
    latent_cut = tiling.tiled_analysis(model.analysis, x, model.stride, 64, margin=0)
    latent_ok = tiling.tiled_analysis(model.analysis, x, model.stride, 64)
    assert torch.allclose(latent_ok, latent_full, atol=1e-5)
    assert not torch.allclose(latent_cut, latent_full, atol=1e-3)
    pixels_full = model.synthesis(latent_full)
    pixels_cut = tiling.tiled_synthesis(model.synthesis, latent_full, model.stride, 64, margin=0, clamp=False)
    pixels_ok = tiling.tiled_synthesis(model.synthesis, latent_full, model.stride, 64, clamp=False)
    assert torch.allclose(pixels_ok, pixels_full, atol=1e-5)
    assert not torch.allclose(pixels_cut, pixels_full, atol=1e-3)


@pytest.mark.parametrize("downsamplings", [2, 4])
def test_other_strides_untrained(downsamplings: int) -> None:
    """The margins follow the architecture: an untrained model of stride 4 and 16 tiles seamlessly."""
    torch.manual_seed(downsamplings)
    net = VQAutoencoder(ModelConfig(channels=16, latent_dim=8, downsamplings=downsamplings, num_stages=2,
                                    num_codes=16)).eval()
    x = torch.rand(1, 3, 150, 230)
    net.tile_size = 1 << 30
    idx_full, grid = net.encode_indices(x)
    full = net.decode_indices(idx_full, grid, 150, 230)
    net.tile_size = 2 * net.stride
    idx_tiled, _ = net.encode_indices(x)
    assert torch.equal(idx_tiled, idx_full)
    assert (net.decode_indices(idx_full, grid, 150, 230) - full).abs().max().item() < 1e-4


def test_residual_blocks_widen_the_margins_and_still_tile_seamlessly() -> None:
    """Residual blocks (x + f(x)) are walked through f: the margins grow with them."""
    torch.manual_seed(3)
    config = ModelConfig(channels=16, latent_dim=8, num_stages=2, num_codes=16, residual_blocks=2)
    net = VQAutoencoder(config).eval()
    for block in [*net.analysis[6], *net.synthesis[2]]:
        torch.nn.init.normal_(block.conv2.weight, std=0.1)  # not the identity they start as
    plain = VQAutoencoder(ModelConfig(channels=16, latent_dim=8, num_stages=2, num_codes=16))
    assert tiling.analysis_margin(net.analysis, 8) > tiling.analysis_margin(plain.analysis, 8)
    assert tiling.synthesis_margin(net.synthesis) > tiling.synthesis_margin(plain.synthesis)
    x = torch.rand(1, 3, 150, 230)
    net.tile_size = 1 << 30
    idx_full, grid = net.encode_indices(x)
    full = net.decode_indices(idx_full, grid, 150, 230)
    net.tile_size = 16
    assert torch.equal(net.encode_indices(x)[0], idx_full)
    assert (net.decode_indices(idx_full, grid, 150, 230) - full).abs().max().item() < 1e-4


def test_chunked_quantization_is_exact(model: VQAutoencoder, parrots_4x4: Image.Image) -> None:
    vectors = model.to_vectors(model.analysis(_tensor(parrots_4x4.crop((0, 0, 512, 256)))))
    whole = model.quantizer.indices(vectors, None)
    assert torch.equal(chunked_search.chunked_indices(model.quantizer, vectors, None, chunk=333), whole)


def test_files_do_not_depend_on_the_tile_size(model: VQAutoencoder, untiled, parrots_4x4: Image.Image) -> None:
    """Through the pipeline: the same .dvq bytes tiled (default and forced small) and untiled."""
    from diveq_codec.codec.pipeline import decode, encode

    image = parrots_4x4.crop((0, 0, 600, 520))
    untiled(1 << 30)
    reference = encode(image, device="cpu")
    untiled(tiling.DEFAULT_TILE_SIZE)  # 600×520 > 512: tiled by default
    assert encode(image, device="cpu") == reference
    untiled(96)
    assert encode(image, device="cpu") == reference
    decoded_tiled = np.asarray(decode(reference, device="cpu"))
    untiled(1 << 30)
    decoded_full = np.asarray(decode(reference, device="cpu"))
    assert np.abs(decoded_tiled.astype(int) - decoded_full.astype(int)).max() <= 1


# --- scale ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_4000x3000_within_3_gb(tmp_path: Path) -> None:
    """scripts/bench_large.py: encode and decode 4000×3000, each in a fresh process, peak RSS ≤ 3 GB."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_large.py"), "--json",
                             "--keep", str(tmp_path)], capture_output=True, text=True, timeout=3600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and report["ok"], result.stdout + result.stderr
    for phase in ("encode", "decode"):
        assert report[phase]["peak_rss_mib"] <= 3 * 1024
    assert report["decoded_size"] == [4000, 3000]
