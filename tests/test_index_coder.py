"""The index coder and its integer index model: round trips, fixed bytes, damage, and
probabilities that are the same integers however they are computed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diveq_codec.codec import index_coder
from diveq_codec.codec.errors import CorruptBitstreamError
from diveq_codec.codec.index_coder import (
    PIXELS_PER_PAYLOAD_BYTE,
    decode_indices,
    encode_indices,
    min_payload_bits,
    min_payload_bytes,
)
from diveq_codec.codec.index_model import IndexModel, frequencies, padded, previous_context, tokens_of
from diveq_codec.codec.zoo import load_model, network_rate_points

sys.path.insert(0, str(Path(__file__).parent))
from index_models import random_model  # noqa: E402

MODEL = random_model(0)
CODES = MODEL.codes


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_round_trip(stages: int, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, CODES, size=(stages, height * width))
    payload = encode_indices(symbols, MODEL, width)
    assert len(payload) % 4 == 0
    assert (decode_indices(payload, MODEL, stages, height * width, width) == symbols).all()


def test_round_trip_across_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past index_coder.STRIP_LATENTS: the previous stages' terms (and the encoder's network
    outputs) are computed a strip of whole rows at a time, the same integers as at once."""
    rng = np.random.default_rng(3)
    symbols = rng.integers(0, CODES, size=(3, 150 * 5))
    whole = encode_indices(symbols, MODEL, 5)
    monkeypatch.setattr(index_coder, "STRIP_LATENTS", 64)  # strips of 12 rows, the last of 6
    assert encode_indices(symbols, MODEL, 5) == whole
    assert (decode_indices(whole, MODEL, 3, 750, 5) == symbols).all()
    monkeypatch.setattr(index_coder, "STRIP_LATENTS", 3)  # narrower than a row: one row a strip
    assert encode_indices(symbols, MODEL, 5) == whole


def test_fixed_bytes() -> None:
    """Any change here changes what encode writes: it takes a new format version."""
    symbols = np.array([[0, 1, 0, 2, 0, 0, 3, 7, 0, 1], [5, 4, 3, 2, 1, 0, 7, 6, 5, 4]])
    assert encode_indices(symbols, MODEL, 5).hex() == FIXED_TWO_STAGES_HEX


FIXED_TWO_STAGES_HEX = "10f80000cbbb610c49ed6570"


def test_the_decoder_sees_only_what_it_has_decoded() -> None:
    """A symbol's probabilities do not change when what comes after it changes: later rows,
    the same row's later pass, later stages."""
    model, maps = _shipped()
    codes = model.codes
    rng = np.random.default_rng(4)
    row, col = 5, 6  # an even column: first pass of its row
    base = _probabilities_at(model, maps, 1, row, col)
    changed = maps.copy()
    changed[1, row + 1:] = rng.integers(0, codes, size=changed[1, row + 1:].shape)  # rows below
    changed[1, row, 1::2] = rng.integers(0, codes, size=changed[1, row, 1::2].shape)  # the second pass
    changed[1, row, col + 2::2] = rng.integers(0, codes, size=changed[1, row, col + 2::2].shape)
    changed[2:] = rng.integers(0, codes, size=changed[2:].shape)  # later stages
    assert np.array_equal(_probabilities_at(model, changed, 1, row, col), base)
    for stage, dy, dx in ((1, -1, 0), (0, 1, 1)):  # the row above, the stage before: known, used
        known = maps.copy()
        known[stage, row + dy, col + dx] = (maps[stage, row + dy, col + dx] + 1) % codes
        assert not np.array_equal(_probabilities_at(model, known, 1, row, col), base)


def _probabilities_at(model: IndexModel, maps: np.ndarray, stage: int, row: int, col: int) -> np.ndarray:
    terms = previous_context(model, stage, maps[:stage])
    rows, cols = np.array([row]), np.array([col])
    return frequencies(model, stage, terms[rows, cols], tokens_of(padded(maps[stage], model), rows, cols, model))


