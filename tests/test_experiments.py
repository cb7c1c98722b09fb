"""Smoke tests of the tools outside the codec's encode/decode path: the λ chooser
(codec/release/rate_weights.py), the probes and the quantizer study under experiments/, and
the GPU recipe. (tests/test_architecture.py checks that they use only public names.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diveq_codec.codec.release import rate_weights
from diveq_codec.codec.zoo import RatePoint, load_model, network_rate_points

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT_SCRIPTS = sorted((REPO / "experiments").rglob("*.py"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The experiments package is imported from the repository root, as `python -m` does."""
    monkeypatch.syspath_prepend(str(REPO))


def _photos(folder: Path, count: int, size: tuple[int, int] = (48, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        base = rng.integers(0, 256, size=(size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
        smooth = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)  # photo-like, not noise
        smooth.save(folder / f"photo{i}.png")
    return folder


def _load_script(path: Path):
    """A probe or script loaded as a module (its main not run)."""
    spec = importlib.util.spec_from_file_location(f"probe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", [p for p in EXPERIMENT_SCRIPTS if p.parent.name not in ("experiments", "quantizer_study")]
                         + [REPO / "scripts" / "encode_profile.py"], ids=lambda p: p.stem)
def test_probe_imports_resolve(path: Path) -> None:
    """Each probe loads (every name it imports still exists); its main only runs as a script."""
    assert callable(_load_script(path).main)


def test_gain_over_interpolates_in_log_rate_and_extends_past_the_ends() -> None:
    curve = np.array([[0.1, 20.0], [0.4, 24.0]])
    assert rate_weights.gain_over(curve, 0.2, 23.0) == pytest.approx(1.0)  # halfway in log: 22 dB
    assert rate_weights.gain_over(curve, 0.8, 27.0) == pytest.approx(1.0)  # extended: 26 dB at 0.8
    assert rate_weights.gain_over(curve, 0.05, 18.0) == pytest.approx(0.0)


def test_exact_search_beam_refuses_the_refining_effort() -> None:
    assert rate_weights.exact_search_beam(None) == 1
    assert rate_weights.exact_search_beam(2) > 1
    with pytest.raises(SystemExit):
        rate_weights.exact_search_beam(3)


def test_rate_weights_measure_on_a_tiny_image(tmp_path: Path) -> None:
    """Every (rate point, α) is coded and decoded for real; α = 0 is the nearest codewords."""
    paths = sorted(_photos(tmp_path / "photos", 1).iterdir())
    points = rate_weights.tuned_points(network_rate_points())[:2]
    loaded = load_model(points[0].model_id, "cpu")
    mean, slopes = rate_weights.measure(loaded, points, paths, beam=1)
    assert set(mean) == {(p.quality, a) for p in points for a in rate_weights.ALPHAS}
    assert slopes.shape == (loaded.model.num_stages,) and (slopes > 0).all()
    bpp_one, db_one = mean[(points[0].quality, 0.0)]
    bpp_two, db_two = mean[(points[1].quality, 0.0)]
    assert 0 < bpp_one < bpp_two and db_one < db_two  # one more stage: more bits, more PSNR
    chosen = rate_weights.choose(points, mean, slopes)
    assert set(chosen) == {p.quality for p in points} and all(v >= 0 for v in chosen.values())


def test_write_card_gives_a_layer_point_its_base_lambda(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"rate_points": [
        {"quality": 1, "stages": 1}, {"quality": 2, "stages": 2},
        {"quality": 3, "stages": 2, "layer_step": 50.0}, {"quality": 4, "stages": 4}]}))
    points = [RatePoint(q, "m", 1, s, None, None) for q, s in ((1, 1), (2, 2))]
    rate_weights.write_card(card, points, {1: 0.0, 2: 0.0123456}, "the command")
    written = json.loads(card.read_text())
    assert [rp["rate_weight"] for rp in written["rate_points"]] == [0.0, 0.01235, 0.01235, 0.0]
    assert written["rate_weight_chosen_by"] == "the command"


def test_quantizer_study_arguments(repo_on_path: None) -> None:
    from experiments.quantizer_study import study

    args = study.parse_args(["--data", "d", "--kodak", "k", "--out", "o", "--quantizers", "diveq,nsvq"])
    assert study.chosen_quantizers(args) == ["diveq", "nsvq"]
    with pytest.raises(SystemExit):
        study.chosen_quantizers(study.parse_args(["--quantizers", "diveq,nonsense"]))
    with pytest.raises(SystemExit):
        study.chosen_quantizers(study.parse_args(["--steps", "10", "--warmup-steps", "10"]))
    with pytest.raises(SystemExit):
        study.main([])  # --data, --kodak and --out are required


def test_quantizer_study_runs_end_to_end(tmp_path: Path, repo_on_path: None) -> None:
    """A few steps of one quantizer on tiny images (no Kodak): the JSON, the figure, a replot."""
    pytest.importorskip("matplotlib")
    from experiments.quantizer_study import study

    photos = _photos(tmp_path / "photos", 2, size=(64, 64))
    out = tmp_path / "out"
    argv = ["--data", str(photos), "--kodak", str(photos), "--out", str(out), "--quantizers", "sf-diveq",
            "--seeds", "1", "--steps", "4", "--warmup-steps", "2", "--lr-warmup", "1", "--batch", "2",
            "--crop", "32", "--table-batches", "1", "--table-crop", "32", "--log-tail", "2"]
    assert study.main(argv) == 0
    report = json.loads((out / "quantizer-study.json").read_text())
    assert [row["key"] for row in report["summary"]] == ["sf-diveq (c)", "sf-diveq (a)"]
    figure = out / "quantizer-study.png"
    assert figure.stat().st_size > 0
    figure.unlink()
    assert study.main(["--replot", str(out / "quantizer-study.json")]) == 0 and figure.exists()


def test_gpu_train_recipe_names_the_installed_modules() -> None:
    recipe = (REPO / "scripts" / "gpu_train.sh").read_text()
    assert "python -m diveq_codec.models.train" in recipe
    assert "python -m models." not in recipe and "python -m codec." not in recipe


def test_keep_psnr_scales_each_lambda_within_its_grid(tmp_path: Path) -> None:
    """--keep-psnr codes each tuned point with the static search alone (at its static λ) and
    with the rounds at each scale, and writes static λ × the interpolated scale into the card
    as rate_weight, keeping the static λ (λ = 0 stays 0; a layer point takes its base's scale)."""
    shipped = json.loads((Path(rate_weights.__file__).parents[2] / "weights" /
                          f"{load_model(network_rate_points()[0].model_id).card.name}.json").read_text())
    card = tmp_path / "card.json"
    card.write_text(json.dumps(shipped))
    folder = _photos(tmp_path / "photos", 1)
    assert rate_weights.main([str(folder), "--start", "0", "--every", "1", "--keep-psnr", "--card", str(card)]) == 0
    written = json.loads(card.read_text())
    for before, after in zip(shipped["rate_points"], written["rate_points"], strict=True):
        static = before["static_rate_weight"]
        assert after["static_rate_weight"] == static
        if static == 0:
            assert after["rate_weight"] == 0
        else:
            scale = after["rate_weight"] / static
            assert min(rate_weights.SCALES) - 1e-3 <= scale <= max(rate_weights.SCALES) + 1e-3
    by_stages = {rp["stages"]: rp["rate_weight"] / before["static_rate_weight"]
                 for rp, before in zip(written["rate_points"], shipped["rate_points"], strict=True)
                 if before["static_rate_weight"] > 0}
    assert len(by_stages) == 3  # the layer points' scale is their 3-stage base's
    assert "--keep-psnr" in written["rate_weight_chosen_by"] and "held out" not in written["rate_weight_chosen_by"]


def test_base_detail_probe_runs_on_a_tiny_photo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    probe = _load_script(REPO / "experiments" / "dct_layer" / "base_detail_probe.py")
    folder = _photos(tmp_path / "photos", 1, size=(64, 48))
    monkeypatch.setattr("sys.argv", ["probe", str(folder), "--start", "0", "--every", "1", "--qualities", "5",
                                     "--settings", "12000/4000,0/1"])
    probe.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 5 |")]
    assert [row.split(" | ")[2] for row in rows] == ["none", "12000/4000", "0/1"]
    assert "| +0.00 % | +0.000 dB |" in rows[0]


def test_compare_zoos_cuts_the_zoo_to_the_qualities_an_eval_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    compare = _load_script(REPO / "experiments" / "index_model" / "compare_zoos.py")
    zoo = REPO / "docs" / "kodak" / "diveq.json"
    monkeypatch.setattr("sys.argv", ["compare", str(zoo), str(zoo)])
    compare.main()
    assert "BD-rate after against before: +0.00 %" in capsys.readouterr().out
    subset = json.loads(zoo.read_text())
    subset["results"] = {key: [values[i] for i in (0, 3, 6, 9)] for key, values in subset["results"].items()}
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(subset))
    monkeypatch.setattr("sys.argv", ["compare", str(zoo), str(path), "--qualities", "1,4,7,10"])
    compare.main()
    out = capsys.readouterr().out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ") and "0." in line] == \
        ["| 1", "| 4", "| 7", "| 10"]
    assert "| +0.0 % | +0.000 |" in out and "BD-rate after against before: +0.00 %" in out


