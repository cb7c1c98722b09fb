"""Index coder: round trips, golden bytes (format stability), contexts and damage detection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diveq_codec.codec.errors import CorruptBitstreamError, WeightsError
from diveq_codec.codec.index_coder import (
    ADAPTIVE_COUNT_CAP,
    ADAPTIVE_PRIOR_WEIGHT,
    AdaptiveTables,
    second_contexts,
    stage_tables,
    code_lengths,
    context_counts,
    decode_indices,
    encode_indices,
    encode_without_context,
    second_context_counts,
    smoothed_counts,
    table_entropy_bits,
)

ALPHABET = 8


def _tables(seed: int = 0, stages: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 50, size=(stages, ALPHABET + 1, ALPHABET))
    raw[:, :, 6:] = 0  # symbols never seen in training
    return smoothed_counts(raw)


TABLES, SECOND2 = _tables(), _tables(3)  # first and second contexts' tables of two stages
TABLES4, SECOND = _tables(1, stages=4), _tables(2, stages=4)


def test_smoothing_keeps_every_symbol_encodable_in_every_context() -> None:
    assert (TABLES >= 1).all()
    symbols = np.array([[6, 7, 7, 6], [7, 6, 7, 7]])  # zero raw count in every context
    payload = encode_indices(symbols, TABLES, 2, second=SECOND2)
    assert (decode_indices(payload, TABLES, 2, 4, 2, second=SECOND2) == symbols).all()


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_round_trip(stages: int, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, ALPHABET, size=(stages, height * width))
    payload = encode_indices(symbols, TABLES4, width, second=SECOND)
    assert len(payload) % 4 == 0
    assert (decode_indices(payload, TABLES4, stages, height * width, width, second=SECOND) == symbols).all()


def test_golden_bytes() -> None:
    """Any change here changes what encode writes: bump the format version with it (and
    keep decoding the versions tagged releases wrote)."""
    symbols = np.array([[0, 1, 0, 2, 0, 0, 3, 7, 0, 1], [5, 4, 3, 2, 1, 0, 7, 6, 5, 4]])
    assert encode_indices(symbols, TABLES, 5, second=SECOND2).hex() == GOLDEN_TWO_STAGES_HEX
    three_stages = np.concatenate([symbols, symbols[::-1]])
    assert encode_indices(three_stages, TABLES4, 5, second=SECOND).hex() == GOLDEN_FOUR_STAGES_HEX


GOLDEN_TWO_STAGES_HEX = "0ba35d0e68bc8b5f"
GOLDEN_FOUR_STAGES_HEX = "cb2363032763c1009b8e946a1dc163aec98b136c"


def test_weights_without_second_tables_are_a_weights_error() -> None:
    symbols = np.zeros((1, 10), dtype=np.int64)
    with pytest.raises(WeightsError, match="second-context"):
        encode_indices(symbols, TABLES, 5, second=None)
    payload = encode_indices(symbols, TABLES, 5, second=SECOND2)
    with pytest.raises(WeightsError, match="second-context"):
        decode_indices(payload, TABLES, 1, 10, 5, second=None)


def test_second_contexts_are_above_left_none_and_two_stages_back() -> None:
    indices = np.arange(4 * 6).reshape(4, 6) % ALPHABET  # 2 rows of width 3
    off = ALPHABET
    assert second_contexts(indices, 0, 3, ALPHABET).tolist() == [off, off, off, off, 0, 1]
    assert second_contexts(indices, 1, 3, ALPHABET) is None
    assert second_contexts(indices, 3, 3, ALPHABET).tolist() == indices[1].tolist()
    counts = second_context_counts(indices, 3, ALPHABET)
    assert counts[1].sum() == 0 and counts[0].sum() == counts[2].sum() == 6
    assert counts[0, off, indices[0, 0]] == 1 and counts[0, 0, indices[0, 4]] == 1


def test_two_context_rows_follow_the_clipped_square_root_formula() -> None:
    """A row: the first context's adaptive probabilities times the clipped sqrt of the second
    context's over the training-set frequency (unnormalised); stage 2 is the first context's alone."""
    rng = np.random.default_rng(5)
    first, second = AdaptiveTables(TABLES4, 2), AdaptiveTables(SECOND, 2)
    both = stage_tables(TABLES4, SECOND, 2)
    frequency = TABLES4[2].sum(axis=0) / TABLES4[2].sum()
    for _ in range(30):
        contexts, seconds = rng.integers(0, ALPHABET + 1, (2, 7))
        symbols = rng.integers(0, ALPHABET, 7)
        weights = first.row64(contexts) * np.clip(np.sqrt(second.row64(seconds) / frequency), 1 / 8, 8)
        expected = weights / weights.sum(axis=1, keepdims=True)
        row = both.row(contexts, seconds).astype(np.float64)  # constriction normalises it
        assert np.allclose(row / row.sum(axis=1, keepdims=True), expected, rtol=1e-6, atol=0)
        first.coded(contexts, symbols)
        second.coded(seconds, symbols)
        both.coded(contexts, symbols, seconds)
    assert type(stage_tables(TABLES4, SECOND, 1)) is AdaptiveTables


def test_second_context_saves_bits_where_it_predicts() -> None:
    """Stage 3 is noise given stage 2 (its first context) either way; where it repeats stage 1
    (its second context) the coder sees that and spends far fewer bits on it."""
    rng = np.random.default_rng(7)
    width = 16
    base, noise = rng.integers(0, ALPHABET, size=(2, 20 * width))
    repeating = np.stack([base, noise, base])
    unrelated = np.stack([base, noise, rng.integers(0, ALPHABET, size=base.size)])
    assert len(encode_indices(repeating, TABLES4, width, second=SECOND)) < 0.93 * len(
        encode_indices(unrelated, TABLES4, width, second=SECOND))


def test_adaptive_tables_learn_what_the_image_uses() -> None:
    """An image that keeps using symbols its training tables call rare: the tables learn them
    row by row, and the file costs far less than the training tables alone would charge."""
    rng = np.random.default_rng(3)
    width = 8
    symbols = rng.choice([6, 7], size=(2, 40 * width))  # never seen in training (count 0 + 1)
    payload = encode_indices(symbols, TABLES, width, second=SECOND2)
    assert (decode_indices(payload, TABLES, 2, 40 * width, width, second=SECOND2) == symbols).all()
    contexts = [np.concatenate([np.full(width, ALPHABET), symbols[0, :-width]]), symbols[0]]
    static_bits = sum(-np.log2(TABLES[m, contexts[m], symbols[m]] / TABLES[m, contexts[m]].sum(axis=1)).sum()
                      for m in range(2))
    assert len(payload) * 8 < 0.5 * static_bits


def test_adaptive_counts_are_capped_so_a_flat_image_still_costs_bits() -> None:
    """One symbol over and over in one context passes ADAPTIVE_COUNT_CAP many times: the
    halved counts still round-trip, the file still costs a known minimum per symbol (so the
    decoder's too-short check refuses nothing real), and a shorter payload is refused."""
    width, height = 64, 200
    symbols = np.full((3, width * height), 6)
    payload = encode_indices(symbols, TABLES4, width, second=SECOND)
    assert (decode_indices(payload, TABLES4, 3, width * height, width, second=SECOND) == symbols).all()
    assert len(payload) > 40  # 38,400 symbols: far from free, however predictable
    with pytest.raises(CorruptBitstreamError, match="too short"):
        decode_indices(payload[:4], TABLES4, 3, 100 * width * height, width, second=SECOND)


def test_adaptive_rows_follow_the_blend_formula_through_the_cap() -> None:
    """The incrementally kept blend gives, row after row, exactly w·C[c] + T[c]·n[c] over its
    row sum, also across the halvings of a context that passes ADAPTIVE_COUNT_CAP."""
    rng = np.random.default_rng(3)
    stage = AdaptiveTables(TABLES, 0)
    seen = np.zeros_like(TABLES[0])
    counts, totals = TABLES[0], TABLES[0].sum(axis=1, keepdims=True)
    halvings = 0
    for _ in range(120):
        contexts = rng.choice([0, 3, 3, 3, ALPHABET], size=48)
        symbols = rng.integers(0, ALPHABET, size=48)
        blended = ADAPTIVE_PRIOR_WEIGHT * counts[contexts] + totals[contexts] * seen[contexts]
        expected = (blended / blended.sum(axis=1, keepdims=True)).astype(np.float32)
        assert np.array_equal(stage.row(contexts), expected)
        stage.coded(contexts, symbols)
        np.add.at(seen, (contexts, symbols), 1)
        full = seen.sum(axis=1) > ADAPTIVE_COUNT_CAP
        halvings += int(full.sum())
        seen[full] = (seen[full] + 1) // 2
    assert halvings >= 2


def _peaked(count: int) -> np.ndarray:
    """Tables of three stages in which symbol 0 has ``count`` and every other symbol 1."""
    raw = np.zeros((3, ALPHABET + 1, ALPHABET), dtype=np.int64)
    raw[:, :, 0] = count
    return smoothed_counts(raw)


def test_a_stream_read_past_its_end_is_refused_early() -> None:
    """Tables where one symbol is nearly certain leave the up-front length check little to
    say; the decoder then notices, a row at a time, that it has decoded more information
    than the payload holds, and stops long before the declared symbols."""
    peaked = _peaked(10**6)
    rng = np.random.default_rng(11)
    width = 8
    symbols = np.where(rng.random((3, 8 * width)) < 0.7, 0, rng.integers(0, ALPHABET, (3, 8 * width)))
    payload = encode_indices(symbols, peaked, width, second=peaked)
    assert (decode_indices(payload, peaked, 3, 8 * width, width, second=peaked) == symbols).all()
    with pytest.raises(CorruptBitstreamError, match="ends before"):
        decode_indices(payload, peaked, 3, 2000 * width, width, second=peaked)


def test_a_stream_of_very_improbable_symbols_still_decodes() -> None:
    """A symbol of probability 1e-9 costs constriction 24 bits, not 30: the decoder's running
    cost check must count what the coder really spends, or it would refuse such a file."""
    peaked = _peaked(10**9)
    width = 8
    symbols = np.full((3, 16 * width), ALPHABET - 1)  # the least probable symbol, over and over
    symbols[:, ::7] = 0
    payload = encode_indices(symbols, peaked, width, second=peaked)
    assert (decode_indices(payload, peaked, 3, 16 * width, width, second=peaked) == symbols).all()


def test_tables_of_extreme_range_round_trip() -> None:
    """Counts from 1 to 10⁹ in one table, and the rarest symbols coded: the second opinion's
    clipped factors once pushed a symbol's share low enough for constriction to panic (the
    115th case here); the relative floor keeps every share above what the first context's
    tables alone reach."""
    rng = np.random.default_rng(7)
    for _ in range(120):
        k, stages = int(rng.choice([2, 3, 8, 64, 128])), int(rng.integers(1, 5))
        height, width = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        raw = (10 ** rng.uniform(0, rng.choice([2, 5, 9]), (stages, k + 1, k))).astype(np.int64)
        tables = smoothed_counts(raw)
        second = smoothed_counts(rng.permutation(raw.reshape(-1)).reshape(raw.shape))
        mode = rng.integers(0, 3)
        if mode == 0:
            symbols = rng.integers(0, k, (stages, height * width))
        elif mode == 1:
            symbols = np.argmin(tables[:stages, -1, :], axis=1)[:, None].repeat(height * width, 1)
        else:
            symbols = np.where(rng.random((stages, height * width)) < 0.5, rng.integers(0, k, (stages, height * width)),
                               np.argmax(tables[:stages, -1, :], axis=1)[:, None])
        payload = encode_indices(symbols, tables, width, second=second)
        assert (decode_indices(payload, tables, stages, height * width, width, second=second) == symbols).all()


def test_context_counts_use_the_row_above_and_the_previous_stage() -> None:
    symbols = np.array([[1, 2, 3, 4], [0, 0, 5, 5]])  # a 2×2 grid, two stages
    counts = context_counts(symbols, 2, ALPHABET)
    # stage 1: top row in the "no row above" context (index ALPHABET), then 3 under 1, 4 under 2
    assert counts[0, ALPHABET, 1] == counts[0, ALPHABET, 2] == counts[0, 1, 3] == counts[0, 2, 4] == 1
    # stage 2: each symbol in the context of stage 1's index at the same position
    assert counts[1, 1, 0] == counts[1, 2, 0] == counts[1, 3, 5] == counts[1, 4, 5] == 1
    assert counts.sum() == symbols.size


def test_context_pays_off_on_correlated_rows() -> None:
    rng = np.random.default_rng(0)
    width = 32
    rows = [rng.integers(0, ALPHABET, width)]
    for _ in range(63):  # each row mostly repeats the one above
        rows.append(np.where(rng.random(width) < 0.9, rows[-1], rng.integers(0, ALPHABET, width)))
    symbols = np.concatenate(rows)[None]
    tables = smoothed_counts(context_counts(symbols, width, ALPHABET))
    second = smoothed_counts(second_context_counts(symbols, width, ALPHABET))
    bits = len(encode_indices(symbols, tables, width, second=second)) * 8 / symbols.size
    flat = smoothed_counts(context_counts(symbols, width, ALPHABET).sum(axis=1))
    flat_bits = len(encode_without_context(symbols, flat)) * 8 / symbols.size
    assert bits < 0.5 * flat_bits
    assert table_entropy_bits(tables)[0] < table_entropy_bits(flat)[0]


def test_unused_words_are_refused() -> None:
    symbols = np.zeros((1, 10), dtype=np.int64)
    payload = encode_indices(symbols, TABLES, 5, second=SECOND2) + b"\x12\x34\x56\x78" * 3
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, TABLES, 1, 10, 5, second=SECOND2)


