"""Evaluation: BD-rate, MS-SSIM, PSNR/bpp, the anchors, and `eval`/`bench` end to end.

The end-to-end runs use a tiny randomly initialised model exported with codec.export into
a temp folder, so they test the eval machinery, not how good any trained model is.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner, Result

from diveq_codec.codec.evaluation.anchors import ANCHORS, measure, resolve_anchors
from diveq_codec.codec.evaluation.bdrate import bd_rate, why_not
from diveq_codec.codec.evaluation.runner import (CSV_FIELDS, Curve, load_published, matched_markdown, matched_rate_rows, parse_qualities,
                            summarize)
from diveq_codec.codec.metrics import bits_per_pixel, psnr
from diveq_codec.codec.evaluation.msssim import MIN_SIDE, ms_ssim, ms_ssim_db

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED = Path(__file__).resolve().parents[2] / "shared"
KODAK_CURVES = SHARED / "anchors" / "kodak"

needs_shared = pytest.mark.skipif(not (KODAK_CURVES / "jpeg.json").is_file(),
                                  reason="published Kodak curves (../shared/anchors/kodak) not present")


def _curve(name: str) -> tuple[list[float], list[float]]:
    results = json.loads((KODAK_CURVES / name).read_text())["results"]
    return results["bpp"], results["psnr-rgb"]


# --------------------------------------------------------------------------- BD-rate

@needs_shared
def test_bd_rate_webp_vs_jpeg_published() -> None:
    assert bd_rate(*_curve("jpeg.json"), *_curve("webp.json")) == pytest.approx(-36.6, abs=0.3)


@needs_shared
def test_bd_rate_bpg444_vs_jpeg_published() -> None:
    assert bd_rate(*_curve("jpeg.json"), *_curve("bpg_444_x265_ycbcr.json")) == pytest.approx(-59.0, abs=2.0)


@needs_shared
def test_bd_rate_ignores_point_order() -> None:
    # jpeg2000.json lists its points from high to low rate.
    rate, quality = _curve("jpeg2000.json")
    forward = bd_rate(*_curve("jpeg.json"), rate, quality)
    assert forward == pytest.approx(bd_rate(*_curve("jpeg.json"), rate[::-1], quality[::-1]), abs=1e-9)
    assert forward == pytest.approx(-36.6, abs=1.0)


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    psnr_values = np.array([26.0, 28.5, 31.0, 33.2, 35.9, 38.0])
    return np.exp((psnr_values - 20.0) / 6.0) * 0.05, psnr_values


def test_bd_rate_of_a_curve_against_itself_is_zero() -> None:
    rate, quality = _synthetic()
    assert bd_rate(rate, quality, rate, quality) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_a_constant_rate_factor_is_that_factor() -> None:
    # 20 % fewer bits at every PSNR: the log-rate fit shifts by log(0.8) exactly.
    rate, quality = _synthetic()
    assert bd_rate(rate, quality, 0.8 * rate, quality) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(0.8 * rate, quality, rate, quality) == pytest.approx(25.0, abs=1e-6)


def test_bd_rate_matches_the_vceg_m33_formula() -> None:
    rate, quality = _synthetic()
    test_rate, test_psnr = rate * np.linspace(0.6, 0.9, rate.size), quality + 0.7
    p0 = np.polyfit(quality, np.log(rate), 3)
    p1 = np.polyfit(test_psnr, np.log(test_rate), 3)
    low, high = max(quality.min(), test_psnr.min()), min(quality.max(), test_psnr.max())
    i0, i1 = np.polyint(p0), np.polyint(p1)
    mean_diff = ((np.polyval(i1, high) - np.polyval(i1, low)) - (np.polyval(i0, high) - np.polyval(i0, low))) / (high - low)
    assert bd_rate(rate, quality, test_rate, test_psnr) == pytest.approx((math.exp(mean_diff) - 1) * 100, abs=1e-6)


def test_bd_rate_is_nan_without_overlap_or_points() -> None:
    rate, quality = _synthetic()
    assert math.isnan(bd_rate(rate, quality, rate, quality + 20))
    assert "do not overlap" in why_not(rate, quality, rate, quality + 20)
    assert math.isnan(bd_rate(rate, quality, rate[:3], quality[:3]))
    assert "needs 4" in why_not(rate, quality, rate[:3], quality[:3])


def test_bd_rate_drops_unusable_points() -> None:
    rate, quality = _synthetic()
    with_lossless = (np.append(rate, 9.0), np.append(quality, math.inf))
    assert bd_rate(rate, quality, *with_lossless) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- PSNR, bpp

def test_psnr_known_values() -> None:
    image = np.full((16, 16, 3), 100, dtype=np.uint8)
    assert psnr(image, image + 1) == pytest.approx(20 * math.log10(255), abs=1e-9)  # 48.1308 dB
    assert psnr(image, image + 1) == pytest.approx(48.13, abs=0.005)
    assert psnr(image, image) == math.inf
    assert psnr(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)) == pytest.approx(0.0)


def test_bpp_is_bytes_times_8_over_pixels() -> None:
    assert bits_per_pixel(1000, 100, 80) == pytest.approx(1.0)
    assert bits_per_pixel(98_304, 768, 512) == pytest.approx(2.0)


# --------------------------------------------------------------------------- MS-SSIM

def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def parrots() -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / "parrots.png").convert("RGB"))


def test_ms_ssim_of_identical_images_is_one(parrots: np.ndarray) -> None:
    assert ms_ssim(parrots, parrots) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim_db(1.0) == math.inf


def test_ms_ssim_of_flat_images_is_the_luminance_term() -> None:
    # Flat images: every contrast/structure term is exactly 1, so MS-SSIM is the
    # coarsest scale's luminance term to the power of its weight (≈ 0.999396).
    a, b = np.full((192, 256, 3), 100, np.uint8), np.full((192, 256, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    luminance = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert ms_ssim(a, b) == pytest.approx(luminance**0.1333, abs=1e-6)  # window made in float32


def test_ms_ssim_matches_pytorch_msssim(parrots: np.ndarray) -> None:
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    lighthouse = np.asarray(Image.open(SAMPLES / "lighthouse.png").convert("RGB"))  # odd sides
    for image in (parrots, lighthouse):
        noisy = _noisy(image, 12.0)
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double()
        y = torch.from_numpy(noisy.copy()).permute(2, 0, 1)[None].double()
        expected = float(pytorch_msssim.ms_ssim(x, y, data_range=255))
        assert ms_ssim(image, noisy) == pytest.approx(expected, abs=1e-9)


def test_ms_ssim_falls_with_noise(parrots: np.ndarray) -> None:
    values = [ms_ssim(parrots, _noisy(parrots, s)) for s in (1, 4, 16, 48)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert 0 < values[-1] < values[0] < 1


def test_ms_ssim_small_images_are_nan_and_gray_is_one_plane(parrots: np.ndarray) -> None:
    assert MIN_SIDE == 161
    small = parrots[:MIN_SIDE - 1]
    assert math.isnan(ms_ssim(small, small))
    assert math.isfinite(ms_ssim(parrots[:MIN_SIDE], parrots[:MIN_SIDE]))
    gray, noisy = parrots[..., 1], _noisy(parrots[..., 1], 8.0)
    assert ms_ssim(gray, noisy) == pytest.approx(ms_ssim(gray[..., None], noisy[..., None]))
    with pytest.raises(ValueError):
        ms_ssim(parrots, parrots[:-1])
    with pytest.raises(ValueError):
        ms_ssim(parrots.astype(np.float32), parrots.astype(np.float32))


# --------------------------------------------------------------------------- anchors and helpers

def test_resolve_anchors() -> None:
    assert resolve_anchors("none") == ([], [])
    chosen, _ = resolve_anchors("jpeg, webp,jpeg")
    assert [a.key for a in chosen] == ["jpeg", "webp"]
    with pytest.raises(ValueError, match="unknown anchor"):
        resolve_anchors("jpeg,gif")
    default, notes = resolve_anchors(None)
    assert {a.key for a in default} | {n.split()[1] for n in notes} == set(ANCHORS)


def test_jpeg_anchor_measures_real_bytes(parrots: np.ndarray) -> None:
    m = measure(ANCHORS["jpeg"], parrots, 75)
    height, width = parrots.shape[:2]
    assert m.bpp == pytest.approx(m.num_bytes * 8 / (width * height))
    assert 28 < m.psnr < 45 and 0.9 < m.ms_ssim < 1
    assert measure(ANCHORS["jpeg"], parrots, 20).num_bytes < m.num_bytes


def test_parse_qualities() -> None:
    assert parse_qualities("all") is None
    assert parse_qualities("1,3, 5,3") == [1, 3, 5]
    with pytest.raises(ValueError):
        parse_qualities("1,x")


def test_summarize_averages_per_image_and_needs_every_image() -> None:
    rows = [{"codec": "c", "quality": 1, "image": im, "bpp": b, "psnr_rgb": p, "ms_ssim_rgb": 0.9,
             "encode_s": 0.1, "decode_s": 0.2} for im, b, p in (("a", 0.2, 30.0), ("b", 0.4, 20.0))]
    rows.append({**rows[0], "quality": 2})
    s = summarize(rows, "c", ["a", "b"])
    assert s["quality"] == [1] and s["bpp"] == [pytest.approx(0.3)] and s["psnr-rgb"] == [pytest.approx(25.0)]


def test_load_published_schemas(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"name": "A", "results": {
        "bpp": [0.1, 0.2], "psnr-rgb": [30, 32], "ms-ssim-rgb": [0.9, 0.95]}}))
    (tmp_path / "c3.json").write_text(json.dumps({"X": {"bpp": [0.1], "psnr": [28]}, "Y": {"bpp": [0.2], "psnr": [29]}}))
    (tmp_path / "nested.json").write_text(json.dumps({"name": "N", "results": {
        "kodak": {"s": {"bpp": [0.1], "psnr-rgb": [31]}}, "clic": {"s": {"bpp": [0.1], "psnr-rgb": [33]}}}}))
    (tmp_path / "junk.json").write_text("[1, 2]")
    curves, notes = load_published(tmp_path, "kodak")
    assert [(c.name, c.ms_ssim is not None) for c in curves] == [
        ("A", True), ("X", False), ("Y", False), ("N [kodak/s]", False)]
    assert len(notes) == 1 and "junk.json" in notes[0]


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random model with 2 rate points, exported the real way, made the zoo."""
    from diveq_codec.codec.release import export
    from diveq_codec.codec import zoo
    from diveq_codec.models.autoencoder import VQAutoencoder
    from diveq_codec.models.config import ModelConfig

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = ModelConfig(channels=16, latent_dim=8, downsamplings=2, num_stages=2, num_codes=16)
    model = VQAutoencoder(config)
    checkpoint = root / "checkpoint.pt"
    torch.save({"config": config.to_dict(), "model": model.state_dict(), "step": 0, "elapsed_s": 1.0,
                "images_seen": 0}, checkpoint)
    out = root / "weights"
    assert export.main([str(checkpoint), "--name", "tiny", "--model-id", "9", "--data", str(SAMPLES),
                        "--table-images", "2", "--max-side", "256", "--out", str(out)]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.WEIGHTS_DIR_ENV, str(out))
        yield out
    zoo._load.cache_clear()


