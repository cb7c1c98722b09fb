"""The training entry point: a few real steps on CPU, resume, and DDP with gloo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diveq_codec.models.train import (
    LOG_MSE_FLOOR,
    TrainLog,
    learning_rate,
    psnr_from_mse,
    training_loss,
)

TINY = ["--channels", "8", "--latent-dim", "8", "--stages", "2", "--codes", "16", "--crop", "32",
        "--batch", "2", "--warmup-steps", "2", "--log-every", "2", "--threads", "1"]


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diveq_codec.models.train", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])


def test_trains_logs_and_resumes(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _train("--data", str(image_folder), "--out", str(out), "--steps", "4", *TINY)
    assert first.returncode == 0, first.stderr
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert all(np.isfinite(r["loss"]) and "images_per_s" in r and "perplexity" in r for r in log)
    assert len(log[-1]["perplexity"]) == 2  # one per residual stage once quantizing
    second = _train("--data", str(image_folder), "--out", str(out), "--steps", "6", "--resume", *TINY)
    assert second.returncode == 0, second.stderr
    assert "resumed at step 4" in second.stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and "optimizer" in state
    assert "optimizer" not in torch.load(out / "model.pt", weights_only=True)


def test_time_budget_stops_cleanly(image_folder: Path, tmp_path: Path) -> None:
    result = _train("--data", str(image_folder), "--out", str(tmp_path / "r"), "--time-budget", "0", *TINY)
    assert result.returncode == 0 and (tmp_path / "r" / "model.pt").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_two_cpu_processes_with_gloo(image_folder: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out: Path) -> tuple[subprocess.CompletedProcess[str], str]:
        # Generous limit: this test took 206 s on a 2-core machine that was also training.
        result = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "diveq_codec.models.train", "--data",
             str(image_folder), "--out", str(out), "--steps", "6", *TINY],
            capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[1])
        # What the ranks printed, without torchrun's own report of their exit codes.
        return result, result.stderr.split("torch/distributed/elastic/multiprocessing/api.py")[0][-4000:]

    out = tmp_path / "ddp"
    result, ranks_output = launch(out)
    if result.returncode != 0 and "(SIGABRT)" in result.stderr:
        # One CI run in about a dozen saw a rank abort inside gloo with no Python error, never
        # reproduced here (60 runs, idle and loaded): retry once, loudly; a second abort fails.
        warnings.warn(f"DDP run aborted (SIGABRT); retrying once. The ranks printed:\n{ranks_output}")
        out = tmp_path / "ddp-retry"
        result, ranks_output = launch(out)
    assert result.returncode == 0, ranks_output
    assert "2 process(es)" in result.stderr
    assert torch.load(out / "model.pt", weights_only=True)["step"] == 6


def test_schedule_ends_with_the_time_budget() -> None:
    assert learning_rate(0, 1000, 1.0) == pytest.approx(1 / 200)
    assert learning_rate(200, 1000, 1.0) == pytest.approx(1.0)
    assert learning_rate(300, 10**6, 1.0, time_fraction=1.0) == pytest.approx(0.05)
    assert learning_rate(10**6, 10**6, 1.0) == pytest.approx(0.05)


def _export(checkpoint: Path, name: str, model_id: int, data: Path, out: Path,
            *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diveq_codec.codec.release.export", str(checkpoint), "--name", name, "--model-id",
                           str(model_id), "--data", str(data), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.slow  # over 10 s on the 2-core machine
def test_fine_tunes_from_a_checkpoint_and_from_shipped_weights(image_folder: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert _train("--data", str(image_folder), "--out", str(base), "--steps", "4", *TINY).returncode == 0
    export = _export(base / "model.pt", "tiny", 9, image_folder, tmp_path / "w")
    assert export.returncode == 0, export.stderr
    for source in (base / "model.pt", tmp_path / "w" / "tiny.safetensors"):
        out = tmp_path / f"ft-{source.suffix[1:]}"
        # --channels 4 must be ignored: the architecture comes from the initial weights.
        result = _train("--data", str(image_folder), "--out", str(out), "--steps", "2", "--init", str(source),
                        *TINY, "--channels", "4")
        assert result.returncode == 0, result.stderr
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert len(log[0]["perplexity"]) == 2  # quantizing from the first step: no warm-up
        state = torch.load(out / "model.pt", weights_only=True)
        assert state["config"]["channels"] == 8 and state["init_from"]["path"] == str(source)
    assert len(torch.load(tmp_path / "ft-safetensors" / "model.pt", weights_only=True)["init_from"]["sha256"]) == 64
    # The exported card names where the fine-tuning started.
    assert _export(tmp_path / "ft-pt" / "model.pt", "tiny-ft", 10, image_folder, tmp_path / "w").returncode == 0
    card = json.loads((tmp_path / "w" / "tiny-ft.json").read_text())
    assert card["training"]["steps"] == 2 and card["training"]["initialised_from"]["steps"] == 4
    # From shipped weights, --base-card carries that model's training record; a wrong card is refused.
    base = ["--base-card", str(tmp_path / "w" / "tiny.json")]
    assert _export(tmp_path / "ft-safetensors" / "model.pt", "tiny-ft2", 11, image_folder, tmp_path / "w",
                   *base).returncode == 0
    started = json.loads((tmp_path / "w" / "tiny-ft2.json").read_text())["training"]["initialised_from"]
    assert started["name"] == "tiny" and started["training"]["steps"] == 4
    wrong = _export(tmp_path / "ft-pt" / "model.pt", "tiny-ft3", 12, image_folder, tmp_path / "w", *base)
    assert wrong.returncode != 0 and "started from" in wrong.stderr
    # A chain of unshipped runs back to the shipped model: --via names each, nearest first.
    middle = tmp_path / "ft-safetensors" / "model.pt"
    assert _train("--data", str(image_folder), "--out", str(tmp_path / "chain"), "--steps", "3", "--init", str(middle),
                  *TINY).returncode == 0
    assert len(torch.load(tmp_path / "chain" / "model.pt", weights_only=True)["init_from"]["sha256"]) == 64
    chained = _export(tmp_path / "chain" / "model.pt", "tiny-chain", 13, image_folder, tmp_path / "w", *base,
                      "--via", str(middle), "--via-command", "the middle run")
    assert chained.returncode == 0, chained.stderr
    record = json.loads((tmp_path / "w" / "tiny-chain.json").read_text())["training"]
    assert record["steps"] == 3
    middle_record = record["initialised_from"]["training"]
    assert middle_record["command"] == "the middle run" and middle_record["steps"] == 2
    assert middle_record["initialised_from"]["name"] == "tiny"
    assert middle_record["initialised_from"]["training"]["steps"] == 4
    stranger = _export(tmp_path / "chain" / "model.pt", "tiny-chain2", 14, image_folder, tmp_path / "w", *base,
                       "--via", str(tmp_path / "ft-pt" / "model.pt"), "--via-command", "not it")
    assert stranger.returncode != 0 and "not the checkpoint the run started from" in stranger.stderr


def test_shipped_weights_re_export_with_new_tables(image_folder: Path, tmp_path: Path) -> None:
    """A shipped .safetensors with its own card ships again under a new id: same network,
    freshly measured static tables (the rate term's), the card's training record kept; no
    index model (codec/release/index_model_export.py adds one) and no second-context tables."""
    from diveq_codec.codec.zoo import read_weights_file

    base = tmp_path / "base"
    assert _train("--data", str(image_folder), "--out", str(base), "--steps", "4", *TINY).returncode == 0
    assert _export(base / "model.pt", "tiny", 9, image_folder, tmp_path / "w").returncode == 0
    shipped = tmp_path / "w" / "tiny.safetensors"
    again = _export(shipped, "tiny-again", 10, image_folder, tmp_path / "w2", "--base-card",
                    str(tmp_path / "w" / "tiny.json"))
    assert again.returncode == 0, again.stderr
    card, new_card = (json.loads(p.read_text()) for p in (tmp_path / "w" / "tiny.json",
                                                        tmp_path / "w2" / "tiny-again.json"))
    assert new_card["model_id"] == 10 and new_card["training"]["reexported_from"]["sha256"] == card["sha256"]
    assert new_card["training"]["steps"] == card["training"]["steps"] == 4
    _, old_net, old_tables, old_index = read_weights_file(shipped)
    _, new_net, new_tables, new_index = read_weights_file(tmp_path / "w2" / "tiny-again.safetensors")
    assert set(old_net) == set(new_net) and all(torch.equal(old_net[k], new_net[k]) for k in old_net)
    assert np.array_equal(old_tables, new_tables) and new_tables.min() >= 1
    assert old_index == new_index == {}
    assert not any("second" in k for k in new_net) and "second_tensor" not in new_card["entropy_tables"]
    unmatched = _export(shipped, "tiny-x", 11, image_folder, tmp_path / "w3")
    assert unmatched.returncode != 0 and "needs its own card" in unmatched.stderr


def test_log_mse_counts_a_db_the_same_in_every_crop() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])
    objective, mse = training_loss(x_hat, x, "mse")
    assert objective == mse and mse.item() == pytest.approx((0.01 + 0.0001) / 2)
    objective, mse = training_loss(x_hat, x, "log-mse")
    expected = (np.log10(0.01 + LOG_MSE_FLOOR) + np.log10(0.0001 + LOG_MSE_FLOOR)) / 2
    assert objective.item() == pytest.approx(expected, rel=1e-5) and mse.item() == pytest.approx(0.00505)
    # Halving the error of either crop lowers the objective by the same amount.
    better_first = training_loss(torch.stack([x_hat[0] / 2**0.5, x_hat[1]]), x, "log-mse")[0]
    better_second = training_loss(torch.stack([x_hat[0], x_hat[1] / 2**0.5]), x, "log-mse")[0]
    assert (objective - better_first).item() == pytest.approx((objective - better_second).item(), rel=0.15)
    with pytest.raises(ValueError):
        training_loss(x_hat, x, "l1")


@pytest.mark.slow  # over 10 s on the 2-core machine
def test_grows_residual_blocks_on_a_trained_model(image_folder: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert _train("--data", str(image_folder), "--out", str(base), "--steps", "4", *TINY).returncode == 0
    out = tmp_path / "grown"
    result = _train("--data", str(image_folder), "--out", str(out), "--steps", "2", "--init", str(base / "model.pt"),
                    "--residual-blocks", "1", "--loss", "log-mse", *TINY)
    assert result.returncode == 0, result.stderr
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["config"]["residual_blocks"] == 1 and state["init_from"]["grown_residual_blocks"] == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0 < log[-1]["mse"]  # log10 of an MSE below 1, and the MSE itself
    # Fine-tuning the grown model keeps its blocks, whether or not the flag repeats them.
    for extra in ((), ("--residual-blocks", "1")):
        again = tmp_path / f"again{len(extra)}"
        result = _train("--data", str(image_folder), "--out", str(again), "--steps", "1", "--init",
                        str(out / "model.pt"), *extra, *TINY)
        assert result.returncode == 0, result.stderr
        assert torch.load(again / "model.pt", weights_only=True)["config"]["residual_blocks"] == 1
    # Blocks cannot be removed or regrown: one line, no traceback.
    refused = _train("--data", str(image_folder), "--out", str(tmp_path / "no"), "--steps", "1", "--init",
                     str(out / "model.pt"), "--residual-blocks", "0", *TINY)
    assert refused.returncode != 0 and "already has 1 residual blocks" in refused.stderr
    assert "Traceback" not in refused.stderr


def _finetune_decoder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diveq_codec.codec.release.decoder_finetune", *args], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.slow  # over 10 s on the 2-core machine
def test_decoder_finetune_trains_only_the_synthesis_and_exports(image_folder: Path, tmp_path: Path) -> None:
    from diveq_codec.codec.zoo import read_weights_file

    assert _train("--data", str(image_folder), "--out", str(tmp_path / "base"), "--steps", "4", *TINY).returncode == 0
    assert _export(tmp_path / "base" / "model.pt", "tiny", 9, image_folder, tmp_path / "w").returncode == 0
    weights, card_path = tmp_path / "w" / "tiny.safetensors", tmp_path / "w" / "tiny.json"
    card = json.loads(card_path.read_text())
    card["rate_points"][1]["rate_weight"] = 0.5  # one entropy-constrained point, coded as the encoder codes it
    card_path.write_text(json.dumps(card))
    out = tmp_path / "dec"
    # Images whose latent grid (10×11 cells) holds a 2-cell crop and the tiny synthesis's 4 cells of context.
    larger = tmp_path / "larger"
    larger.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 88, 3), dtype=np.uint8)).save(larger / f"{i}.png")
    common = ["--weights", str(weights), "--card", str(card_path), "--data", str(larger), "--out", str(out),
              "--crop-cells", "2", "--batch", "2", "--holdout-every", "3", "--log-every", "1", "--threads", "1",
              "--lr", "1e-3"]
    first = _finetune_decoder(*common, "--steps", "3")
    assert first.returncode == 0, first.stderr
    second = _finetune_decoder(*common, "--steps", "5", "--resume")
    assert second.returncode == 0 and "resumed at step 3" in second.stderr, second.stderr
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["step"] == 5 and state["init_from"]["sha256"] == card["sha256"]
    assert state["init_from"]["coded_at"] == [{"stages": 1, "rate_weight": 0.0}, {"stages": 2, "rate_weight": 0.5}]
    _, original, tables, index_tensors = read_weights_file(weights)
    assert index_tensors == {}  # export writes the network and its static tables only
    changed = {name for name, tensor in original.items() if not torch.equal(tensor, state["model"][name])}
    assert changed and all(name.startswith("synthesis.") for name in changed)
    # Held out (image 0 of 3): its PSNR per rate point before training and after each run.
    holdout = [json.loads(line) for line in (out / "holdout.jsonl").read_text().splitlines()]
    assert [r["step"] for r in holdout] == [0, 3, 5] and all(len(r["psnr_per_rate_point"]) == 2 for r in holdout)
    assert holdout[0]["images"] == 1
    # Exported, it keeps the card's rate points and the encoder's tables.
    export = _export(out / "model.pt", "tiny-dec", 10, image_folder, tmp_path / "w2", "--base-card", str(card_path),
                     "--rate-points-from", str(card_path))
    assert export.returncode == 0, export.stderr
    new_card = json.loads((tmp_path / "w2" / "tiny-dec.json").read_text())
    assert [(p["stages"], p["rate_weight"]) for p in new_card["rate_points"]] == [(1, 0.0), (2, 0.5)]
    assert new_card["training"]["initialised_from"]["trained"] == "synthesis only"
    _, new_network, new_tables, new_index = read_weights_file(tmp_path / "w2" / "tiny-dec.safetensors")
    assert np.array_equal(tables, new_tables) and new_index == {}
    assert not any("second" in k for k in new_network)
    # Tables measured on the encoder's choices count each rate point's: stage 1 twice (both
    # points use it), stage 2 once; without --rate-points-from the option is refused.
    at_points = _export(out / "model.pt", "tiny-dec2", 11, image_folder, tmp_path / "w3", "--base-card",
                        str(card_path), "--rate-points-from", str(card_path), "--tables-at-rate-points")
    assert at_points.returncode == 0, at_points.stderr
    _, _, point_tables, _ = read_weights_file(tmp_path / "w3" / "tiny-dec2.safetensors")
    raw, raw_points = (t.sum(axis=(1, 2)) - t[0].size for t in (tables, point_tables))
    assert raw_points.tolist() == [2 * raw[0], raw[1]]
    refused = _export(out / "model.pt", "tiny-dec3", 12, image_folder, tmp_path / "w4", "--tables-at-rate-points")
    assert refused.returncode != 0 and "needs --rate-points-from" in refused.stderr
    # Or copied from the model the decoder was fine-tuned against; not from one with another encoder.
    copied = _export(out / "model.pt", "tiny-dec4", 13, image_folder, tmp_path / "w5", "--tables-from",
                     str(tmp_path / "w3" / "tiny-dec2.json"))
    assert copied.returncode == 0, copied.stderr
    _, _, copied_tables, _ = read_weights_file(tmp_path / "w5" / "tiny-dec4.safetensors")
    assert np.array_equal(copied_tables, point_tables)
    assert json.loads((tmp_path / "w5" / "tiny-dec4.json").read_text())["entropy_tables"]["copied_from"]["name"] == "tiny-dec2"
    assert _train("--data", str(image_folder), "--out", str(tmp_path / "other"), "--steps", "4", "--seed", "1",
                  *TINY).returncode == 0
    foreign = _export(tmp_path / "other" / "model.pt", "tiny-x", 14, image_folder, tmp_path / "w6", "--tables-from",
                      str(card_path))
    assert foreign.returncode != 0 and "do not fit" in foreign.stderr
    # A card that is not the weights' own is refused.
    card["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    wrong = _finetune_decoder(*common, "--steps", "1", "--out", str(tmp_path / "x"))
    assert wrong.returncode != 0 and "is not the card of" in wrong.stderr


def test_decoder_finetune_scores_crops_as_the_whole_image_decodes_them() -> None:
    """Each crop is decoded from a window of latents that covers its receptive field, so the
    scored pixels equal the whole-image decode's, borders of the image included."""
    from diveq_codec.models.autoencoder import VQAutoencoder
    from diveq_codec.models.config import ModelConfig
    from diveq_codec.codec.release.decoder_finetune import (
        ChoiceCropSampler,
        CodedImage,
        latent_of,
        scored_crops,
    )

    torch.manual_seed(0)
    model = VQAutoencoder(ModelConfig(channels=8, latent_dim=8, downsamplings=3, num_stages=2, num_codes=16))
    indices = torch.randint(0, 16, (2, 12, 14), dtype=torch.uint8)
    with torch.no_grad():
        whole = model.synthesis(latent_of(model, indices)[None])[0].clamp(0, 1)
    # The image is the whole decode itself, so a crop's target is what the whole decode gave there.
    image = CodedImage((whole * 255).round().to(torch.uint8), [indices])
    sampler = ChoiceCropSampler([image], cells=3, context=4, stride=8, generator=torch.Generator().manual_seed(1))
    latents, targets, offsets = sampler.batch(model, 16)
    assert latents.shape[-1] == 11 and any(o != (4, 4) for o in offsets)  # some windows clipped at the edges
    with torch.no_grad():
        crops = scored_crops(model.synthesis(latents), offsets, 3, 8).clamp(0, 1)
    assert torch.allclose(crops, targets, atol=0.5 / 255 + 1e-4)
    # Without the context the crops decode otherwise.
    bare = ChoiceCropSampler([image], cells=3, context=0, stride=8, generator=torch.Generator().manual_seed(1))
    latents, targets, offsets = bare.batch(model, 16)
    with torch.no_grad():
        crops = scored_crops(model.synthesis(latents), offsets, 3, 8).clamp(0, 1)
    assert not torch.allclose(crops, targets, atol=0.5 / 255 + 1e-4)


def test_train_log_writes_window_means_when_due(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = TrainLog(tmp_path / "train_log.jsonl", every=2, elapsed_before=100.0)
    for step, (loss, mse) in enumerate([(1.0, 0.01), (3.0, 0.03), (5.0, 0.05), (7.0, 0.07)], start=1):
        log.add(loss, mse, 8)
        if log.due(step):
            log.write(step, lr=1e-3, replaced=0)
    assert not log.due(6)  # a multiple of every, but nothing added since the last record
    log.close()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert records[0]["loss"] == pytest.approx(2.0) and records[1]["mse"] == pytest.approx(0.06)
    assert records[1]["psnr"] == pytest.approx(psnr_from_mse(0.06)) and records[1]["replaced"] == 0
    assert all(r["elapsed_s"] >= 100.0 and r["images_per_s"] > 0 for r in records)
    assert capsys.readouterr().err.count('"step"') == 2  # the same lines on stderr
