"""Entropy coder: round trips, golden bytes (format stability), contexts and damage detection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diveq_codec.codec.index_coder import (
    ADAPTIVE_COUNT_CAP,
    ADAPTIVE_PRIOR_WEIGHT,
    _StageTables,
    _second_contexts,
    _stage_tables,
    code_lengths,
    context_counts,
    decode_indices,
    encode_indices,
    encode_without_context,
    second_context_counts,
    smoothed_counts,
    table_entropy_bits,
)
from diveq_codec.codec.errors import CorruptBitstreamError

ALPHABET = 8


def _tables(seed: int = 0, stages: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 50, size=(stages, ALPHABET + 1, ALPHABET))
    raw[:, :, 6:] = 0  # symbols never seen in training
    return smoothed_counts(raw)


TABLES = _tables()
TABLES4, SECOND = _tables(1, stages=4), _tables(2, stages=4)  # coder 3 differs from coder 2 from stage 3 on


def test_smoothing_keeps_every_symbol_encodable_in_every_context() -> None:
    assert (TABLES >= 1).all()
    symbols = np.array([[6, 7, 7, 6], [7, 6, 7, 7]])  # zero raw count in every context
    assert (decode_indices(encode_indices(symbols, TABLES, 2), TABLES, 2, 4, 2) == symbols).all()


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3]))
def test_round_trip(stages: int, height: int, width: int, seed: int, coder: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, ALPHABET, size=(stages, height * width))
    adaptive, second = coder > 1, SECOND if coder == 3 else None
    payload = encode_indices(symbols, TABLES4, width, adaptive, second)
    assert len(payload) % 4 == 0
    assert (decode_indices(payload, TABLES4, stages, height * width, width, adaptive, second) == symbols).all()


def test_golden_bytes() -> None:
    """Any change here changes every file on disk of that coder: give the change a new coder id."""
    symbols = np.array([[0, 1, 0, 2, 0, 0, 3, 7, 0, 1], [5, 4, 3, 2, 1, 0, 7, 6, 5, 4]])
    assert encode_indices(symbols, TABLES, 5).hex() == GOLDEN_HEX
    assert encode_indices(symbols, TABLES, 5, adaptive=True).hex() == GOLDEN_ADAPTIVE_HEX
    three_stages = np.concatenate([symbols, symbols[::-1]])
    assert encode_indices(three_stages, TABLES4, 5, True, SECOND).hex() == GOLDEN_TWO_CONTEXT_HEX


GOLDEN_HEX = "de6b040efb5921c700000000"
GOLDEN_ADAPTIVE_HEX = "de6b040e1c1121c7"
GOLDEN_TWO_CONTEXT_HEX = "cb2363032763c1009b8e946a1dc163aec98b136c"


def test_second_contexts_are_above_left_none_and_two_stages_back() -> None:
    indices = np.arange(4 * 6).reshape(4, 6) % ALPHABET  # 2 rows of width 3
    off = ALPHABET
    assert _second_contexts(indices, 0, 3, ALPHABET).tolist() == [off, off, off, off, 0, 1]
    assert _second_contexts(indices, 1, 3, ALPHABET) is None
    assert _second_contexts(indices, 3, 3, ALPHABET).tolist() == indices[1].tolist()
    counts = second_context_counts(indices, 3, ALPHABET)
    assert counts[1].sum() == 0 and counts[0].sum() == counts[2].sum() == 6
    assert counts[0, off, indices[0, 0]] == 1 and counts[0, 0, indices[0, 4]] == 1


def test_two_context_rows_follow_the_clipped_square_root_formula() -> None:
    """Coder 3's row: coder 2's probabilities times the clipped sqrt of the second context's
    over the training-set frequency (unnormalised); stage 2 is coder 2's alone."""
    rng = np.random.default_rng(5)
    first, second = _StageTables(TABLES4, 2, adaptive=True), _StageTables(SECOND, 2, adaptive=True)
    both = _stage_tables(TABLES4, SECOND, 2, adaptive=True)
    frequency = TABLES4[2].sum(axis=0) / TABLES4[2].sum()
    for _ in range(30):
        contexts, seconds = rng.integers(0, ALPHABET + 1, (2, 7))
        symbols = rng.integers(0, ALPHABET, 7)
        weights = first.row64(contexts) * np.clip(np.sqrt(second.row64(seconds) / frequency), 1 / 8, 8)
        expected = weights / weights.sum(axis=1, keepdims=True)
        row = both.row(contexts, seconds).astype(np.float64)  # constriction normalises it
        assert np.allclose(row / row.sum(axis=1, keepdims=True), expected, rtol=1e-6, atol=0)
        for tables in (first, second, both):
            tables.coded(*((contexts, symbols) if tables is first else (seconds, symbols) if tables is second
                           else (contexts, symbols, seconds)))
    assert type(_stage_tables(TABLES4, SECOND, 1, adaptive=True)) is _StageTables


