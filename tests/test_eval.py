"""Evaluation's parts one by one: BD-rate, MS-SSIM, PSNR/bpp, the anchors, the curves and
reports, the per-image CSV, the folder's meta, the plot and the optional-package check.

tests/test_evaluation_cli.py runs `eval` and `bench` end to end.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diveq_codec.codec.container import CODER_INDEX_MODEL
from diveq_codec.codec.errors import OutputError
from diveq_codec.codec.evaluation.anchors import ANCHORS, measure, resolve_anchors
from diveq_codec.codec.evaluation.bdrate import bd_rate, why_not
from diveq_codec.codec.evaluation.curves import Curve, load_published, results_json, summarize
from diveq_codec.codec.evaluation.dependencies import missing_eval_packages, missing_message
from diveq_codec.codec.evaluation.eval_meta import META_NAME, check_meta, read_meta
from diveq_codec.codec.evaluation.msssim import MIN_SIDE, ms_ssim, ms_ssim_db
from diveq_codec.codec.evaluation.plot import plot_rd
from diveq_codec.codec.evaluation.report import (
    anchor_checks,
    bd_markdown,
    bd_table,
    matched_markdown,
    matched_rate_rows,
)
from diveq_codec.codec.evaluation.results_csv import CSV_FIELDS, ResultsCSV, locked
from diveq_codec.codec.evaluation.runner import list_images, parse_qualities
from diveq_codec.codec.metrics import bits_per_pixel, psnr

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


def test_list_images_filters_sorts_and_limits(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images(tmp_path, limit=1)] == ["a.JPG"]
    (tmp_path / "a.JPG").unlink()
    (tmp_path / "b.png").unlink()
    with pytest.raises(Exception, match="no images"):
        list_images(tmp_path)


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


# --------------------------------------------------------------------------- curves and reports

def test_results_json_is_compressai_schema_with_nan_as_null() -> None:
    summary = {"quality": [1], "bpp": [0.2], "psnr-rgb": [30.0], "ms-ssim-rgb": [math.nan],
               "encoding_time": [0.1], "decoding_time": [0.2]}
    data = results_json("X", "desc", summary, {"images": 2})
    assert data["results"]["ms-ssim-rgb"] == [None] and data["meta"] == {"quality": [1], "images": 2}
    json.dumps(data, allow_nan=False)  # valid JSON: no NaN left


def _synthetic_curve(key: str, kind: str, rate_factor: float = 1.0, psnr_shift: float = 0.0) -> Curve:
    rate, quality = _synthetic()
    return Curve(key, key.upper(), kind, list(rate * rate_factor), list(quality + psnr_shift), None, f"{key}.json")


def test_bd_table_values_notes_and_markdown() -> None:
    ours = _synthetic_curve("diveq", "ours", 0.8)
    rows = bd_table(ours, [_synthetic_curve("jpeg", "local"), _synthetic_curve("far", "published", psnr_shift=20)])
    assert rows[0]["bd_rate_percent"] == pytest.approx(-20.0, abs=1e-6) and rows[0]["note"] is None
    assert rows[0]["psnr_overlap_db"] == [26.0, 38.0]
    assert rows[1]["bd_rate_percent"] is None and "do not overlap" in rows[1]["note"]
    table = bd_markdown("DiVeQ", rows)
    assert "| JPEG | measured here | -20.0 % | 26.00–38.00 |" in table
    assert "| FAR | published (far.json) | n/a | none |" in table


def test_anchor_checks_compare_curves_of_the_same_name_only() -> None:
    mine = _synthetic_curve("jpeg", "local")
    same = Curve("pub:jpeg", "jpeg", "published", mine.bpp, [p - 0.5 for p in mine.psnr], None, "jpeg.json")
    other = Curve("pub:webp", "WEBP", "published", mine.bpp, mine.psnr, None, "webp.json")
    checks = anchor_checks([mine], [same, other])
    assert len(checks) == 1 and checks[0]["published"] == "jpeg.json"
    assert checks[0]["mean_gap_db"] == pytest.approx(0.5) and checks[0]["points"] == len(mine.bpp)


def test_plot_rd_writes_a_png(tmp_path: Path) -> None:
    ours = Curve("diveq", "DiVeQ", "ours", [0.1, 0.3], [28.0, 31.0], [0.9, 0.95])
    copies = [Curve("a", "JPEG", "published", [0.2, 0.5], [27.0, 30.0]),  # the same curve twice: drawn once
              Curve("b", "jpeg", "published", [0.2, 0.5], [27.0, 30.0], [0.9, 0.96])]
    empty = Curve("c", "Empty", "local", [math.nan], [math.nan])
    plot_rd(tmp_path / "rd.png", [*copies, empty, ours], "title")
    with Image.open(tmp_path / "rd.png") as image:
        assert image.format == "PNG" and image.size == (1760, 770)


# --------------------------------------------------------------------------- the eval folder's files

def _row(quality: int, image: str) -> dict:
    return {"codec": "jpeg", "quality": quality, "image": image, "width": 4, "height": 4, "bytes": 10,
            "bpp": 5.0, "psnr_rgb": 30.0, "ms_ssim_rgb": math.nan, "encode_s": 0.1, "decode_s": 0.1}


def test_results_csv_appends_and_repairs_a_torn_or_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "per_image.csv"
    table = ResultsCSV(path)
    assert path.read_text() == ",".join(CSV_FIELDS) + "\n"
    for quality in (1, 2, 3):
        table.append(_row(quality, "a.png"))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1].replace(",4,4,", ",four,4,") + lines[2] + lines[3][:9])  # bad, good, torn
    again = ResultsCSV(path)
    assert again.done == {("jpeg", 2, "a.png")}
    assert math.isnan(again.rows[0]["ms_ssim_rgb"])
    assert path.read_text() == lines[0] + lines[2]  # rewritten without the bad and the torn row


def test_results_csv_refuses_a_file_of_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "per_image.csv"
    path.write_text("codec,quality\njpeg,1\n")
    with pytest.raises(OutputError, match="not an eval CSV"):
        ResultsCSV(path)


def test_one_eval_per_folder(tmp_path: Path) -> None:
    with locked(tmp_path):
        with pytest.raises(OutputError, match="another eval"):
            with locked(tmp_path):
                pass
    with locked(tmp_path):  # released
        pass


def test_meta_of_a_folder_from_before_the_dct_layer_rename_still_matches(tmp_path: Path) -> None:
    old_record = {"stages": 3, "rate_weight": 0.1, "residual_step": 5.0, "residual_rounding": 0.45}
    (tmp_path / META_NAME).write_text(json.dumps({"coder": CODER_INDEX_MODEL, "rate_points": {"18": old_record}}))
    now = {"stages": 3, "rate_weight": 0.1, "layer_step": 5.0, "layer_rounding": 0.45}
    assert read_meta(tmp_path)["rate_points"]["18"] == now
    merged = check_meta(tmp_path, {"coder": CODER_INDEX_MODEL, "weights": {}, "images": {}, "rate_points": {"18": now}})
    assert merged["rate_points"] == {"18": now}
    with pytest.raises(OutputError, match="quality 18 encoded otherwise"):
        check_meta(tmp_path, {"coder": CODER_INDEX_MODEL, "rate_points": {"18": {**now, "layer_step": 6.0}}})


@pytest.mark.parametrize(("before", "named"), [(3, "entropy coder 3"), (None, "a development build's coder")])
def test_meta_refuses_files_of_another_entropy_coder(tmp_path: Path, before: int | None, named: str) -> None:
    """Rows of coder 3 (the static two-context tables), or of a folder whose meta names no
    coder, cost other bytes than this version's coder's: not mixed with them."""
    old = {"weights": {"9": "ab"}, "images": {}, "rate_points": {}}
    if before is not None:
        old["coder"] = before
    (tmp_path / META_NAME).write_text(json.dumps(old))
    with pytest.raises(OutputError, match=f"holds files of {named}, and this version writes coder {CODER_INDEX_MODEL}"):
        check_meta(tmp_path, {**old, "coder": CODER_INDEX_MODEL})
    (tmp_path / META_NAME).write_text(json.dumps({**old, "coder": CODER_INDEX_MODEL}))
    assert check_meta(tmp_path, {**old, "coder": CODER_INDEX_MODEL})["coder"] == CODER_INDEX_MODEL


def test_meta_merges_and_refuses_other_images(tmp_path: Path) -> None:
    assert read_meta(tmp_path) == {}
    first = check_meta(tmp_path, {"coder": CODER_INDEX_MODEL, "weights": {"9": "ab"}, "images": {"a.png": "1"}, "rate_points": {}})
    (tmp_path / META_NAME).write_text(json.dumps(first))
    merged = check_meta(tmp_path, {"coder": CODER_INDEX_MODEL, "weights": {"9": "ab"}, "images": {"b.png": "2"}, "rate_points": {}})
    assert merged["images"] == {"a.png": "1", "b.png": "2"}
    with pytest.raises(OutputError, match="other image a.png"):
        check_meta(tmp_path, {"coder": CODER_INDEX_MODEL, "weights": {"9": "ab"}, "images": {"a.png": "3"}, "rate_points": {}})
    (tmp_path / META_NAME).write_text("[1, 2]")
    with pytest.raises(OutputError, match="unreadable"):
        read_meta(tmp_path)


# --------------------------------------------------------------------------- optional packages

def test_missing_eval_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_eval_packages() == []  # the test extra installs the eval extra
    monkeypatch.setitem(sys.modules, "bjontegaard", None)  # as Python marks a module that cannot be imported
    monkeypatch.setitem(sys.modules, "scipy", None)
    assert missing_eval_packages() == ["scipy", "bjontegaard"]
    assert missing_message("eval", ["matplotlib"]) == "eval needs matplotlib: pip install 'diveq-codec[eval]'"
    assert missing_message("eval", ["scipy", "matplotlib", "bjontegaard"]) == (
        "eval needs scipy, matplotlib and bjontegaard: pip install 'diveq-codec[eval]'")
