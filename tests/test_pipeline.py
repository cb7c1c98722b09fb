"""The real encode → bytes → decode path on the repo's samples with the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diveq_codec.codec import container, index_costs
from diveq_codec.codec.errors import BitstreamError, CorruptBitstreamError, WeightsError
from diveq_codec.codec.metrics import bits_per_pixel, psnr
from diveq_codec.codec.pipeline import decode, decode_detailed, encode, encode_with_report
from diveq_codec.codec.zoo import load_model, rate_points, resolve_quality


@pytest.fixture(scope="module")
def qualities() -> list[int]:
    return [p.quality for p in rate_points()]


def test_zoo_is_not_empty(qualities: list[int]) -> None:
    assert len(qualities) >= 1


def test_round_trip_size_mode_and_quality(parrots_path: Path, qualities: list[int]) -> None:
    source = Image.open(parrots_path)
    data = encode(parrots_path, quality=qualities[-1])
    out = decode(data)
    assert out.size == source.size and out.mode == "RGB"
    # The top rate point of a trained model is far better than a flat image.
    flat = np.full_like(np.asarray(source), np.asarray(source).mean(axis=(0, 1)).astype(np.uint8))
    assert psnr(np.asarray(source), np.asarray(out)) > psnr(np.asarray(source), flat) + 5


def test_every_rate_point_writes_a_file_that_decodes(parrots_path: Path, qualities: list[int]) -> None:
    """Each shipped point, the network's alone (version 3) and the layer's (version 4),
    round-trips. (Sizes need not climb on a crop this small: quality 5's 3-stage base plus a
    coarse layer can undercut quality 4's 4 stages; on Kodak they climb, see test_residual_layer.)"""
    crop = Image.open(parrots_path).convert("RGB").crop((100, 60, 196, 124))
    for quality in qualities:
        data = encode(crop, quality=quality)
        assert data[4] == (3 if resolve_quality(quality).layer_step is None else 4)
        assert data[17] == container.CODER_INDEX_MODEL
        assert container.unpack(data).header.quality == quality and decode(data).size == crop.size


def test_odd_size_is_padded_and_cropped(lighthouse_path: Path) -> None:
    out = decode(encode(lighthouse_path))
    assert out.size == Image.open(lighthouse_path).size


def test_bytes_identical_across_runs_and_indices_survive(parrots_path: Path) -> None:
    first, second = encode(parrots_path), encode(parrots_path)
    assert first == second
    header = container.unpack(first).header
    loaded = load_model(header.model_id, "cpu")
    x = torch.from_numpy(np.asarray(Image.open(parrots_path).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
    weight = resolve_quality(header.quality).rate_weight
    recost = index_costs.recoster(loaded.require_index_model(), weight)
    expected, _ = loaded.model.encode_indices(x, header.stages, rate=loaded.rate_costs(weight), recost=recost)
    assert np.array_equal(decode_detailed(first).indices, expected.numpy())


def test_the_rate_points_weight_trades_distortion_for_rate(parrots_path: Path, weights_copy: Path) -> None:
    """The encoder reads each rate point's λ from the card: a larger one writes fewer bits and a
    little more distortion (entropy-constrained choices), 0 the nearest codewords; the decoder
    reads every such file alike."""
    card_path = next(weights_copy.glob("*.json"))
    card = json.loads(card_path.read_text())
    point = next(rp for rp in card["rate_points"] if rp["quality"] == 4)  # the network alone
    reports = {}
    for weight in (0.0, 0.005, 0.05):
        point["rate_weight"] = weight
        card_path.write_text(json.dumps(card))
        assert resolve_quality(4).rate_weight == weight
        reports[weight] = encode_with_report(parrots_path, 4, "cpu")
    sizes = [len(reports[w].data) for w in (0.0, 0.005, 0.05)]
    quality = [reports[w].psnr for w in (0.0, 0.005, 0.05)]
    assert sizes[0] > sizes[1] > sizes[2] and quality[0] > quality[2]
    del point["rate_weight"]  # a card without it: the nearest codewords
    card_path.write_text(json.dumps(card))
    assert encode(parrots_path, quality=4) == reports[0.0].data


@pytest.mark.parametrize("weight", [-0.01, "heavy", float("nan"), None])
def test_a_card_with_a_bad_rate_weight_is_refused(parrots_path: Path, weights_copy: Path, weight: object) -> None:
    """A negative λ would prefer dear codewords, and a card that says nonsense is a weights
    problem (exit 4), not a usage error."""
    card_path = next(weights_copy.glob("*.json"))
    card = json.loads(card_path.read_text())
    card["rate_points"][0]["rate_weight"] = weight
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="rate"):
        encode(parrots_path, quality=1)


def test_the_default_is_the_quality_the_card_names(weights_copy: Path) -> None:
    card_path = next(weights_copy.glob("*.json"))
    card = json.loads(card_path.read_text())
    assert resolve_quality(None).quality == card["default_quality"]
    card["default_quality"] = 2
    card_path.write_text(json.dumps(card))
    assert resolve_quality(None).quality == 2


def test_a_card_naming_a_default_it_does_not_ship_is_refused(weights_copy: Path) -> None:
    """Falling back to another rate point would change what a plain ``encode`` writes without a
    word; the card is refused as a whole (exit 4), like any card with a wrong field."""
    card_path = next(weights_copy.glob("*.json"))
    card = json.loads(card_path.read_text())
    card["default_quality"] = 99
    card_path.write_text(json.dumps(card))
    for quality in (None, 1):
        with pytest.raises(WeightsError, match="default_quality: 99 is not one of its rate points"):
            resolve_quality(quality)


def test_more_stages_cost_more_and_look_better(parrots_path: Path, qualities: list[int]) -> None:
    if len(qualities) < 2:
        pytest.skip("one rate point only")
    low = encode_with_report(parrots_path, qualities[0], "cpu")
    high = encode_with_report(parrots_path, qualities[-1], "cpu")
    assert high.bpp > low.bpp and high.psnr > low.psnr


def test_report_is_the_truth(parrots_path: Path) -> None:
    report = encode_with_report(parrots_path, device="cpu")
    source = np.asarray(Image.open(parrots_path).convert("RGB"))
    assert report.bpp == bits_per_pixel(len(report.data), source.shape[1], source.shape[0])
    assert report.psnr == pytest.approx(psnr(source, np.asarray(decode(report.data))), abs=0.01)


def test_grayscale_comes_back_grayscale(parrots_path: Path) -> None:
    gray = Image.open(parrots_path).convert("L")
    out = decode(encode(gray))
    assert out.mode == "L" and out.size == gray.size


def test_alpha_is_preserved_exactly(parrots_path: Path) -> None:
    rgba = Image.open(parrots_path).convert("RGBA")
    alpha = np.random.default_rng(0).integers(0, 256, size=rgba.size[::-1], dtype=np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    out = decode(encode(rgba))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], alpha)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (13, 1), (17, 23)])