def _app() -> typer.Typer:
    from diveq_codec.codec.cli.evaluation_commands import bench_command, eval_command

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
    return app


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def eval_run(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval") / "out"
    args = ["eval", str(SAMPLES), "-q", "1,2", "--anchors", "jpeg", "--device", "cpu", "-o", str(out)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    return out, args, result


def test_eval_writes_compressai_schema(eval_run) -> None:
    out, _, result = eval_run
    for name, points in (("diveq.json", 2), ("jpeg.json", len(ANCHORS["jpeg"].qualities))):
        data = json.loads((out / name).read_text())
        assert isinstance(data["name"], str) and isinstance(data["description"], str)
        results = data["results"]
        assert set(results) == {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
        assert all(len(v) == points for v in results.values())
        assert results["bpp"] == sorted(results["bpp"])
        assert all(0 < v < 1 for v in results["ms-ssim-rgb"])  # both samples are ≥ 161 px
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((out / "bd_rate.json").read_text())
    assert [r["reference"] for r in table["rows"]] == ["JPEG"]
    assert table["rows"][0]["bd_rate_percent"] is None  # 2 rate points: no cubic fit
    assert "| JPEG | measured here | n/a |" in result.stdout
    assert (out / "bd_rate.md").read_text() in result.stdout
    matched = (out / "matched_bpp.md").read_text()
    assert "### JPEG" in matched and "| PSNR DiVeQ | PSNR JPEG |" in matched


def test_matched_rate_rows_interpolate_in_log_bpp_without_extrapolating() -> None:
    ours = Curve("diveq", "DiVeQ", "ours", [0.1, 0.4, 2.0], [25.0, 30.0, 40.0], [0.9, 0.95, 0.99])
    reference = Curve("jpeg", "JPEG", "local", [0.8, 0.2], [30.0, 24.0], [0.97, 0.9])
    rows = matched_rate_rows(ours, reference)
    # 0.1 and 2.0 lie outside JPEG's 0.2–0.8 bpp; 0.4 is halfway between them in log bpp.
    assert [r["bpp"] for r in rows] == [0.4]
    assert rows[0]["reference_psnr"] == pytest.approx(27.0)
    assert rows[0]["reference_ms_ssim_db"] == pytest.approx(-10 * math.log10(1 - 0.935))
    assert rows[0]["ms_ssim_db"] == pytest.approx(-10 * math.log10(0.05))
    table = matched_markdown("DiVeQ", ours, [reference])
    assert "| 0.4000 | 30.00 | 27.00 | +3.00 |" in table


def test_eval_csv_rows(eval_run) -> None:
    out, _, _ = eval_run
    rows = _csv_rows(out / "per_image.csv")
    assert list(rows[0]) == CSV_FIELDS
    assert len(rows) == 2 * (2 + len(ANCHORS["jpeg"].qualities))
    sizes = {"parrots.png": (256, 192), "lighthouse.png": (161, 241)}
    for r in rows:
        assert (int(r["width"]), int(r["height"])) == sizes[r["image"]]
        assert float(r["bpp"]) == pytest.approx(int(r["bytes"]) * 8 / (int(r["width"]) * int(r["height"])))
        assert float(r["encode_s"]) > 0 and float(r["decode_s"]) > 0 and math.isfinite(float(r["psnr_rgb"]))
    ours = json.loads((out / "diveq.json").read_text())["results"]
    mine = sorted((r for r in rows if r["codec"] == "diveq"), key=lambda r: (r["quality"], r["image"]))
    first = [float(r["psnr_rgb"]) for r in mine if r["quality"] == mine[0]["quality"]]
    assert np.mean(first) in [pytest.approx(v) for v in ours["psnr-rgb"]]


def test_eval_resumes_without_new_rows(eval_run) -> None:
    out, args, _ = eval_run
    before = (out / "per_image.csv").read_bytes()
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert (out / "per_image.csv").read_bytes() == before
    assert "0 measurements made" in result.stderr


def test_eval_repairs_a_torn_row_and_remeasures_it(eval_run) -> None:
    out, args, _ = eval_run
    path = out / "per_image.csv"
    rows = _csv_rows(path)
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:-1]) + text[-1][:12])  # the last row cut off mid-write
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "1 measurements made" in result.stderr
    assert len(_csv_rows(path)) == len(rows)