@pytest.mark.parametrize("payload", [b"", b"\x00\x01\x02"])
def test_bad_lengths_are_refused(payload: bytes) -> None:
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, TABLES, 1, 10, 5, second=SECOND2)


def test_too_many_stages_or_ragged_rows_refused() -> None:
    with pytest.raises(CorruptBitstreamError):
        decode_indices(b"\x00" * 8, TABLES, 3, 10, 5, second=SECOND2)
    with pytest.raises(CorruptBitstreamError):
        decode_indices(b"\x00" * 8, TABLES, 1, 10, 3, second=SECOND2)


def test_payload_too_short_for_the_declared_symbols_is_refused_before_decoding() -> None:
    payload = encode_indices(np.zeros((2, 10), dtype=np.int64), TABLES, 5, second=SECOND2)
    with pytest.raises(CorruptBitstreamError, match="too short"):
        decode_indices(payload, TABLES, 2, 10_000_000, 5, second=SECOND2)


def test_programming_errors() -> None:
    with pytest.raises(ValueError):
        encode_indices(np.array([[ALPHABET]]), TABLES, 1, second=SECOND2)
    with pytest.raises(ValueError):
        encode_indices(np.zeros((1, 10), dtype=np.int64), TABLES, 3, second=SECOND2)
    with pytest.raises(ValueError, match="do not match"):
        encode_indices(np.zeros((1, 10), dtype=np.int64), TABLES, 5, second=SECOND)
    with pytest.raises(ValueError):
        smoothed_counts(np.zeros((2, ALPHABET, ALPHABET)))


def test_code_lengths_are_the_static_tables_bits() -> None:
    rng = np.random.default_rng(9)
    tables = rng.integers(1, 50, size=(3, 9, 8))
    first, following = code_lengths(tables)
    assert first.shape == (8,) and following.shape == (2, 8, 8)
    column = tables[0].sum(axis=0)
    assert np.allclose(2.0 ** -first, column / column.sum())
    assert np.allclose(2.0 ** -following[1, 5], tables[2, 5] / tables[2, 5].sum())
    assert np.allclose((2.0 ** -following).sum(axis=2), 1.0)
