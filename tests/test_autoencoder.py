"""Tests of the VQ autoencoder's coding path, padding and configuration."""

from __future__ import annotations

import math

import pytest
import torch

from diveq_codec.models import autoencoder as autoencoder_module
from diveq_codec.models.autoencoder import SimplifiedGDN, VQAutoencoder, crop_to, pad_to_multiple, with_residual_blocks
from diveq_codec.models.config import QUANTIZERS, ModelConfig
from diveq_codec.models.residual import ResidualDiVeQ

SIZES = [(1, 1), (1, 13), (13, 1), (5, 13), (17, 9), (7, 7), (8, 16), (16, 8), (24, 24)]


def _image(height: int, width: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("multiple", [8, 4])
@pytest.mark.parametrize("height,width", SIZES)
def test_pad_crop_round_trip(height, width, multiple):
    x = _image(height, width)
    padded = pad_to_multiple(x, multiple)
    ph, pw = padded.shape[-2:]
    assert ph % multiple == 0 and pw % multiple == 0
    assert height <= ph < height + multiple and width <= pw < width + multiple
    assert ph == multiple * math.ceil(height / multiple) and pw == multiple * math.ceil(width / multiple)
    assert torch.equal(padded[..., :height, :width], x)  # original region untouched
    # the padded region replicates the last row / column (and the corner pixel)
    rows = torch.arange(ph).clamp(max=height - 1)
    cols = torch.arange(pw).clamp(max=width - 1)
    assert torch.equal(padded, x[..., rows, :][..., :, cols])
    assert torch.equal(crop_to(padded, height, width), x)


@pytest.mark.parametrize("height,width", [(8, 16), (16, 8), (24, 24)])
def test_pad_is_identity_on_multiples(height, width):
    x = _image(height, width)
    assert torch.equal(pad_to_multiple(x, 8), x)
    assert torch.equal(crop_to(x, height, width), x)


def test_pad_crop_batched_and_unbatched():
    x = torch.rand(2, 3, 5, 3)
    assert torch.equal(crop_to(pad_to_multiple(x, 8), 5, 3), x)
    y = torch.rand(3, 5, 3)  # (C, H, W) without a batch dimension
    padded = pad_to_multiple(y, 8)
    assert padded.shape == (3, 8, 8)
    assert torch.equal(crop_to(padded, 5, 3), y)


def _model(quantizer: str = "diveq", seed: int = 0, **kwargs) -> VQAutoencoder:
    torch.manual_seed(seed)
    params = {"channels": 8, "latent_dim": 8, "num_stages": 2, "num_codes": 16, "quantizer": quantizer, **kwargs}
    config = ModelConfig(**params)
    return VQAutoencoder(config)


@pytest.fixture(scope="module")
def model() -> VQAutoencoder:
    return _model().eval()


@pytest.mark.parametrize("height,width", [(1, 1), (5, 13), (17, 9), (1, 20), (20, 1), (16, 24)])
def test_encode_decode_shapes_and_range(model, height, width):
    x = _image(height, width, seed=height * 100 + width)
    indices, grid = model.encode_indices(x)
    stride = model.stride
    assert stride == 8
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    assert grid == (h, w)
    assert indices.shape == (2, h * w) and indices.dtype == torch.int64
    assert ((indices >= 0) & (indices < 16)).all()
    x_hat = model.decode_indices(indices, grid, height, width)
    assert x_hat.shape == (1, 3, height, width)
    assert torch.isfinite(x_hat).all()
    assert x_hat.min() >= 0.0 and x_hat.max() <= 1.0


def test_encode_indices_deterministic(model):
    x = _image(17, 9, seed=3)
    first, grid1 = model.encode_indices(x)
    second, grid2 = model.encode_indices(x.clone())
    assert grid1 == grid2
    assert first.numpy().tobytes() == second.numpy().tobytes()
    # also identical in train mode (the coding path has no noise and no state)
    model.train()
    try:
        third, _ = model.encode_indices(x)
    finally:
        model.eval()
    assert torch.equal(third, first)
    a = model.decode_indices(first, grid1, 17, 9)
    b = model.decode_indices(first.clone(), grid1, 17, 9)
    assert a.numpy().tobytes() == b.numpy().tobytes()


def test_encode_fewer_stages_is_prefix(model):
    x = _image(16, 16, seed=4)
    full, grid = model.encode_indices(x)
    coarse, grid_c = model.encode_indices(x, num_stages=1)
    assert grid == grid_c and torch.equal(coarse, full[:1])
    assert model.decode_indices(coarse, grid, 16, 16).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_coding_path_every_quantizer(quantizer):
    m = _model(quantizer).eval()
    x = _image(5, 13, seed=5)
    indices, grid = m.encode_indices(x)
    assert indices.shape == (m.num_stages, grid[0] * grid[1]) == (len(m.quantizer.alphabet_sizes), 2)
    for row, size in zip(indices, m.quantizer.alphabet_sizes):
        assert ((row >= 0) & (row < size)).all()
    x_hat = m.decode_indices(indices, grid, 5, 13)
    assert x_hat.shape == (1, 3, 5, 13) and 0.0 <= x_hat.min() and x_hat.max() <= 1.0


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_training_forward_backward_finite(quantizer):
    m = _model(quantizer, seed=1).train()
    x = _image(16, 16, seed=6).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    active = torch.tensor([1, 2]) if isinstance(m.quantizer, ResidualDiVeQ) else None
    x_hat, out = m(x, active)
    assert x_hat.shape == x.shape
    assert out.z_q.shape == (2 * 2 * 2, 8)
    loss = torch.nn.functional.mse_loss(x_hat, x)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in m.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    codebook = next(p for n, p in m.quantizer.named_parameters())
    assert codebook.grad.abs().sum() > 0  # the codebook learns through the reparameterisation
    assert m.analysis[0].weight.grad.abs().sum() > 0  # and the encoder gets a gradient


def test_build_quantizer_types():
    assert type(_model("diveq").quantizer).__name__ == "ResidualDiVeQ"
    assert _model("diveq-detach").quantizer.noise_std == 0.0
    assert type(_model("diveq", num_stages=1).quantizer).__name__ == "DiVeQ"
    assert type(_model("diveq-detach", num_stages=1).quantizer).__name__ == "DiVeQDetach"
    sf = _model("sf-diveq", sf_t_bits=3).quantizer
    assert sf.alphabet_sizes == [15 * 8]


def test_config_round_trip_and_validation():
    config = ModelConfig(channels=8, latent_dim=8, num_stages=2, num_codes=16, quantizer="sf-diveq")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown quantizer"):
        ModelConfig.from_dict({**config.to_dict(), "quantizer": "vq-ste"})
    assert ModelConfig(downsamplings=4).stride == 16


def test_growing_residual_blocks_keeps_the_model_exactly() -> None:
    torch.manual_seed(0)
    config = ModelConfig(channels=16, latent_dim=8, num_stages=3, num_codes=16)
    small = VQAutoencoder(config).eval()
    grown_config, state = with_residual_blocks(config, small.state_dict(), 2)
    assert grown_config.residual_blocks == 2
    grown = VQAutoencoder(grown_config).eval()
    grown.load_state_dict(state)  # strict: every weight placed, the new blocks at their start
    x = _image(40, 56)
    indices, grid = small.encode_indices(x)
    assert torch.equal(grown.encode_indices(x)[0], indices)
    assert torch.equal(grown.decode_indices(indices, grid, 40, 56), small.decode_indices(indices, grid, 40, 56))
    with pytest.raises(ValueError, match="already has"):
        with_residual_blocks(grown_config, state, 1)
    with pytest.raises(ValueError, match="at least 1"):
        with_residual_blocks(config, small.state_dict(), 0)
    wrong = VQAutoencoder(ModelConfig(channels=8, latent_dim=8, num_stages=3, num_codes=16)).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        with_residual_blocks(config, wrong, 1)


@pytest.mark.parametrize("layout", ["sliced", "channels_last", "contiguous"])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gdn_in_pieces_is_the_gdn(layout: str, inverse: bool, dtype: torch.dtype,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU coding path's GDN (pieces of GDN_PIECE pixels, no autograd) computes what the
    training path's 1×1 convolution does, for a batch, in each memory layout, with a last
    piece shorter than the others; the output keeps a channels-last input's layout."""
    monkeypatch.setattr(autoencoder_module, "GDN_PIECE", 100)
    pieces = SimplifiedGDN._in_pieces
    torch.manual_seed(4)
    gdn = SimplifiedGDN(16, inverse=inverse).to(dtype)
    with torch.no_grad():
        gdn.gamma.uniform_(0.0, 0.1)
        gdn.beta.uniform_(0.5, 1.5)
    x = torch.randn(3, 16, 23, 29, dtype=dtype)[..., 2:, 1:]  # 21 × 28 = 588 pixels: 5 pieces + 88
    if layout != "sliced":
        x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    trained = gdn(x.clone().requires_grad_())
    calls = []
    monkeypatch.setattr(SimplifiedGDN, "_in_pieces", lambda self, *a: calls.append(1) or pieces(self, *a))
    with torch.no_grad():
        coded = gdn(x)
    assert trained.requires_grad and calls == [1]  # the coding path ran in pieces, training did not
    assert coded.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                               else torch.contiguous_format)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    assert torch.allclose(coded, trained.detach(), rtol=tolerance, atol=0)


def test_float64_analysis_is_kept_until_the_weights_change() -> None:
    model = VQAutoencoder(ModelConfig(channels=8, latent_dim=8, num_stages=2, num_codes=16))
    first = model.float64_analysis()
    assert model.float64_analysis() is first
    with torch.no_grad():
        model.analysis[0].weight.add_(1.0)  # what an optimiser step does: in place
    second = model.float64_analysis()
    assert second is not first
    assert torch.equal(second[0].weight, model.analysis[0].weight.double())
    assert "_float64_analysis" not in str(list(model.state_dict()))