def _rerun_with_meta(eval_run, change: Callable[[dict], None]) -> Result:
    """Re-run the eval over its folder after ``change`` edited the saved meta, then restore it."""
    out, args, _ = eval_run
    meta_path = out / "eval_meta.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    change(meta)
    meta_path.write_text(json.dumps(meta))
    try:
        return CliRunner().invoke(_app(), args)
    finally:
        meta_path.write_text(original)


@pytest.mark.parametrize("zoo_change", ["same id, other weights", "another model id"])
def test_eval_refuses_results_of_other_weights(eval_run, zoo_change: str) -> None:
    """Rows made by another zoo are never reused: not when a model's weights changed, and
    not when a new model (new id) serves the same qualities as the old one did."""
    def change(meta: dict) -> None:
        if zoo_change == "same id, other weights":
            meta["weights"] = {k: "00" * 8 for k in meta["weights"]}
        else:
            meta["weights"] = {str(int(k) + 100): v for k, v in meta["weights"].items()}

    result = _rerun_with_meta(eval_run, change)
    assert result.exit_code == 6 and "other weights" in result.stderr


@pytest.mark.parametrize("setting", ["rate_weight", "stages"])
def test_eval_refuses_results_of_a_quality_encoded_otherwise(eval_run, setting: str) -> None:
    """The same weights give other files when the card gives a quality another λ or other
    stages: those rows are not reused."""
    def change(meta: dict) -> None:
        meta["rate_points"]["2"][setting] += 1

    result = _rerun_with_meta(eval_run, change)
    assert result.exit_code == 6 and "quality 2 encoded otherwise" in result.stderr