def test_second_context_saves_bits_where_it_predicts() -> None:
    """Stage 3 repeats stage 1 (its second context) and is noise given stage 2: coder 3 sees it."""
    rng = np.random.default_rng(7)
    width = 16
    base = rng.integers(0, ALPHABET, size=20 * width)
    symbols = np.stack([base, rng.integers(0, ALPHABET, size=base.size), base])
    plain = encode_indices(symbols, TABLES4, width, adaptive=True)
    two = encode_indices(symbols, TABLES4, width, adaptive=True, second=SECOND)
    assert len(two) < 0.93 * len(plain)


def test_adaptive_tables_learn_what_the_image_uses() -> None:
    """An image that keeps using symbols its training tables call rare: the adaptive coder
    (coder 2) learns them row by row and needs far fewer bits; its first row, coded before
    anything is learnt, costs what the static coder's does."""
    rng = np.random.default_rng(3)
    symbols = rng.choice([6, 7], size=(2, 40 * 8))  # never seen in training (count 0 + 1)
    static, adaptive = encode_indices(symbols, TABLES, 8), encode_indices(symbols, TABLES, 8, adaptive=True)
    assert len(adaptive) < 0.5 * len(static)
    assert (decode_indices(adaptive, TABLES, 2, 40 * 8, 8, adaptive=True) == symbols).all()
    first_row = symbols[:1, :8]
    assert encode_indices(first_row, TABLES, 8) == encode_indices(first_row, TABLES, 8, adaptive=True)


@pytest.mark.parametrize("second", [None, SECOND], ids=["coder2", "coder3"])
def test_adaptive_counts_are_capped_so_a_flat_image_still_costs_bits(second: np.ndarray | None) -> None:
    """One symbol over and over in one context passes ADAPTIVE_COUNT_CAP many times: the
    halved counts still round-trip, the file still costs a known minimum per symbol (so the
    decoder's too-short check refuses nothing real), and a shorter payload is refused."""
    width, height = 64, 200
    symbols = np.full((3, width * height), 6)
    payload = encode_indices(symbols, TABLES4, width, adaptive=True, second=second)
    assert (decode_indices(payload, TABLES4, 3, width * height, width, True, second) == symbols).all()
    assert len(payload) > 40  # 38,400 symbols: far from free, however predictable
    with pytest.raises(CorruptBitstreamError, match="too short"):
        decode_indices(payload[:4], TABLES4, 3, 100 * width * height, width, True, second)


def test_adaptive_rows_follow_the_blend_formula_through_the_cap() -> None:
    """The incrementally kept blend gives, row after row, exactly w·C[c] + T[c]·n[c] over its
    row sum, also across the halvings of a context that passes ADAPTIVE_COUNT_CAP."""
    rng = np.random.default_rng(3)
    stage = _StageTables(TABLES, 0, adaptive=True)
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


@pytest.mark.parametrize("second", [None, "second"], ids=["coder2", "coder3"])
def test_a_stream_read_past_its_end_is_refused_early(second: str | None) -> None:
    """Tables where one symbol is nearly certain leave the up-front length check little to
    say; the decoder then notices, a row at a time, that it has decoded more information
    than the payload holds, and stops long before the declared symbols."""
    raw = np.zeros((3, ALPHABET + 1, ALPHABET), dtype=np.int64)
    raw[:, :, 0] = 10**6
    peaked = smoothed_counts(raw)
    second_tables = peaked if second else None
    rng = np.random.default_rng(11)
    width = 8
    symbols = np.where(rng.random((3, 8 * width)) < 0.7, 0, rng.integers(0, ALPHABET, (3, 8 * width)))
    payload = encode_indices(symbols, peaked, width, adaptive=True, second=second_tables)
    assert (decode_indices(payload, peaked, 3, 8 * width, width, True, second_tables) == symbols).all()
    with pytest.raises(CorruptBitstreamError, match="ends before"):
        decode_indices(payload, peaked, 3, 2000 * width, width, True, second_tables)


