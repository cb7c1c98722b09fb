"""How well the encoder's rate term (static tables) predicts what the index model spends.

    python experiments/index_model/rate_term_gap.py .data/kodak_maps.npz

For every symbol of the maps (the encoder's own choices; MAPS from
``python -m diveq_codec.codec.release.index_maps``), the bits the static tables charge in the
entropy-constrained search (codec/rate_tables.py code_lengths) against the bits the index
model gives it when coding (its probability with the adaptation, as the coder computes it).
Prints, per stage: the mean of each, their correlation, and the mean absolute gap.
"""

from __future__ import annotations

import sys

import numpy as np

from diveq_codec.codec.index_coder import StageCoding
from diveq_codec.codec.index_model import IndexModel
from diveq_codec.codec.rate_tables import code_lengths
from diveq_codec.codec.zoo import load_model, network_rate_points


def model_bits(model: IndexModel, maps: np.ndarray, stage: int) -> np.ndarray:
    """−log₂ of each symbol's probability under the index model, as the coder computes it
    pass by pass (codec.index_coder.StageCoding), in the map's layout (h, w)."""
    coding = StageCoding(model, stage, maps.copy())
    out = np.zeros(maps.shape[1:])
    for row, cols, contexts in coding.all_passes():
        freq = coding.probabilities(row, cols, contexts).astype(np.float64)
        symbols = maps[stage, row, cols]
        out[row, cols] = -np.log2(freq[np.arange(cols.size), symbols] / freq.sum(axis=1))
        coding.coded(row, cols, symbols, contexts)
    return out


def main() -> None:
    loaded = load_model(network_rate_points()[0].model_id)
    model = loaded.require_index_model()
    first, following = code_lengths(loaded.tables)
    data = np.load(sys.argv[1])
    static: dict[int, list[np.ndarray]] = {}
    learned: dict[int, list[np.ndarray]] = {}
    for key in data.files:
        if key == "names" or not key.endswith(("|2|0.00966", "|3|0.007114", "|4|0.006073")):
            continue  # the rate points that use λ
        maps = data[key].astype(np.intp)
        for stage in range(maps.shape[0]):
            cost = first[maps[0]] if stage == 0 else following[stage - 1][maps[stage - 1], maps[stage]]
            static.setdefault(stage, []).append(cost.ravel())
            learned.setdefault(stage, []).append(model_bits(model, maps, stage).ravel())
    print("| stage | static tables (bits) | index model (bits) | correlation | mean abs gap |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for stage in sorted(static):
        a, b = np.concatenate(static[stage]), np.concatenate(learned[stage])
        print(f"| {stage + 1} | {a.mean():.3f} | {b.mean():.3f} | {np.corrcoef(a, b)[0, 1]:.3f} | {np.abs(a - b).mean():.3f} |")


if __name__ == "__main__":
    main()
