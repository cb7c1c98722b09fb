"""The DCT layer (codec/dct_layer.py, dct_layer_coding.py, dct_transform.py) on its own, and
inside .dvq files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diveq_codec.codec import container, dct_layer, dct_layer_coding, dct_transform
from diveq_codec.codec.errors import BitstreamError, CorruptBitstreamError, UnsupportedVersionError
from diveq_codec.codec.image_io import read_image
from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.pipeline import (
    decode,
    decode_detailed,
    encode,
    encode_at_point,
    encode_with_report,
    layer_detail,
)
from diveq_codec.codec.zoo import load_model, rate_points, resolve_quality


def _photo_and_base(path: Path, quality: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo, the network's decode of it and the base's detail the layer's contexts take."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    decoded = decode_detailed(encode(Image.fromarray(rgb), quality=quality, device="cpu"), "cpu")
    head = decoded.header
    detail = layer_detail(load_model(head.model_id, "cpu"), decoded.indices, head.height, head.width)
    return rgb, np.asarray(decoded.image), detail


@pytest.fixture(scope="module")
def photo_and_base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _photo_and_base(Path(__file__).resolve().parents[1] / "samples" / "parrots.png")


def _no_detail(planes: np.ndarray) -> np.ndarray:
    """The detail of a base without any: every block's 0."""
    rows, cols = dct_transform.block_grid(*planes.shape[:2])
    return np.zeros(rows * cols, dtype=np.int32)


def _expected(source: np.ndarray, base: np.ndarray, step: float,
              rounding: float = dct_layer.ROUNDING) -> np.ndarray:
    """What the layer should decode to, computed here without the coder: quantise the
    colour-rotated 8×8 DCT of the difference (rounding offset ``rounding``), reconstruct, add, round."""
    n = 8
    k = np.arange(n)
    dct = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    dct[0] /= np.sqrt(2)
    rotation = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]]) / np.sqrt([[3], [2], [6]])
    difference = source.astype(float) - base
    channels = difference[None] if difference.ndim == 2 else np.moveaxis(difference @ rotation.T, 2, 0)
    height, width = source.shape[:2]
    padded = np.pad(channels, ((0, 0), (0, -height % n), (0, -width % n)), mode="edge")
    out = np.empty_like(padded)
    for y in range(0, padded.shape[1], n):
        for x in range(0, padded.shape[2], n):
            block = dct @ padded[:, y:y + n, x:x + n] @ dct.T
            quotients = np.sign(block) * np.floor(np.abs(block) / step + rounding)
            out[:, y:y + n, x:x + n] = dct.T @ (quotients * step) @ dct
    out = out[:, :height, :width]
    restored = out[0] if difference.ndim == 2 else np.moveaxis(out, 0, 2) @ rotation
    return np.clip(np.rint(base + restored), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("step", "rounding"), [(2.0, 0.5), (12.5, dct_layer.ROUNDING), (40.0, 0.1)])
def test_the_layer_decodes_to_the_quantised_dct_of_the_difference(photo_and_base, step: float,
                                                                  rounding: float) -> None:
    source, base, detail = photo_and_base
    layer = dct_layer.encode(source, base, step, detail, rounding, rd_weight=0.0)
    assert layer[0] == dct_layer.WRITTEN_TRANSFORM and int.from_bytes(layer[1:3], "little") == step * 16
    decoded = dct_layer.decode(layer, base, detail)
    expected = _expected(source, base, step, rounding)
    # The same quotients on both sides but at ties: the codec's float transforms and this
    # float64 one may take a coefficient on a quantiser boundary, or a pixel on a .5, to
    # either side (at step 2 about one pixel value in 7,000 with model 10's base).
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    assert (decoded != expected).mean() < 5e-4