def test_tiny_images(size: tuple[int, int]) -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    assert decode(encode(img)).size == size


def test_weights_mismatch_is_refused(parrots_path: Path, weights_copy: Path) -> None:
    data = encode(parrots_path)
    parsed = container.unpack(data)
    other = container.Header(**{**parsed.header.__dict__, "weights_id": b"\x00" * 8})
    with pytest.raises(WeightsError):
        decode(container.pack(container.Container(other, parsed.payload, parsed.alpha)))


def test_tampered_weights_file_is_refused(parrots_path: Path, weights_copy: Path) -> None:
    weights_file = next(weights_copy.glob("*.safetensors"))
    blob = bytearray(weights_file.read_bytes())
    blob[-1] ^= 0xFF
    weights_file.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="sha256"):
        encode(parrots_path)


def test_missing_model_is_refused(parrots_path: Path, weights_copy: Path) -> None:
    data = encode(parrots_path)
    for card in weights_copy.glob("*.json"):
        card.unlink()
    with pytest.raises(WeightsError):
        decode(data)


def test_unknown_model_id_is_refused(parrots_path: Path) -> None:
    parsed = container.unpack(encode(parrots_path))
    other = container.Header(**{**parsed.header.__dict__, "model_id": 999})
    with pytest.raises(WeightsError):
        decode(container.pack(container.Container(other, parsed.payload, parsed.alpha)))


def test_inconsistent_latent_grid_is_refused(parrots_path: Path) -> None:
    parsed = container.unpack(encode(parrots_path))
    other = container.Header(**{**parsed.header.__dict__, "latent_w": parsed.header.latent_w + 1})
    with pytest.raises(BitstreamError):
        decode(container.pack(container.Container(other, parsed.payload, parsed.alpha)))


