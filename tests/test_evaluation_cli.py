"""`eval` and `bench` end to end, `record_rd` on their output, and the optional packages.

The runs use a tiny randomly initialised model exported with codec.release.export into a
temp folder, so they test the eval machinery, not how good any trained model is.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner, Result

from diveq_codec.codec.evaluation.anchors import ANCHORS
from diveq_codec.codec.evaluation.results_csv import CSV_FIELDS
from diveq_codec.codec.evaluation.runner import EvalOptions, run_eval

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random model with 2 rate points, exported the real way, made the zoo; export
    writes no index model, so a small random one is added, as index_model_export would."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from diveq_codec.codec import cards, zoo
    from diveq_codec.codec.release import export
    from diveq_codec.models.autoencoder import VQAutoencoder
    from diveq_codec.models.config import ModelConfig
    from diveq_codec.models.weights_file import file_sha256

    sys.path.insert(0, str(Path(__file__).parent))
    from index_models import random_tensors  # tests/index_models.py

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
    weights, card_path = out / "tiny.safetensors", out / "tiny.json"
    with safe_open(str(weights), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    index_tensors = random_tensors(0, stages=config.num_stages, codes=config.num_codes, dim=config.latent_dim)
    save_file({**tensors, **{k: torch.from_numpy(v) for k, v in index_tensors.items()}}, str(weights),
              metadata=metadata)
    card = json.loads(card_path.read_text())
    card.update(sha256=file_sha256(weights), bytes=weights.stat().st_size)
    card_path.write_text(json.dumps(card))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cards.WEIGHTS_DIR_ENV, str(out))
        yield out
    zoo.clear_model_cache()


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


@pytest.mark.parametrize(("coder", "named"), [(None, "a development build's coder"), (1, "entropy coder 1"),
                                              (3, "entropy coder 3")])
def test_eval_refuses_results_of_another_entropy_coder(eval_run, coder: int | None, named: str) -> None:
    """The same indices cost other bytes under another coder: rows of coders 1 and 3 (the
    static tables of development builds), or of a folder whose meta names no coder, are not
    mixed with this version's."""
    from diveq_codec.codec.container import CODER_INDEX_MODEL

    def change(meta: dict) -> None:
        assert meta.pop("coder") == CODER_INDEX_MODEL
        if coder is not None:
            meta["coder"] = coder

    result = _rerun_with_meta(eval_run, change)
    assert result.exit_code == 6 and f"{named}, and this version writes coder {CODER_INDEX_MODEL}" in result.stderr


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


