"""The index model's training (models/train_index_prior.py): a few real steps on tiny maps,
resume, the held-out report, several map files, keeping each stage's best, and a warm start
onto more neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec.zoo import weights_dir
from diveq_codec.models.index_prior import NEIGHBOURS, WIDE_NEIGHBOURS, IndexPrior, IndexPriorConfig, stage_inputs
from diveq_codec.codec.release.index_maps import image_name
from diveq_codec.models.train_index_prior import load_maps, main, padded_codebooks, pooled_stage_bits, rescored, warm_start


def shipped_weights() -> Path:
    return next(p for p in sorted(weights_dir().glob("*.safetensors")))


def tiny_maps(path: Path, seed: int = 5, photos: int = 9) -> Path:
    """Nine photos' maps at two searches: photo 0 is held out (one in eight, by sorted name)."""
    rng = np.random.default_rng(seed)
    names = [f"photo{i}.png" for i in range(photos)]
    arrays = {"names": np.array(names)}
    for name in names:
        arrays[f"{name}|1|0.0"] = rng.integers(0, 128, (1, 10, 14), dtype=np.uint8)
        arrays[f"{name}|2|0.01"] = rng.integers(0, 128, (2, 10, 14), dtype=np.uint8)
    np.savez(path, **arrays)
    return path


def test_trains_resumes_and_reports_the_held_out_photos(tmp_path: Path) -> None:
    maps, out = tiny_maps(tmp_path / "maps.npz"), tmp_path / "run"
    args = [str(maps), str(shipped_weights()), str(out), "--hidden", "8", "--batch", "2", "--window", "8",
            "--threads", "1", "--checkpoint-every", "0"]
    main([*args, "--time-budget", "1"])
    first = torch.load(out / "checkpoint.pt", weights_only=False)
    assert first["step"] > 0 and first["config"]["hidden"] == 8
    report = json.loads((out / "holdout_bits.json").read_text())
    # random indices: about log2(128) = 7 bits each, whatever a few steps learned
    assert set(report) == {"1|0.0", "2|0.01"} and len(report["2|0.01"]) == 2
    assert all(5.0 < bits < 9.0 for values in report.values() for bits in values), report
    main([*args, "--time-budget", "2"])
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] > first["step"]  # resumed, went on


def test_warm_start_onto_more_neighbours_keeps_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    narrow = IndexPrior(IndexPriorConfig(stages=2, codes=16, latent_dim=4, hidden=8))
    for parameter in narrow.parameters():  # trained-looking: nothing at its initial value
        parameter.data.normal_(0.0, 0.3)
    checkpoint = tmp_path / "narrow.pt"
    torch.save({"config": {**narrow.config.__dict__, "neighbours": [list(o) for o in NEIGHBOURS]},
                "model": narrow.state_dict()}, checkpoint)
    wide = IndexPrior(IndexPriorConfig(stages=2, codes=16, latent_dim=4, hidden=8, neighbours=WIDE_NEIGHBOURS))
    warm_start(wide, checkpoint)
    maps = torch.randint(0, 16, (3, 2, 9, 11))
    books = torch.randn(2, 16, 4)
    for stage in range(2):
        narrow_logits = narrow.stages[stage](*stage_inputs(maps, stage, books, narrow.config))
        wide_logits = wide.stages[stage](*stage_inputs(maps, stage, books, wide.config))
        torch.testing.assert_close(wide_logits, narrow_logits)
    assert float(wide.stages[0].neighbours.detach().abs().sum()) == float(narrow.stages[0].neighbours.detach().abs().sum())


def test_several_map_files_hold_out_the_same_photos(tmp_path: Path) -> None:
    # the second file has photos 0-4 only (the full-size photos are a subset of the trainpack)
    first, second = tiny_maps(tmp_path / "a.npz"), tiny_maps(tmp_path / "b.npz", seed=6, photos=5)
    train, held_out, validation = load_maps([first, second], validation=True)
    assert len(held_out) == 3 * 2  # photo 0 in both files and photo 8, two searches each
    assert len(validation) == 2 * 2  # photo 4 in both files
    assert len(train) == (9 + 5) * 2 - 10
    with np.load(first) as a, np.load(second) as b:
        assert any(np.array_equal(m, a["photo0.png|2|0.01"]) for _, m in held_out)
        assert any(np.array_equal(m, b["photo0.png|2|0.01"]) for _, m in held_out)
        assert any(np.array_equal(m, b["photo4.png|1|0.0"]) for _, m in validation)
    assert image_name(Path("/data/train/bsds500/test/1.jpg"), Path("/data/train")) == "bsds500__test__1.jpg"


def test_keep_best_ships_each_stage_at_its_best_validation_score(tmp_path: Path) -> None:
    maps, out = tiny_maps(tmp_path / "maps.npz"), tmp_path / "run"
    args = [str(shipped_weights()), str(out), "--hidden", "8", "--batch", "2", "--window", "8",
            "--threads", "1", "--checkpoint-every", "0", "--keep-best"]
    main([str(maps), *args, "--time-budget", "1"])
    # resumed with more maps: the kept states are scored again on the new validation photos
    main([str(maps), str(tiny_maps(tmp_path / "more.npz", seed=7)), *args, "--time-budget", "2"])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    best = torch.load(out / "best.pt", weights_only=False)
    assert [kept[0] for kept in state["best"]] == best["best_bits"]
    for m, (_, kept) in enumerate(state["best"]):
        for key, value in kept.items():
            assert torch.equal(best["model"][f"stages.{m}.{key}"], value)


def test_logits_at_chosen_positions_are_those_of_the_whole_map() -> None:
    torch.manual_seed(1)
    prior = IndexPrior(IndexPriorConfig(stages=2, codes=16, latent_dim=4, hidden=8))
    maps = torch.randint(0, 16, (2, 2, 7, 9))
    books = torch.randn(2, 16, 4)
    where = torch.rand(2, 7, 9) < 0.4
    for stage in range(2):
        inputs = stage_inputs(maps, stage, books, prior.config)
        whole = prior.stages[stage](*inputs)
        assert whole.shape == (2, 7, 9, 16)
        torch.testing.assert_close(prior.stages[stage](*inputs, where=where), whole[where])


def test_kept_states_are_scored_again_on_new_validation_photos(tmp_path: Path) -> None:
    torch.manual_seed(3)
    prior = IndexPrior(IndexPriorConfig(stages=2, hidden=8))
    other = IndexPrior(IndexPriorConfig(stages=2, hidden=8))
    _, _, validation = load_maps([tiny_maps(tmp_path / "maps.npz")], validation=True)
    books = padded_codebooks(shipped_weights(), 2)
    best = [(-1.0, other.stages[0].state_dict()), None]  # a score from other photos
    again = rescored(prior, best, validation, books)
    assert again[1] is None and again[0][1] is best[0][1]
    assert again[0][0] == pooled_stage_bits(other, validation, books)[0] != pooled_stage_bits(prior, validation, books)[0]