@pytest.mark.parametrize("second", [None, "second"], ids=["coder2", "coder3"])
def test_a_stream_of_very_improbable_symbols_still_decodes(second: str | None) -> None:
    """A symbol of probability 1e-9 costs constriction 24 bits, not 30: the decoder's running
    cost check must count what the coder really spends, or it would refuse such a file."""
    raw = np.zeros((3, ALPHABET + 1, ALPHABET), dtype=np.int64)
    raw[:, :, 0] = 10**9
    peaked = smoothed_counts(raw)
    second_tables = peaked if second else None
    width = 8
    symbols = np.full((3, 16 * width), ALPHABET - 1)  # the least probable symbol, over and over
    symbols[:, ::7] = 0
    payload = encode_indices(symbols, peaked, width, adaptive=True, second=second_tables)
    assert (decode_indices(payload, peaked, 3, 16 * width, width, True, second_tables) == symbols).all()


def test_tables_of_extreme_range_round_trip_under_every_coder() -> None:
    """Counts from 1 to 10⁹ in one table, and the rarest symbols coded: coder 3's clipped
    factors once pushed a symbol's share low enough for constriction to panic (the 115th
    case here); its relative floor keeps every share above what coder 2 reaches."""
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
        for adaptive, second_tables in ((False, None), (True, None), (True, second)):
            payload = encode_indices(symbols, tables, width, adaptive, second_tables)
            decoded = decode_indices(payload, tables, stages, height * width, width, adaptive, second_tables)
            assert (decoded == symbols).all()


def test_a_payload_decodes_only_with_the_coder_that_wrote_it() -> None:
    rng = np.random.default_rng(4)
    symbols = rng.choice([6, 7], size=(2, 30 * 5))
    adaptive = encode_indices(symbols, TABLES, 5, adaptive=True)
    try:
        misread = decode_indices(adaptive, TABLES, 2, 30 * 5, 5)
    except CorruptBitstreamError:
        return
    assert not (misread == symbols).all()


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
    bits = len(encode_indices(symbols, tables, width)) * 8 / symbols.size
    flat = smoothed_counts(context_counts(symbols, width, ALPHABET).sum(axis=1))
    flat_bits = len(encode_without_context(symbols, flat)) * 8 / symbols.size
    assert bits < 0.5 * flat_bits
    assert table_entropy_bits(tables)[0] < table_entropy_bits(flat)[0]


def test_unused_words_are_refused() -> None:
    symbols = np.zeros((1, 10), dtype=np.int64)
    payload = encode_indices(symbols, TABLES, 5) + b"\x12\x34\x56\x78" * 3
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, TABLES, 1, 10, 5)


@pytest.mark.parametrize("payload", [b"", b"\x00\x01\x02"])
def test_bad_lengths_are_refused(payload: bytes) -> None:
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, TABLES, 1, 10, 5)


def test_too_many_stages_or_ragged_rows_refused() -> None:
    with pytest.raises(CorruptBitstreamError):
        decode_indices(b"\x00" * 8, TABLES, 3, 10, 5)
    with pytest.raises(CorruptBitstreamError):
        decode_indices(b"\x00" * 8, TABLES, 1, 10, 3)


def test_payload_too_short_for_the_declared_symbols_is_refused_before_decoding() -> None:
    payload = encode_indices(np.zeros((2, 10), dtype=np.int64), TABLES, 5)
    with pytest.raises(CorruptBitstreamError, match="too short"):
        decode_indices(payload, TABLES, 2, 10_000_000, 5)


def test_programming_errors() -> None:
    with pytest.raises(ValueError):
        encode_indices(np.array([[ALPHABET]]), TABLES, 1)
    with pytest.raises(ValueError):
        encode_indices(np.zeros((1, 10), dtype=np.int64), TABLES, 3)
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