@pytest.mark.parametrize("shape", [(1100, 37, 3), (1030, 9)])
def test_images_taller_than_a_strip_are_coded_as_one(shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The transforms run in strips of whole block rows (bounded memory); the blocks and the
    result must be those of the whole image, across the strips' seams and a partial last one."""
    monkeypatch.setattr(dct_transform, "STRIP_BLOCKS", 40)  # 8 or 20 block rows a strip
    rng = np.random.default_rng(6)
    source = rng.integers(0, 256, shape, dtype=np.uint8)
    base = np.clip(source.astype(int) + rng.integers(-9, 10, shape), 0, 255).astype(np.uint8)
    detail = _no_detail(base)
    decoded = dct_layer.decode(dct_layer.encode(source, base, 3.0, detail, rd_weight=0.0), base, detail)
    assert (decoded != _expected(source, base, 3.0)).mean() < 1e-4


def test_finer_steps_cost_more_bits_and_give_more_db(photo_and_base) -> None:
    source, base, detail = photo_and_base
    sizes, gains = [], []
    for step in (32.0, 12.0, 4.0):
        layer = dct_layer.encode(source, base, step, detail)
        sizes.append(len(layer))
        gains.append(psnr(source, dct_layer.decode(layer, base, detail)))
    assert sizes[0] < sizes[1] < sizes[2]
    assert psnr(source, base) < gains[0] < gains[1] < gains[2]


def test_a_layer_of_empty_groups_is_a_few_bytes_and_decodes_to_the_base() -> None:
    """Where the difference quantises to nothing, the layer sends one cheap flag a group."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)
    detail = _no_detail(base)
    layer = dct_layer.encode(base, base, 16.0, detail)
    assert len(layer) < 64
    assert np.array_equal(dct_layer.decode(layer, base, detail), base)


def test_the_shipped_quantiser_beats_nearest_rounding_at_equal_rate(photo_and_base) -> None:
    """The encoder's quantiser is its own choice: every setting decodes, a wider dead zone
    zeroes more coefficients, and the shipped one (a dead zone, then the rate–distortion
    pass) writes fewer bytes for more dB than nearest rounding or a plain dead zone here too."""
    source, base, detail = photo_and_base
    results = {}
    for setting in ((0.5, 0.0), (0.32, 0.0), (dct_layer.ROUNDING, dct_layer.RD_WEIGHT), (0.0, 0.0)):
        for step in (10.0, 12.0, 16.0):
            layer = dct_layer.encode(source, base, step, detail, setting[0], rd_weight=setting[1])
            results[setting, step] = (len(layer), psnr(source, dct_layer.decode(layer, base, detail)))
    shipped = (dct_layer.ROUNDING, dct_layer.RD_WEIGHT)
    assert results[(0.0, 0.0), 16.0][0] < results[shipped, 16.0][0] < results[(0.5, 0.0), 16.0][0]
    for other in (results[(0.5, 0.0), 12.0], results[(0.32, 0.0), 10.0]):
        assert results[shipped, 10.0][0] < other[0] and results[shipped, 10.0][1] > other[1]


def test_the_rate_distortion_pass_only_moves_quotients_one_towards_zero(photo_and_base) -> None:
    source, base, detail = photo_and_base
    grid = dct_transform.block_grid(*source.shape[:2])
    before, lowering_costs = dct_transform.quantise(source, base, 6.0, 0.5)
    after = before.copy()
    dct_layer.lower_where_cheaper(after, lowering_costs, grid, detail, 1.0)
    moved = after != before
    assert moved.any() and np.all(np.abs(after[moved]) == np.abs(before[moved]) - 1)
    assert np.all(np.sign(after[moved]) * np.sign(before[moved]) >= 0)
    # It pays for itself: fewer bytes than the same dead zone without it.
    assert len(dct_layer.encode(source, base, 6.0, detail, 0.5, rd_weight=1.0)) < len(
        dct_layer.encode(source, base, 6.0, detail, 0.5, rd_weight=0.0))


@pytest.mark.parametrize("weight", [-1.0, float("inf"), float("nan")])
def test_encode_refuses_a_meaningless_rate_distortion_weight(photo_and_base, weight: float) -> None:
    source, base, detail = photo_and_base
    with pytest.raises(ValueError, match="rd_weight"):
        dct_layer.encode(source, base, 8.0, detail, rd_weight=weight)


@pytest.mark.parametrize("rounding", [-0.1, 0.51, float("nan")])
def test_encode_refuses_a_rounding_outside_the_dead_zone_range(photo_and_base, rounding: float) -> None:
    source, base, detail = photo_and_base
    with pytest.raises(ValueError, match="rounding"):
        dct_layer.encode(source, base, 8.0, detail, rounding)


def test_the_smallest_step_is_lossless_through_the_escape_code() -> None:
    rng = np.random.default_rng(3)
    source = rng.integers(0, 256, (21, 19, 3), dtype=np.uint8)  # noise: every quotient large, most escaped
    base = np.full_like(source, 128)
    detail = _no_detail(base)
    layer = dct_layer.encode(source, base, 0.25, detail)
    assert np.array_equal(dct_layer.decode(layer, base, detail), source)


def test_gray_planes_and_one_pixel_images() -> None:
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (13, 30), dtype=np.uint8)
    base = np.clip(gray.astype(int) + rng.integers(-20, 21, gray.shape), 0, 255).astype(np.uint8)
    detail = _no_detail(base)
    decoded = dct_layer.decode(dct_layer.encode(gray, base, 3.0, detail), base, detail)
    assert decoded.shape == gray.shape and psnr(gray, decoded) > psnr(gray, base) + 6
    one = np.array([[[10, 200, 30]]], dtype=np.uint8)
    assert np.array_equal(dct_layer.decode(dct_layer.encode(one, np.zeros_like(one), 0.25, _no_detail(one)),
                                           np.zeros_like(one), _no_detail(one)), one)


def test_the_level_tables_are_the_same_integers_everywhere() -> None:
    """The decoder depends on these exact integers: a change in how they are built (or a
    platform that rounded differently) would make every file undecodable."""
    tables = np.stack([dct_layer_coding.level_frequencies(j) for j in range(dct_layer_coding.NUM_LEVELS)])
    assert tables.shape == (64, dct_layer_coding.ALPHABET) and tables.min() >= 1
    assert hashlib.sha256(tables.astype("<i8").tobytes()).hexdigest()[:16] == "d686470d0556de78"


@pytest.mark.parametrize("step", [0.0, 0.2, 1.03, 4096.0, -1.0, float("inf"), float("nan")])
def test_encode_refuses_steps_a_layer_cannot_hold(photo_and_base, step: float) -> None:
    source, base, detail = photo_and_base
    with pytest.raises(ValueError, match="step"):
        dct_layer.encode(source, base, step, detail)


def test_the_base_detail_is_the_later_codewords_l1_norm_around_each_block() -> None:
    """base_detail by its definition, computed here with loops: the L1 norm of the integer
    codewords of the stages after the first at each latent, summed over the 3×3 latents
    around it (edges repeated), less the offset, in units, from 0 up."""
    codebooks = load_model(resolve_quality(5).model_id, "cpu").require_index_model().codebooks
    rng = np.random.default_rng(8)
    rows, cols = 5, 7
    indices = rng.integers(0, codebooks.shape[1], (3, rows * cols))
    detail = dct_layer_coding.base_detail(codebooks, indices, 8 * rows, 8 * cols, 8, offset=900, unit=700)
    norms = np.abs(codebooks[1][indices[1]] + codebooks[2][indices[2]]).sum(axis=1).reshape(rows, cols)
    for y in range(rows):
        for x in range(cols):
            window = sum(norms[min(max(y + dy, 0), rows - 1), min(max(x + dx, 0), cols - 1)]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            assert detail[y * cols + x] == max(window - 900, 0) // 700
    assert detail.dtype == np.int32 and detail.max() > 0
    # A model of stride 16: each 8×8 block takes the latent at its top-left pixel.
    # (a 72 × 112 image: 5 × 7 latents of 16 pixels, 9 × 14 blocks)
    coarse = dct_layer_coding.base_detail(codebooks, indices, 8 * (2 * rows - 1), 16 * cols, 16, 900, 700)
    assert np.array_equal(coarse.reshape(2 * rows - 1, 2 * cols),
                          detail.reshape(rows, cols).repeat(2, axis=0).repeat(2, axis=1)[: 2 * rows - 1])


def test_the_decoder_needs_the_encoders_detail(photo_and_base) -> None:
    """The detail chooses the groups, so it is part of the stream: the same layer read with
    no detail is refused or decodes to other pixels, and with it decodes to what was coded."""
    source, base, detail = photo_and_base
    assert detail.max() > 0
    layer = dct_layer.encode(source, base, 64.0, detail)
    assert np.array_equal(dct_layer.decode(layer, base, detail), dct_layer.encode_with_planes(source, base, 64.0,
                                                                                              detail)[1])
    try:
        assert not np.array_equal(dct_layer.decode(layer, base, _no_detail(base)), dct_layer.decode(layer, base, detail))
    except CorruptBitstreamError:
        pass
    with pytest.raises(ValueError, match="one per 8×8 block"):
        dct_layer.encode(source, base, 64.0, detail[1:])


def test_the_detail_saves_layer_bits_at_the_coarse_steps(parrots_path: Path) -> None:
    """At the first layer point's step, on a 3-stage base as the zoo codes it, the detail
    in the contexts codes the sample photo's layer in fewer bytes than none."""
    point = resolve_quality(_layer_quality())
    source = read_image(parrots_path.read_bytes(), str(parrots_path))
    decoded = decode_detailed(encode_at_point(source, replace(point, layer_step=None), "cpu"), "cpu")
    planes, base = np.asarray(Image.open(parrots_path).convert("RGB")), np.asarray(decoded.image.convert("RGB"))
    detail = layer_detail(load_model(point.model_id, "cpu"), decoded.indices, *base.shape[:2])
    with_detail = len(dct_layer.encode(planes, base, point.layer_step, detail))
    without = len(dct_layer.encode(planes, base, point.layer_step, _no_detail(base)))
    assert with_detail < without


def _damaged(layer: bytes) -> dict[str, bytes]:
    """Damage the layer can see for itself. A range decoder reads most other damage (a
    flipped bit, a word appended, a word cut off the end) without complaint: the container's
    CRC catches that."""
    return {
        "empty": b"",
        "header only": layer[:3],
        "unknown transform": bytes([dct_layer.WRITTEN_TRANSFORM + 1]) + layer[1:],
        "transform 0": bytes([0]) + layer[1:],
        "step below the smallest": layer[:1] + (3).to_bytes(2, "little") + layer[3:],
        "not whole words": layer + b"\x00",
        "garbage": layer[:3] + bytes(range(256)) * 2,
    }


@pytest.mark.parametrize("case", list(_damaged(b"\x03\x40\x00" + b"\x00" * 8)))
def test_a_damaged_layer_is_one_error(photo_and_base, case: str) -> None:
    source, base, detail = photo_and_base
    layer = _damaged(dct_layer.encode(source, base, 8.0, detail))[case]
    with pytest.raises(CorruptBitstreamError):
        dct_layer.decode(layer, base, detail)


@pytest.mark.parametrize("transform", dct_layer.DEVELOPMENT_TRANSFORMS)
def test_a_development_builds_transform_is_refused_as_such(transform: int) -> None:
    """Transforms 1 to 3 were written only by builds before the first release: refused
    (exit 3) with what they are and what to do, before any decoding."""
    base = np.zeros((8000, 8000, 3), dtype=np.uint8)
    layer = bytes([transform]) + b"\x40\x00" + b"\x00" * 64
    message = (f"made by a development build of diveq-codec before the first release (DCT-layer transform "
               f"{transform}); encode the image again")
    for read in (dct_layer.read_layer_header, lambda data: dct_layer.decode(data, base, _no_detail(base))):
        with pytest.raises(UnsupportedVersionError) as info:
            read(layer)
        assert str(info.value) == message and info.value.exit_code == 3


# --- inside .dvq files -------------------------------------------------------------------


def _layer_quality() -> int:
    return next(p.quality for p in rate_points() if p.layer_step is not None)


def test_the_shipped_zoo_has_layer_points_above_the_network_points() -> None:
    """Qualities climb in bpp: the network's points first, then the layer's ever finer steps
    on one base (its stages; each point has its own λ), so that a higher quality never
    writes a coarser file."""
    points = rate_points()
    network = [p for p in points if p.layer_step is None]
    layered = [p for p in points if p.layer_step is not None]
    assert len(network) >= 3 and len(layered) >= 6
    assert min(p.quality for p in layered) > max(p.quality for p in network)
    assert len({p.stages for p in layered}) == 1
    steps = [p.layer_step for p in sorted(layered, key=lambda p: p.quality)]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == len(steps)
    measured = [p.kodak_bpp for p in points]
    assert None not in measured and measured == sorted(measured)


def test_a_layer_rate_point_writes_a_version_4_file_that_decodes_better(parrots_path: Path) -> None:
    quality = _layer_quality()
    base_quality = resolve_quality(quality)
    report = encode_with_report(parrots_path, quality=quality, device="cpu")
    parsed = container.unpack(report.data)
    assert report.data[4] == 4 and parsed.layer
    assert parsed.header.quality == quality and parsed.header.stages == base_quality.stages
    # The same point without its layer: the same base indices, in a version-3 file.
    source = read_image(parrots_path.read_bytes(), "parrots")
    plain = encode_at_point(source, replace(base_quality, layer_step=None), "cpu")
    assert plain[4] == 3 and container.unpack(plain).payload == parsed.payload
    assert report.psnr > psnr(source.rgb, np.asarray(decode(plain, "cpu"))) + 1.0
    # The decoder needs nothing but the file: the step travels in the layer.
    assert np.array_equal(np.asarray(decode(report.data, "cpu")), np.asarray(report.decoded))


def test_a_gray_image_with_alpha_at_a_layer_point(tmp_path: Path, parrots_path: Path) -> None:
    gray = Image.open(parrots_path).convert("L").crop((0, 0, 77, 53))
    alpha = Image.fromarray(np.tile(np.arange(77, dtype=np.uint8) * 3, (53, 1)), "L")
    image = Image.merge("LA", (gray, alpha))
    report = encode_with_report(image, quality=_layer_quality(), device="cpu")
    decoded = decode_detailed(report.data, "cpu")
    assert decoded.image.mode == "LA" and decoded.image.size == (77, 53)
    assert np.array_equal(np.asarray(decoded.image)[..., 1], np.asarray(alpha))
    assert psnr(np.asarray(gray), np.asarray(decoded.image)[..., 0]) == pytest.approx(report.psnr)


@pytest.mark.parametrize("step", ["fine", 0.1, 1.03, -4, float("inf"), float("nan")])
def test_a_card_with_a_bad_layer_step_is_refused(weights_copy: Path, step: object) -> None:
    from diveq_codec.codec.errors import WeightsError

    card_path = next(weights_copy.glob("*.json"))
    card = json.loads(card_path.read_text())
    card["rate_points"][-1]["layer_step"] = step
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="rate point|layer_step"):
        rate_points()


