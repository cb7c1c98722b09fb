"""The index model's adaptation to the image being coded: counts of what each context has
coded so far in this stage, as a term added to the network's logits.

The network knows a position's neighbourhood but not the image: an image that keeps using
a few codewords (a sky, a wall) makes them likelier everywhere. So each stage keeps, per
context c (stage 1: the index directly above, ``codes`` on the top row; later stages: the
previous stage's index at the position), how often each codeword s has been coded in it,
n[c][s], and N[c] = Σₛ n[c][s]. A symbol's logit gets w · log₂((2n[c][s] + 1) / (2N[c] + K))
added (K codewords), in units of 1/64 bit, with w per stage in sixteenths (the weights
file's ``stageN.adapt_weight``). The counts grow after each pass of a row, and a context
whose N passes ``COUNT_CAP`` has its counts halved (rounding up), so that old rows weigh
less and the numbers stay small.

The logarithm is a table of integers (``log_table``: round(64 · log₂ x)) stored in the
weights file, so encoder and decoder add the same integers on every machine.
"""

from __future__ import annotations

import numpy as np

COUNT_CAP = 2048  # N[c] stays at or below this after every update
LOG_UNITS = 64  # log_table holds round(LOG_UNITS · log₂ x)
WEIGHT_UNITS = 16  # adapt_weight is w in sixteenths


def log_table_size(codes: int) -> int:
    """Entries the log table needs: 2N + K for N up to COUNT_CAP, and 2n + 1 below it."""
    return 2 * COUNT_CAP + codes + 1


def log_table(codes: int) -> np.ndarray:
    x = np.arange(log_table_size(codes), dtype=np.float64)
    x[0] = 1.0  # never read
    return np.round(LOG_UNITS * np.log2(x)).astype(np.int32)


def first_contexts(maps: np.ndarray, stage: int, row: int, cols: np.ndarray, codes: int) -> np.ndarray:
    """The adaptation's context of positions (row, cols) of stage ``stage`` of (stages, h, w) maps:
    the same context as the static tables' (codec/rate_tables.py first_contexts), taken a pass
    at a time, since a decoder has the row above only once it is decoded."""
    if stage:
        return maps[stage - 1, row, cols]
    if row == 0:
        return np.full(cols.size, codes, dtype=np.intp)
    return maps[0, row - 1, cols]


class StageCounts:
    """One stage's counts for one image: ``terms`` before a pass, ``coded`` after it."""

    def __init__(self, codes: int, table: np.ndarray, weight: int) -> None:
        self.codes, self.table, self.weight = codes, table, weight
        self.counts = np.zeros((codes + 1, codes), dtype=np.intp)
        self.totals = np.zeros(codes + 1, dtype=np.intp)

    def terms(self, contexts: np.ndarray) -> np.ndarray | None:
        """(n, codes) integers in 1/64 bit to add to the logits, or None when w is 0."""
        if not self.weight:
            return None
        gap = self.table[2 * self.counts[contexts] + 1] - self.table[2 * self.totals[contexts] + self.codes][:, None]
        return np.floor(gap * (self.weight / WEIGHT_UNITS))  # a power-of-two division of integers: exact

    def coded(self, contexts: np.ndarray, symbols: np.ndarray) -> None:
        if not self.weight:
            return
        size = self.counts.size
        self.counts += np.bincount(contexts * self.codes + symbols, minlength=size).reshape(self.counts.shape)
        self.totals += np.bincount(contexts, minlength=self.totals.size)
        full = np.flatnonzero(self.totals > COUNT_CAP)
        while full.size:
            self.counts[full] = (self.counts[full] + 1) // 2
            self.totals[full] = self.counts[full].sum(axis=1)
            full = full[self.totals[full] > COUNT_CAP]
