"""Entropy coder: round trips, golden bytes (format stability) and damage detection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.entropy import decode_indices, encode_indices, smoothed_counts, table_entropy_bits
from codec.errors import CorruptBitstreamError

TABLES = smoothed_counts(np.array([[50, 30, 10, 5, 3, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]]))


def test_smoothing_keeps_every_symbol_encodable() -> None:
    assert (TABLES >= 1).all()
    symbols = np.array([[6, 7, 7, 6], [0, 1, 2, 3]])  # symbols with zero raw count
    assert (decode_indices(encode_indices(symbols, TABLES), TABLES, 2, 4) == symbols).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_round_trip(stages: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, TABLES.shape[1], size=(stages, count))
    payload = encode_indices(symbols, TABLES)
    assert len(payload) % 4 == 0
    assert (decode_indices(payload, TABLES, stages, count) == symbols).all()


def test_golden_bytes() -> None:
    """Any change here changes every file on disk: bump the format version with it."""
    symbols = np.array([[0, 1, 0, 2, 0, 0, 3, 7, 0, 1], [5, 4, 3, 2, 1, 0, 7, 6, 5, 4]])
    payload = encode_indices(symbols, TABLES)
    assert payload.hex() == GOLDEN_HEX


GOLDEN_HEX = "93666f4785242fea"


def test_skewed_table_compresses() -> None:
    rng = np.random.default_rng(0)
    p = TABLES[0] / TABLES[0].sum()
    symbols = rng.choice(len(p), size=(1, 20000), p=p)
    bits = len(encode_indices(symbols, TABLES)) * 8 / symbols.size
    ideal = table_entropy_bits(TABLES)[0]
    assert ideal < bits < ideal + 0.05  # within 0.05 bit/symbol of the table's entropy
    assert bits < 3.0  # a uniform code would need 3 bits


def test_unused_words_are_refused() -> None:
    symbols = np.zeros((1, 10), dtype=np.int64)
    payload = encode_indices(symbols, TABLES) + b"\x12\x34\x56\x78" * 3
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, TABLES, 1, 10)


@pytest.mark.parametrize("payload", [b"", b"\x00\x01\x02"])
def test_bad_lengths_are_refused(payload: bytes) -> None:
    with pytest.raises(CorruptBitstreamError):
        decode_indices(payload, TABLES, 1, 10)


def test_too_many_stages_refused() -> None:
    with pytest.raises(CorruptBitstreamError):
        decode_indices(b"\x00" * 8, TABLES, 3, 10)


def test_out_of_alphabet_symbol_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        encode_indices(np.array([[8]]), TABLES)


def test_payload_too_short_for_the_declared_symbols_is_refused_before_decoding() -> None:
    payload = encode_indices(np.zeros((2, 10), dtype=np.int64), TABLES)
    with pytest.raises(CorruptBitstreamError, match="too short"):
        decode_indices(payload, TABLES, 2, 10_000_000)