def test_the_cli_writes_reads_and_describes_a_layered_file(tmp_path: Path, parrots_path: Path) -> None:
    from typer.testing import CliRunner

    from diveq_codec.codec.cli.app import app

    runner = CliRunner()
    quality = max(p.quality for p in rate_points())
    out = tmp_path / "parrots.dvq"
    encoded = runner.invoke(app, ["encode", str(parrots_path), str(out), "-q", str(quality), "--device", "cpu", "--json"])
    assert encoded.exit_code == 0, encoded.output
    summary = json.loads(encoded.stdout)
    assert summary["psnr"] > 40
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert info["format_version"] == 4 and info["quality"] == quality and info["layer_bytes"] > 0
    assert info["bytes"] == out.stat().st_size
    listed = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert [r["layer_step"] is not None for r in listed] == [p.layer_step is not None for p in rate_points()]
    decoded = runner.invoke(app, ["decode", str(out), str(tmp_path / "back.png"), "--device", "cpu",
                                  "--reference", str(parrots_path), "--json"])
    assert decoded.exit_code == 0, decoded.output
    assert json.loads(decoded.stdout)["psnr"] == pytest.approx(summary["psnr"])


def test_damaged_layers_behind_a_valid_crc_decode_or_fail_in_one_line(parrots_path: Path) -> None:
    """The CRC stops accidental damage; a crafted file with a valid CRC and a damaged layer
    must still end in a BitstreamError (exit 3) or an image, never another exception. Damaged
    words are refused (the layer must be exactly its quotients' stream); only a changed step
    in the layer's header can still decode."""
    image = Image.open(parrots_path).convert("RGB").crop((0, 0, 40, 24))
    data = encode(image, quality=max(p.quality for p in rate_points()), device="cpu")
    parsed = container.unpack(data)
    layer = parsed.layer
    rng = np.random.default_rng(5)
    outcomes = set()
    for case in range(40):
        damaged = bytearray(layer)
        if case % 4 == 0:
            damaged = damaged[: rng.integers(0, len(layer))]
        elif case % 4 == 1:
            damaged += rng.bytes(int(rng.integers(1, 9)))
        else:
            for _ in range(int(rng.integers(1, 4))):
                damaged[int(rng.integers(0, len(damaged)))] ^= 1 << int(rng.integers(0, 8))
        if not damaged:
            continue
        crafted = container.pack(container.Container(parsed.header, parsed.payload, b"", bytes(damaged)))
        try:
            decoded = decode(crafted, "cpu")
            assert decoded.size == image.size
            outcomes.add("decoded")
        except BitstreamError as exc:
            assert "\n" not in str(exc)
            outcomes.add("refused")
    assert "refused" in outcomes and outcomes <= {"decoded", "refused"}


