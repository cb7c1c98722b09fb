"""Small random integer index models (codec/index_model.py) for the coder's tests, drawn with
numpy's generator so that they are the same on every machine and numpy version."""

from __future__ import annotations

import numpy as np

from diveq_codec.codec.index_adaptation import log_table
from diveq_codec.codec.index_model import TENSOR_PREFIX, IndexModel, from_tensors

OFFSETS = ((-2, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1))


def random_tensors(seed: int = 0, stages: int = 3, codes: int = 8, dim: int = 4, hidden: int = 6,
                   projected: int = 3, peak: int = 0, span_steps: int = 16 * 16, adapt: int = 4) -> dict[str, np.ndarray]:
    """int32 tensors of a random model; ``peak`` > 0 adds that much to codeword 0's logit bias
    (in the logits' own units), making it nearly certain; ``adapt`` is every stage's
    adaptation weight (sixteenths)."""
    rng = np.random.default_rng(seed)

    def ints(shape: tuple[int, ...], bound: int) -> np.ndarray:
        return rng.integers(-bound, bound + 1, size=shape).astype(np.int32)

    t = {
        "codebooks": ints((stages, codes, dim), 1000),
        "cap": np.array([512], dtype=np.int32),
        "output_table": np.maximum(1, np.round(2.0**16 * 2.0 ** (-np.arange(span_steps + 1) / 16))).astype(np.int32),
        "neighbour_offsets": np.array(OFFSETS, dtype=np.int32),
        "log_table": log_table(codes),
    }
    for m in range(stages):
        p = f"stage{m + 1}."
        t[p + "neighbours"] = ints((len(OFFSETS), codes + 2, hidden), 3000)
        t[p + "bias"] = ints((hidden,), 3000)
        t[p + "first_shift"] = np.array([4], dtype=np.int32)
        t[p + "hidden_w"] = ints((hidden, hidden), 2000)
        t[p + "hidden_b"] = ints((hidden,), 20000)
        t[p + "hidden_shift"] = np.array([10], dtype=np.int32)
        t[p + "out_w"] = ints((hidden, codes), 2000)
        out_b = ints((codes,), 50000)
        out_b[0] += peak
        t[p + "out_b"] = out_b
        t[p + "logit_shift"] = np.array([14], dtype=np.int32)
        t[p + "adapt_weight"] = np.array([adapt], dtype=np.int32)
        if m:
            t[p + "project_w"] = ints((dim, projected), 2000)
            t[p + "project_b"] = ints((projected,), 100000)
            t[p + "project_shift"] = np.array([12], dtype=np.int32)
            t[p + "context_w"] = ints((9 * projected, hidden), 2000)
            t[p + "previous"] = ints((codes, hidden), 3000)
    return {TENSOR_PREFIX + k: v for k, v in t.items()}


def random_model(seed: int = 0, stages: int = 3, **options: int) -> IndexModel:
    return from_tensors(random_tensors(seed, stages, **options))