def test_quality1_search_probe_codes_each_lambda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    probe = _load_script(REPO / "experiments" / "index_model" / "quality1_search.py")
    folder = _photos(tmp_path / "photos", 2, size=(64, 48))
    monkeypatch.setattr("sys.argv", ["probe", str(folder), "--start", "0", "--every", "1", "--weights", "0,0.01"])
    probe.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0")]
    assert rows[0].startswith("| 0 |") and rows[0].endswith("| +0.00 % | +0.000 dB |")
    assert rows[1].startswith("| 0.01 |")


def test_overfitting_probe_scores_trained_and_held_out_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from diveq_codec.models.index_prior import IndexPrior, IndexPriorConfig

    probe = _load_script(REPO / "experiments" / "index_model" / "overfitting.py")
    rng = np.random.default_rng(2)
    names = [f"photo{i}.png" for i in range(9)]
    arrays = {"names": np.array(names)} | {f"{n}|2|0.01": rng.integers(0, 128, (2, 6, 8), dtype=np.uint8) for n in names}
    np.savez(tmp_path / "maps.npz", **arrays)
    prior = IndexPrior(IndexPriorConfig(stages=4, hidden=8))
    torch.save({"config": {**prior.config.__dict__, "neighbours": [list(o) for o in prior.config.neighbours]},
                "model": prior.state_dict(), "step": 3}, tmp_path / "prior.pt")
    monkeypatch.setattr("sys.argv", ["probe", str(tmp_path / "maps.npz"), str(tmp_path / "prior.pt"), "--every", "1"])
    probe.main()
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if "2|0.01" in line]
    assert len(rows) == 1 and rows[0][1] == "3"
    # an untrained model: about log2(128) = 7 bits on either side
    assert all(6.0 < float(v) < 8.0 for cell in rows[0][3:5] for v in cell.strip(" |").split(" / "))