@pytest.mark.parametrize("part", ["payload", "layer"])
def test_a_word_appended_to_a_stream_is_refused(parrots_path: Path, part: str) -> None:
    """The range decoder reads ahead, so an appended word can decode the same symbols; the
    decoder still refuses it (lengths and CRC made consistent, as a crafted file would)."""
    image = Image.open(parrots_path).convert("RGB").crop((0, 0, 40, 24))
    parsed = container.unpack(encode(image, quality=max(p.quality for p in rate_points()), device="cpu"))
    payload = parsed.payload + (b"\x00\x00\x00\x00" if part == "payload" else b"")
    layer = parsed.layer + (b"\x00\x00\x00\x00" if part == "layer" else b"")
    with pytest.raises(BitstreamError, match="extra or altered words"):
        decode(container.pack(container.Container(parsed.header, payload, b"", layer)), "cpu")


@pytest.mark.parametrize("transform", dct_layer.DEVELOPMENT_TRANSFORMS)
def test_a_file_with_a_development_builds_layer_exits_3(parrots_path: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str], transform: int) -> None:
    """A real layered file whose layer says transform 1, 2 or 3 (CRC fixed, as a development
    build would have written it): the CLI refuses it in one line with exit 3."""
    import fuzzing

    from diveq_codec.codec.cli.app import run_app

    image = Image.open(parrots_path).convert("RGB").crop((0, 0, 40, 24))
    data = encode(image, quality=_layer_quality(), device="cpu")
    start = fuzzing.regions(data)["layer"][0]
    assert data[start] == dct_layer.WRITTEN_TRANSFORM
    path = tmp_path / "old.dvq"
    path.write_bytes(fuzzing.fix_crc(data[:start] + bytes([transform]) + data[start + 1:]))
    code = run_app(["decode", str(path), str(tmp_path / "out.png"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 3 and f"development build of diveq-codec before the first release (DCT-layer transform " \
                          f"{transform}); encode the image again" in err and err.count("\n") == 1