@pytest.mark.parametrize(("effort", "recorded"), [("2", "'beam': 4"), ("3", "'refine_steps': 10")])
def test_eval_refuses_to_mix_encoder_efforts_in_one_folder(eval_run, effort: str, recorded: str) -> None:
    """Efforts 2 and 3 write other files of the same weights: a folder of effort 1's rows is refused."""
    _, args, _ = eval_run
    result = CliRunner().invoke(_app(), [*args, "--effort", effort])
    assert result.exit_code == 6 and "encoded otherwise" in result.stderr and recorded in result.stderr


@pytest.mark.parametrize("coder", [None, 1])
def test_eval_refuses_results_of_another_entropy_coder(eval_run, coder: int | None) -> None:
    """The same indices cost other bytes under another coder: rows of coder 1 (named, or
    from before the meta named the coder) are not mixed with this version's."""
    def change(meta: dict) -> None:
        assert meta.pop("coder") == 3
        if coder is not None:
            meta["coder"] = coder

    result = _rerun_with_meta(eval_run, change)
    assert result.exit_code == 6 and "entropy coder 1" in result.stderr


def test_eval_refuses_a_second_concurrent_run(eval_run) -> None:
    import fcntl

    out, args, _ = eval_run
    with (out / ".eval.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running eval holds it
        result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 6 and "another eval" in result.stderr


def test_eval_usage_errors(tiny_weights: Path, tmp_path: Path) -> None:
    app = _app()
    missing = CliRunner().invoke(app, ["eval", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 5 and "no such directory" in missing.stderr
    bad_anchor = CliRunner().invoke(app, ["eval", str(SAMPLES), "--anchors", "gif", "-o", str(tmp_path / "o")])
    assert bad_anchor.exit_code == 2
    bad_q = CliRunner().invoke(app, ["eval", str(SAMPLES), "-q", "1,x", "-o", str(tmp_path / "o")])
    assert bad_q.exit_code == 2
    bad_effort = CliRunner().invoke(app, ["eval", str(SAMPLES), "--effort", "4", "-o", str(tmp_path / "e")])
    assert bad_effort.exit_code == 2 and "effort" in bad_effort.stderr and not (tmp_path / "e").exists()


def test_bench_json(tiny_weights: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["bench", str(SAMPLES / "parrots.png"), "-q", "1", "--runs", "1",
                                         "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [c["codec"] for c in report["codecs"]][:2] == ["DiVeQ", "JPEG"]
    for c in report["codecs"]:
        assert c["encode_s"] > 0 and c["decode_s"] > 0
        assert c["bpp"] == pytest.approx(c["bytes"] * 8 / (256 * 192))
    assert report["peak_memory"]["max_rss_mib"] > 10


def test_bench_table(tiny_weights: Path) -> None:
    result = CliRunner().invoke(_app(), ["bench", str(SAMPLES / "lighthouse.png"), "--runs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "DiVeQ" in result.stdout and "JPEG" in result.stdout and "peak memory" in result.stdout