def test_speed_floor_counts_the_shipped_layers_and_compares_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    probe = _load_script(REPO / "experiments" / "speed_floor" / "speed_floor.py")
    model = load_model(network_rate_points()[-1].model_id, "cpu").model
    n, d = model.config.channels, model.config.latent_dim
    rows: list[tuple[str, float, int]] = []
    with torch.no_grad():
        probe.timed_layers(model.synthesis, torch.zeros(1, d, 2, 2), 1, "S", rows)
    pixels = 16 * 16  # a 2×2 latent is 16×16 pixels
    # (cells the layer writes at its input's resolution, multiply-adds per cell), layer by layer
    layers = [(4, d * n * 9), (4, n * n)] + [(4, n * n * 9)] * (2 * model.config.residual_blocks) + [
        (4, 4 * n * n * 9), (16, n * n), (16, 4 * n * n * 9), (64, n * n), (64, 12 * n * 9)]
    expected = sum(cells * per_cell for cells, per_cell in layers)
    assert sum(macs for _, _, macs in rows) / pixels == pytest.approx(expected / pixels)
    folder = _photos(tmp_path / "photos", 2, size=(64, 48))
    monkeypatch.setattr("sys.argv", ["probe", "--bf16-photos", str(folder), "--every", "1"])
    probe.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("levels RMS" in line and "% of values differ" in line for line in lines)


def test_bench_large_mosaic_takes_a_crop_of_each_photo_in_turn(tmp_path: Path) -> None:
    bench = _load_script(REPO / "scripts" / "bench_large.py")
    folder = _photos(tmp_path / "photos", 3, size=(64, 48))
    Image.new("RGB", (10, 10)).save(folder / "small.png")  # smaller than a cell: skipped
    image = np.asarray(bench.mosaic(100, 70, folder, cell=(40, 30)))
    assert image.shape == (70, 100, 3)
    crops = [np.asarray(Image.open(folder / f"photo{i}.png"))[:30, :40] for i in range(3)]
    # 3 × 3 cells in raster order, the photos repeated: cell (r, c) is photo (3r + c) mod 3
    for r, c in [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]:
        cell = image[30 * r:30 * r + 30, 40 * c:40 * c + 40]
        np.testing.assert_array_equal(cell, crops[(3 * r + c) % 3][:cell.shape[0], :cell.shape[1]])


def test_png_level_probe_writes_each_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    probe = _load_script(REPO / "experiments" / "png_level" / "png_level.py")
    folder = _photos(tmp_path / "photos", 7, size=(64, 48))
    monkeypatch.setattr("sys.argv", ["probe", str(folder), "-q", "4", "--levels", "1", "--every", "1", "--count", "2"])
    probe.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "quality 4, 2 images:" and out[1].startswith("  level 1:")
    assert out[2].startswith("  level 6:") and out[2].endswith("(+0.0 %)")
