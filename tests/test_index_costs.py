"""The encoder's rate term from the index model (codec/index_costs.py): the coder's own code
lengths, exact numbers, and rounds that end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diveq_codec.codec import index_costs
from diveq_codec.codec.index_coder import StageCoding
from tests.index_models import random_model


def _coder_bits(model, maps: np.ndarray, stage: int) -> np.ndarray:
    """−log₂ p of every codeword at every latent as the coder's network gives it (no adaptation)."""
    coding = StageCoding(model, stage, maps.copy())
    out = np.zeros((maps.shape[1] * maps.shape[2], model.codes))
    for row, cols, contexts in coding.all_passes():
        freq = coding.frequencies_of(np.full(cols.size, row), cols, None).astype(np.float64)
        out[row * maps.shape[2] + cols] = -np.log2(freq / freq.sum(axis=1, keepdims=True))
        coding.coded(row, cols, maps[stage, row, cols], contexts)
    return out


@pytest.mark.parametrize("shape", [(3, 9, 13), (2, 1, 1), (3, 70, 5)])
def test_costs_are_the_coders_code_lengths_up_to_a_constant_per_latent(shape, monkeypatch) -> None:
    """Also across strips (a strip of 64 rows, and of 4). The test table spans 8 bits, so its
    smallest entries (256) are still 2^(−step/16) to 0.003 bits."""
    model = random_model(3, span_steps=16 * 8)
    maps = np.random.default_rng(1).integers(0, model.codes, size=shape).astype(np.intp)
    for strip in (64, 4):
        monkeypatch.setattr(index_costs, "STRIP_ROWS", strip)
        for stage in range(shape[0]):
            costs = index_costs.stage_bits(model, stage, maps)
            reference = _coder_bits(model, maps, stage)
            assert np.abs(costs - (reference - reference.min(axis=1, keepdims=True))).max() < 0.01
            assert (costs.min(axis=1) == 0).all() and np.array_equal(costs * 16, np.round(costs * 16))


def test_rounds_end_and_lambda_zero_has_none() -> None:
    model = random_model(3)
    assert index_costs.recoster(model, 0.0) is None and index_costs.recoster(model, 0.01, rounds=0) is None
    assert index_costs.recoster(None, 0.01) is None  # weights in the making: the static search alone
    recost = index_costs.recoster(model, 0.01, rounds=2)
    indices = torch.from_numpy(np.random.default_rng(2).integers(0, model.codes, size=(3, 6 * 7)))
    terms = [recost(indices, (6, 7)) for _ in range(3)]
    assert terms[2] is None and all(t is not None and t.positions.shape == (3, 42, model.codes) for t in terms[:2])
    expected = 0.01 * np.stack([index_costs.stage_bits(model, m, indices.numpy().reshape(3, 6, 7)) for m in range(3)])
    assert torch.equal(terms[0].positions, torch.from_numpy(expected).float().double())
    big = index_costs.recoster(model, 0.01)
    side = int(np.sqrt(index_costs.MAX_LATENTS)) + 1
    assert big(torch.zeros(3, side * side, dtype=torch.long), (side, side)) is None


def test_without_the_rounds_the_search_takes_the_points_static_lambda(monkeypatch) -> None:
    """An image too large for the rounds (the cap lowered here) is searched once, with the
    static tables at the card's static λ, not the λ scaled down for the rounds; effort 3's
    final search likewise. A Kodak-sized image keeps the rounds at rate_weight."""
    from PIL import Image

    from diveq_codec.codec.pipeline import choose_indices, image_to_tensor
    from diveq_codec.codec.zoo import load_model, resolve_quality
    from diveq_codec.models.autoencoder import search_options

    point = resolve_quality(3)
    assert point.static_rate_weight is not None and point.static_rate_weight > point.rate_weight > 0
    assert point.search_weight(rounds=True) == point.rate_weight
    assert point.search_weight(rounds=False) == point.static_rate_weight
    loaded = load_model(point.model_id, "cpu")
    rgb = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "samples" / "parrots.png").convert("RGB"))[:96, :128]
    x = image_to_tensor(rgb, "cpu")

    def static_search(weight: float) -> torch.Tensor:
        return loaded.model.encode_indices(x, point.stages, **search_options(loaded.rate_costs(weight), 1))[0]

    with_rounds = choose_indices(loaded, point, None, x)[0]
    assert not torch.equal(with_rounds, static_search(point.rate_weight))
    monkeypatch.setattr(index_costs, "MAX_LATENTS", 12 * 16 - 1)
    assert torch.equal(choose_indices(loaded, point, None, x)[0], static_search(point.static_rate_weight))


def test_an_effort_3_eval_records_the_static_lambda() -> None:
    """Eval folders refuse rows encoded otherwise: effort 3's record names the λ its final
    (static) search used, efforts 1 and 2 the rounds' λ as before."""
    from diveq_codec.codec.evaluation.eval_meta import rate_point_record
    from diveq_codec.codec.zoo import resolve_quality

    point = resolve_quality(4)
    assert rate_point_record(point, {})["rate_weight"] == point.rate_weight
    assert rate_point_record(point, {"beam": 4})["rate_weight"] == point.rate_weight
    assert rate_point_record(point, {"beam": 4, "refine_steps": 3})["rate_weight"] == point.static_rate_weight