def test_bench_table_needs_no_eval_extra(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "scipy", "matplotlib", "bjontegaard")
    result = CliRunner().invoke(_app(), ["bench", str(SAMPLES / "lighthouse.png"), "--runs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["codec", "q", "bytes", "bpp", "PSNR", "dB", "encode", "s", "decode", "s"]
    assert [line.split()[0] for line in lines[2:-1]][:2] == ["DiVeQ", "JPEG"]
    assert lines[-1].startswith("peak memory: process max RSS")


# --------------------------------------------------------------------------- progress, interrupt, quiet

class _RecordingProgress:
    """A progress factory for run_eval that records what it is told (and can interrupt)."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.totals: list[int] = []
        self.details: list[str] = []
        self.interrupt_after = interrupt_after

    def __call__(self, total: int) -> contextlib.AbstractContextManager[_RecordingProgress]:
        self.totals.append(total)
        return contextlib.nullcontext(self)

    def advance(self, steps: int = 1, detail: str = "") -> None:
        self.details.append(detail)
        if self.interrupt_after is not None and len(self.details) >= self.interrupt_after:
            raise KeyboardInterrupt


def _copy_of(eval_run, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(eval_run[0], out)
    return out


def test_run_eval_counts_progress_and_keeps_rows_when_interrupted(eval_run, tmp_path: Path) -> None:
    """Progress is told only the measurements still to make; an interrupt keeps every row
    measured so far and says how to resume."""
    out = _copy_of(eval_run, tmp_path)
    path = out / "per_image.csv"
    lines = path.read_text().splitlines(keepends=True)
    rows = len(lines) - 1
    path.write_text("".join(lines[:-3]))  # the last three rows (JPEG q=85, 90, 95 of parrots.png) gone
    opts = EvalOptions(SAMPLES, out, [1, 2], [ANCHORS["jpeg"]], device="cpu")
    said: list[str] = []
    interrupting = _RecordingProgress(interrupt_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_eval(opts, say=said.append, progress=interrupting)
    assert interrupting.totals == [3] and len(_csv_rows(path)) == rows - 2
    assert said == [f"{rows - 2} rows kept in {path}; run the same command again to resume"]

    recording = _RecordingProgress()
    result = run_eval(opts, progress=recording)
    assert recording.totals == [2] and recording.details == ["jpeg q=90 parrots.png", "jpeg q=95 parrots.png"]
    assert (result.measured, result.skipped) == (2, rows - 2)
    assert path.read_text().splitlines()[0] == lines[0].strip() and len(_csv_rows(path)) == rows


def test_eval_quiet_drops_notes_but_not_results(eval_run, tmp_path: Path) -> None:
    out = _copy_of(eval_run, tmp_path)
    published = tmp_path / "published"
    published.mkdir()
    (published / "junk.json").write_text("[1, 2]")
    args = [*eval_run[1][:-1], str(out), "--published", str(published)]
    loud = CliRunner().invoke(_app(), args)
    quiet = CliRunner().invoke(_app(), [*args, "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "diveq-codec: note: published junk.json skipped" in loud.stderr
    assert "note:" not in quiet.stderr
    assert quiet.stdout == loud.stdout and "0 measurements made" in quiet.stderr


# --------------------------------------------------------------------------- optional packages

def _hide(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make ``packages`` (and their loaded submodules) unimportable, as if not installed."""
    for name in list(sys.modules):
        if name in packages or name.split(".")[0] in packages:
            monkeypatch.setitem(sys.modules, name, None)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(("hidden", "named"), [
    (["matplotlib"], "matplotlib"),
    (["scipy", "matplotlib", "bjontegaard"], "scipy, matplotlib and bjontegaard"),
])
def test_eval_without_the_eval_extra_is_one_line_before_any_work(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hidden: list[str], named: str) -> None:
    _hide(monkeypatch, *hidden)
    result = CliRunner().invoke(_app(), ["eval", str(SAMPLES), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr == f"diveq-codec: error: eval needs {named}: pip install 'diveq-codec[eval]'\n"
    assert not (tmp_path / "out").exists()


def test_evaluation_commands_import_no_torch() -> None:
    """`diveq-codec --help` loads this module: torch and the engine wait for a command to run."""
    code = ("import sys, diveq_codec.codec.cli.evaluation_commands; "
            "print([m for m in ('torch', 'diveq_codec.codec.evaluation.runner') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- record_rd

def test_record_rd_copies_eval_numbers_into_the_card(eval_run, tiny_weights: Path, tmp_path: Path) -> None:
    from diveq_codec.codec.cards import card_rate_points, read_card
    from diveq_codec.codec.release import record_rd

    out = eval_run[0]
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_weights / "tiny.json", weights)
    assert record_rd.main([str(out / "diveq.json"), "--weights", str(weights), "--command", "the command"]) == 0
    results = json.loads((out / "diveq.json").read_text())
    measured = dict(zip(results["meta"]["quality"], results["results"]["bpp"]))
    card = read_card(weights / "tiny.json")
    points = card_rate_points(card)
    assert {p.quality: p.kodak_bpp for p in points} == {q: round(b, 4) for q, b in measured.items()}
    assert all(p.kodak_psnr is not None for p in points)
    assert card.data["kodak_eval"]["command"] == "the command" and card.data["kodak_eval"]["images"] == 2

    other = tmp_path / "other-weights-eval"  # the same results, measured (says the meta) with other weights
    other.mkdir()
    shutil.copy(out / "diveq.json", other)
    meta = json.loads((out / "eval_meta.json").read_text())
    meta["weights"] = {k: "00" * 8 for k in meta["weights"]}
    (other / "eval_meta.json").write_text(json.dumps(meta))
    before = (weights / "tiny.json").read_bytes()
    assert record_rd.main([str(other / "diveq.json"), "--weights", str(weights)]) == 1
    assert (weights / "tiny.json").read_bytes() == before