@pytest.mark.parametrize("quality", [1, None])  # a version-3 file, and the default's version 4
def test_header_counts_in_bpp(parrots_path: Path, quality: int | None) -> None:
    data = encode(parrots_path, quality=quality)
    parsed = container.unpack(data)
    header = container.HEADER_SIZE_WITH_LAYER if parsed.layer else container.HEADER_SIZE
    assert data[4] == (container.VERSION_WITH_LAYER if parsed.layer else 3)
    assert len(data) == (header + len(parsed.payload) + len(parsed.alpha) + len(parsed.layer)
                         + container.TRAILER_SIZE)


def test_cards_carry_the_required_fields() -> None:
    from diveq_codec.codec.zoo import list_cards
    for card in list_cards():
        for key in ("config", "sha256", "entropy_tables", "index_model", "training", "rate_points"):
            assert key in card.data
        assert not {"second_contexts", "second_tensor"} & set(card.data["entropy_tables"])
        stages = len(card.data["entropy_tables"]["bits_per_symbol"])
        qualities = [rp["quality"] for rp in card.data["rate_points"]]
        assert len(set(qualities)) == len(qualities)
        assert all(1 <= rp["stages"] <= stages for rp in card.data["rate_points"])
        # The index coder codes as many stages as its index model has: every point's at most.
        coded = card.data["index_model"]["config"]["stages"]
        assert all(rp["stages"] <= coded for rp in card.data["rate_points"])


def test_the_shipped_index_model_codes_every_rate_points_stages() -> None:
    """What the card says, the weights file holds: an index model for every stage a rate
    point codes, over the network's alphabet."""
    from diveq_codec.codec.zoo import list_cards

    for card in list_cards():
        loaded = load_model(card.model_id, "cpu")
        index_model = loaded.require_index_model()
        assert len(index_model.stages) == card.data["index_model"]["config"]["stages"]
        assert index_model.codes == loaded.model.quantizer.alphabet_sizes[0]
        assert max(rp["stages"] for rp in card.data["rate_points"]) <= len(index_model.stages)


def test_package_level_api(parrots_path: Path) -> None:
    from diveq_codec import codec

    data = codec.encode(parrots_path, quality=1)
    assert codec.decode(data).size == (256, 192)
    with pytest.raises(AttributeError):
        codec.no_such_function  # noqa: B018


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
@pytest.mark.parametrize("quality", [2, 7])  # the network alone, and a DCT-layer point
def test_the_encoders_reconstruction_is_what_decode_gives(parrots_path: Path, mode: str, quality: int) -> None:
    """encode reports PSNR without decoding its file: from the base and the layer it holds."""
    image = Image.open(parrots_path).convert(mode).crop((0, 0, 120, 88))
    report = encode_with_report(image, quality, "cpu")
    decoded = decode(report.data, "cpu")
    assert report.decoded.mode == decoded.mode == mode
    np.testing.assert_array_equal(np.asarray(report.decoded), np.asarray(decoded))
    planes = (lambda im: np.asarray(im.convert("L" if mode in ("L", "LA") else "RGB")))
    assert report.psnr == psnr(planes(image), planes(decoded))


@pytest.mark.parametrize("message", ["DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes",
                                     "CUDA out of memory. Tried to allocate 2.00 GiB"])
def test_an_allocation_failure_is_the_inputs_exit_code_not_an_internal_error(
        parrots_path: Path, monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    from diveq_codec.codec import pipeline
    from diveq_codec.codec.errors import InputError

    data = encode(parrots_path, quality=1, device="cpu")

    def fail(*_: object, **__: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(pipeline, "image_to_tensor", fail)
    with pytest.raises(InputError, match="not enough memory to encode a 256×192 image"):
        encode(parrots_path, quality=1, device="cpu")
    monkeypatch.setattr(pipeline, "tensor_to_pixels", fail)
    with pytest.raises(CorruptBitstreamError, match="not enough memory to decode"):
        decode(data, device="cpu")
    monkeypatch.setattr(pipeline, "tensor_to_pixels", lambda *_: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # other errors stay what they are
        decode(data, device="cpu")