def test_every_codeword_stays_codable() -> None:
    """Even against a model that is nearly certain of codeword 0."""
    peaked = random_model(0, peak=40_000_000)
    symbols = np.full((3, 64), CODES - 1)
    symbols[:, ::5] = 0
    payload = encode_indices(symbols, peaked, 8)
    assert (decode_indices(payload, peaked, 3, 64, 8) == symbols).all()


def test_a_stream_read_past_its_end_is_refused_early() -> None:
    """A nearly certain symbol leaves the up-front length check little to say; the decoder
    then notices that it has decoded more information than the payload holds. (With the
    table spanning 2^-6, every symbol costs at least 0.15 bits: a span of 2^-16 would let
    an 8-codeword model code thousands of certain symbols in no bytes at all.)"""
    peaked = random_model(0, peak=40_000_000, span_steps=16 * 6)
    rng = np.random.default_rng(11)
    symbols = np.where(rng.random((3, 64)) < 0.7, 0, rng.integers(0, CODES, (3, 64)))
    payload = encode_indices(symbols, peaked, 8)
    assert (decode_indices(payload, peaked, 3, 64, 8) == symbols).all()
    # As many symbols as the up-front check lets through, far more than the stream holds.
    budget = len(payload) * 8 * 1.01 + 64
    rows = int(0.95 * budget / min_payload_bits(peaked, 3, 8))
    assert rows > 4 * 8
    with pytest.raises(CorruptBitstreamError, match="ends before"):
        decode_indices(payload, peaked, 3, rows * 8, 8)


def test_unused_words_are_refused() -> None:
    payload = encode_indices(np.zeros((1, 10), dtype=np.int64), MODEL, 5) + b"\x12\x34\x56\x78"
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, MODEL, 1, 10, 5)


@pytest.mark.parametrize("payload", [b"", b"\x00\x01\x02"])
def test_bad_lengths_are_refused(payload: bytes) -> None:
    with pytest.raises(CorruptBitstreamError, match="32-bit words"):
        decode_indices(payload, MODEL, 1, 10, 5)


def test_too_many_stages_or_ragged_rows_refused() -> None:
    with pytest.raises(CorruptBitstreamError, match="stages"):
        decode_indices(b"\x00" * 8, MODEL, 4, 10, 5)
    with pytest.raises(CorruptBitstreamError, match="rows"):
        decode_indices(b"\x00" * 8, MODEL, 1, 10, 3)


def test_payload_too_short_for_the_declared_symbols_is_refused_before_decoding() -> None:
    payload = encode_indices(np.zeros((2, 10), dtype=np.int64), MODEL, 5)
    count = int(len(payload) * 8 * 1.01 + 64) * 2  # more symbols than the payload can hold
    assert min_payload_bits(MODEL, 2, count * 2000) > len(payload) * 8
    with pytest.raises(CorruptBitstreamError, match="too short"):
        decode_indices(payload, MODEL, 2, count * 2000, 5)


def test_the_least_payload_is_a_byte_per_1024_pixels_in_whole_words() -> None:
    assert PIXELS_PER_PAYLOAD_BYTE == 1024
    assert [min_payload_bytes(p) for p in (0, 1, 4096, 4097, 50_000_000)] == [0, 4, 4, 8, 48_832]


@pytest.mark.parametrize("stages", [1, 3])
def test_a_short_stream_is_padded_to_the_least_payload_and_decodes(stages: int) -> None:
    """A flat map's stream is a few words; padded with zero words it decodes to the same
    symbols, and only the exact padding is accepted."""
    symbols = np.full((stages, 60 * 40), 7, dtype=np.int64)
    stream = encode_indices(symbols, MODEL, 60)
    least = len(stream) + 64
    payload = encode_indices(symbols, MODEL, 60, least)
    assert payload == stream + bytes(64)
    assert (decode_indices(payload, MODEL, stages, 60 * 40, 60, least) == symbols).all()
    for wrong in (payload + bytes(4), payload[:-4], payload[:-1] + b"\x01"):
        with pytest.raises(CorruptBitstreamError):
            decode_indices(wrong, MODEL, stages, 60 * 40, 60, least)
    # A stream longer than the least is not padded at all.
    assert encode_indices(symbols, MODEL, 60, len(stream) - 4) == stream


