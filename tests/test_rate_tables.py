"""Static frequency tables: the encoder's rate term and the quantizer study's coder."""

from __future__ import annotations

import numpy as np
import pytest

from diveq_codec.codec.rate_tables import (
    code_lengths,
    context_counts,
    encode_without_context,
    smoothed_counts,
    table_entropy_bits,
)

ALPHABET = 8


def test_context_counts_use_the_row_above_and_the_previous_stage() -> None:
    symbols = np.array([[1, 2, 3, 4], [0, 0, 5, 5]])  # a 2×2 grid, two stages
    counts = context_counts(symbols, 2, ALPHABET)
    # stage 1: top row in the "no row above" context (index ALPHABET), then 3 under 1, 4 under 2
    assert counts[0, ALPHABET, 1] == counts[0, ALPHABET, 2] == counts[0, 1, 3] == counts[0, 2, 4] == 1
    # stage 2: each symbol in the context of stage 1's index at the same position
    assert counts[1, 1, 0] == counts[1, 2, 0] == counts[1, 3, 5] == counts[1, 4, 5] == 1
    assert counts.sum() == symbols.size


def test_smoothing_keeps_every_symbol_and_refuses_bad_shapes() -> None:
    assert (smoothed_counts(np.zeros((2, ALPHABET + 1, ALPHABET), dtype=np.int64)) == 1).all()
    with pytest.raises(ValueError):
        smoothed_counts(np.zeros((2, ALPHABET, ALPHABET)))
    with pytest.raises(ValueError):
        smoothed_counts(-np.ones((2, ALPHABET)))


def test_context_tables_have_less_entropy_on_correlated_rows() -> None:
    rng = np.random.default_rng(0)
    width = 32
    rows = [rng.integers(0, ALPHABET, width)]
    for _ in range(63):  # each row mostly repeats the one above
        rows.append(np.where(rng.random(width) < 0.9, rows[-1], rng.integers(0, ALPHABET, width)))
    symbols = np.concatenate(rows)[None]
    tables = smoothed_counts(context_counts(symbols, width, ALPHABET))
    flat = smoothed_counts(context_counts(symbols, width, ALPHABET).sum(axis=1))
    assert table_entropy_bits(tables)[0] < 0.6 * table_entropy_bits(flat)[0]
    # the zeroth-order coder spends about the flat tables' entropy
    bits = len(encode_without_context(symbols, flat)) * 8 / symbols.size
    assert abs(bits - table_entropy_bits(flat)[0]) < 0.1


def test_code_lengths_are_the_static_tables_bits() -> None:
    rng = np.random.default_rng(9)
    tables = rng.integers(1, 50, size=(3, 9, 8))
    first, following = code_lengths(tables)
    assert first.shape == (8,) and following.shape == (2, 8, 8)
    column = tables[0].sum(axis=0)
    assert np.allclose(2.0 ** -first, column / column.sum())
    assert np.allclose(2.0 ** -following[1, 5], tables[2, 5] / tables[2, 5].sum())
    assert np.allclose((2.0 ** -following).sum(axis=2), 1.0)