def test_a_payload_under_the_least_for_its_size_is_refused_before_decoding() -> None:
    stream = encode_indices(np.zeros((1, 10), dtype=np.int64), MODEL, 5)
    with pytest.raises(CorruptBitstreamError, match="shorter than the .* bytes the image's size requires"):
        decode_indices(stream, MODEL, 1, 10, 5, len(stream) + 4)


def test_programming_errors() -> None:
    with pytest.raises(ValueError, match="alphabet"):
        encode_indices(np.array([[CODES]]), MODEL, 1)
    with pytest.raises(ValueError, match="rows"):
        encode_indices(np.zeros((1, 10), dtype=np.int64), MODEL, 3)
    with pytest.raises(ValueError, match="stages"):
        encode_indices(np.zeros((4, 10), dtype=np.int64), MODEL, 5)


# --- exactness: the same integers whatever computes them -----------------------------------

def _torch_frequencies(model: IndexModel, stage: int, maps: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The frequencies of every position of a stage, written again in torch (float64), layer by
    layer, with another summation order (one matrix product over all neighbours' terms)."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(device)

    def act(z: torch.Tensor, shift: int) -> torch.Tensor:
        return torch.clamp(torch.floor(z / 2.0**shift), 0, model.cap)

    net = model.stages[stage]
    _, h, w = maps.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    z = t(net.bias).expand(h * w, -1).clone()
    if stage:
        total = sum(t(model.codebooks[m])[torch.from_numpy(maps[m].reshape(-1))] for m in range(stage))
        projected = act(total @ t(net.project_w) + t(net.project_b), net.project_shift).reshape(h, w, -1)
        around = torch.nn.functional.pad(projected.permute(2, 0, 1), (1, 1, 1, 1)).permute(1, 2, 0)
        window = torch.cat([around[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], dim=2)
        z = z + window.reshape(h * w, -1) @ t(net.context_w) + t(net.previous)[torch.from_numpy(maps[stage - 1].reshape(-1))]
    tokens = torch.from_numpy(tokens_of(padded(maps[stage], model), rows, cols, model))
    one_hot = torch.nn.functional.one_hot(tokens, model.codes + 2).to(torch.float64).to(device)  # (n, K, T)
    z = z + torch.einsum("nkt,kth->nh", one_hot, t(net.neighbours))
    a = act(z, net.first_shift)
    a = act(a @ t(net.hidden_w) + t(net.hidden_b), net.hidden_shift)
    logits = torch.floor((a @ t(net.out_w) + t(net.out_b)) / 2.0 ** (net.logit_shift - 2))  # 1/64 bit
    below = torch.floor((logits.max(dim=1, keepdim=True).values - logits) / 4)
    steps = torch.clamp(below, max=model.output_table.size - 1).long().cpu().numpy()
    return model.output_table[steps]


def _numpy_frequencies(model: IndexModel, stage: int, maps: np.ndarray) -> np.ndarray:
    """The same, written again in numpy (float64), a neighbour and a window place at a time."""
    def act(z: np.ndarray, shift: int) -> np.ndarray:
        return np.clip(np.floor(z / 2.0**shift), 0, model.cap)

    net = model.stages[stage]
    _, h, w = maps.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    z = np.tile(net.bias, (h * w, 1))
    if stage:
        total = sum(model.codebooks[m][maps[m]] for m in range(stage))
        projected = act(total @ net.project_w + net.project_b, net.project_shift)
        around = np.pad(projected, ((1, 1), (1, 1), (0, 0)))
        places = projected.shape[2]
        for place in range(9):
            dy, dx = divmod(place, 3)
            z += around[dy:dy + h, dx:dx + w].reshape(h * w, -1) @ net.context_w[place * places:(place + 1) * places]
        z += net.previous[maps[stage - 1].reshape(-1)]
    tokens = tokens_of(padded(maps[stage], model), rows, cols, model)
    for k in range(tokens.shape[1]):
        z += net.neighbours[k][tokens[:, k]]
    a = act(act(z, net.first_shift) @ net.hidden_w + net.hidden_b, net.hidden_shift)
    logits = np.floor((a @ net.out_w + net.out_b) / 2.0 ** (net.logit_shift - 2))
    below = np.floor((logits.max(axis=1, keepdims=True) - logits) / 4)
    return model.output_table[np.minimum(below, model.output_table.size - 1).astype(np.intp)]


def _codec_frequencies(model: IndexModel, stage: int, maps: np.ndarray) -> np.ndarray:
    """What the coder computes (codec/index_model.py: torch, float32 where exact)."""
    _, h, w = maps.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    terms = previous_context(model, stage, maps[:stage]) if stage else np.zeros((h, w, model.stages[stage].bias.size))
    return frequencies(model, stage, terms[rows, cols], tokens_of(padded(maps[stage], model), rows, cols, model))


def _shipped() -> tuple[IndexModel, np.ndarray]:
    loaded = load_model(network_rate_points()[0].model_id)
    model = loaded.require_index_model()
    rng = np.random.default_rng(8)
    # A plausible map: runs of repeated codewords, as images give.
    maps = rng.integers(0, model.codes, size=(len(model.stages), 24, 40))
    maps[:, :, 1::2] = maps[:, :, ::2]
    return model, maps


def test_torch_and_numpy_give_the_same_frequencies() -> None:
    model, maps = _shipped()
    for stage in range(len(model.stages)):
        codec = _codec_frequencies(model, stage, maps)
        assert np.array_equal(codec, _numpy_frequencies(model, stage, maps))
        assert np.array_equal(codec, _torch_frequencies(model, stage, maps))


def test_reduced_float32_products_fall_back_to_float64() -> None:
    """A program that lets float32 products round (set_float32_matmul_precision) gets the
    same frequencies: the coder computes in float64 then."""
    model, maps = _shipped()
    stage = len(model.stages) - 1
    reference = _numpy_frequencies(model, stage, maps)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert model.stages[stage].layers.first_dtype() == torch.float64
        assert np.array_equal(_codec_frequencies(model, stage, maps), reference)
    finally:
        torch.set_float32_matmul_precision(before)


def test_layers_computed_in_float32_only_where_exact() -> None:
    """A stage's layers compute in float32 when every sum they form is below 2^24; larger
    weights take float64, and both agree with the float64 computation layer by layer."""
    from index_models import random_tensors

    from diveq_codec.codec.index_model import TENSOR_PREFIX, from_tensors

    maps = np.random.default_rng(3).integers(0, CODES, size=(3, 9, 14))
    assert all(net.layers.inner == torch.float32 for net in MODEL.stages)
    tensors = random_tensors(0)
    for m in range(3):
        tensors[f"{TENSOR_PREFIX}stage{m + 1}.neighbours"] = tensors[f"{TENSOR_PREFIX}stage{m + 1}.neighbours"] * 4096
    large = from_tensors(tensors)
    assert all(net.layers.inner == torch.float64 for net in large.stages)
    # Logits whose sums could pass 2^24: the last layer and what follows in float64.
    tensors = random_tensors(0)
    for m in range(3):
        tensors[f"{TENSOR_PREFIX}stage{m + 1}.out_w"] = tensors[f"{TENSOR_PREFIX}stage{m + 1}.out_w"] * 4096
    wide = from_tensors(tensors)
    assert all(net.layers.outer == torch.float64 for net in wide.stages)
    for model in (MODEL, large, wide):
        for stage in range(3):
            assert np.array_equal(_codec_frequencies(model, stage, maps), _numpy_frequencies(model, stage, maps))


def test_the_shipped_model_computes_in_float32() -> None:
    """Its bounds allow float32 everywhere (the logits' with activations counted as ≥ 0)."""
    model, _ = _shipped()
    assert all(net.layers.inner == torch.float32 and net.layers.outer == torch.float32 for net in model.stages)


def test_thread_counts_and_row_order_do_not_change_the_frequencies() -> None:
    model, maps = _shipped()
    stage = len(model.stages) - 1
    reference = _numpy_frequencies(model, stage, maps)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert np.array_equal(_codec_frequencies(model, stage, maps), reference)
    finally:
        torch.set_num_threads(before)
    # The same positions in another order, and one at a time as a decoder might take them.
    _, h, w = maps.shape
    rows, cols = np.divmod(np.random.default_rng(1).permutation(h * w), w)
    terms = previous_context(model, stage, maps[:stage])
    permuted = frequencies(model, stage, terms[rows, cols], tokens_of(padded(maps[stage], model), rows, cols, model))
    assert np.array_equal(permuted, reference.reshape(h, w, -1)[rows, cols])
    single = frequencies(model, stage, terms[rows[:1], cols[:1]], tokens_of(padded(maps[stage], model), rows[:1], cols[:1], model))
    assert np.array_equal(single, permuted[:1])


def test_blas_thread_counts_give_the_same_bytes() -> None:
    """The BLAS libraries, run with 1 and with 2 threads in fresh processes, code a map to the same bytes."""
    script = ("import hashlib, sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
              "from test_index_coder import _shipped; from diveq_codec.codec.index_coder import encode_indices;"
              "model, maps = _shipped(); s, h, w = maps.shape;"
              "print(hashlib.sha256(encode_indices(maps.reshape(s, -1), model, w)).hexdigest())")
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        digests.add(done.stdout.strip())
    model, maps = _shipped()
    s, _, w = maps.shape
    digests.add(hashlib.sha256(encode_indices(maps.reshape(s, -1), model, w)).hexdigest())
    assert len(digests) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_gives_the_same_frequencies() -> None:
    model, maps = _shipped()
    for stage in range(len(model.stages)):
        assert np.array_equal(_torch_frequencies(model, stage, maps, "cuda"), _codec_frequencies(model, stage, maps))


def test_the_shipped_model_is_exact_and_bounded() -> None:
    """Its sums are exact in float64 (checked on load), and no codeword is ever certain."""
    model, maps = _shipped()
    assert model.max_probability() < 1.0
    freq = _numpy_frequencies(model, 0, maps)
    assert freq.min() >= 1 and freq.dtype == np.float32
    assert (freq == freq.astype(np.int64)).all()


# --- adaptation to the image ----------------------------------------------------------------

def test_adaptation_makes_what_the_image_repeats_cheaper() -> None:
    """An image that keeps using two codewords costs fewer bits with the adaptation's term
    than without it (weight 0), and both decode."""
    rng = np.random.default_rng(12)
    symbols = rng.choice([3, 5], size=(2, 40 * 12))
    sizes = {}
    for adapt in (0, 8):
        model = random_model(0, stages=2, adapt=adapt)
        payload = encode_indices(symbols, model, 12)
        assert (decode_indices(payload, model, 2, 40 * 12, 12) == symbols).all()
        sizes[adapt] = len(payload)
    assert sizes[8] < 0.8 * sizes[0]


def test_counts_are_halved_past_the_cap() -> None:
    from diveq_codec.codec.index_adaptation import COUNT_CAP, StageCounts, log_table

    counts = StageCounts(8, log_table(8), 4)
    contexts = np.zeros(1000, dtype=np.intp)
    for _ in range(5):
        counts.coded(contexts, np.full(1000, 2))
    assert counts.totals[0] <= COUNT_CAP and counts.counts[0, 2] == counts.totals[0] > COUNT_CAP // 2
    terms = counts.terms(np.array([0, 1]))
    assert terms[0, 2] > terms[0, 3] and (terms[1] == terms[1, 0]).all()  # context 1 has seen nothing
    assert StageCounts(8, log_table(8), 0).terms(np.array([0])) is None
