"""How many bits do per-image adaptive entropy tables (coder 2) save, for which prior weight?

``python scripts/adaptive_coding_probe.py IMAGE_DIR [--every 56] [--max-side 768] [--weights 32,128,512]``

Coder 1 gives every symbol its static training-set table for its context; coder 2
(codec/entropy.py; coder 3, what ``encode`` writes, builds on it) adapts those tables to
the image row by row:
the symbols of latent row r of stage m are coded with

    p(s | c) ∝ w · C[c, s] + T[c] · n[c, s]

where C are the static counts of context c (T their total) and n counts what rows < r of
the same stage and image coded in context c. ``w`` is the prior's weight in symbols; this
probe measures both coders, through the coder's own tables, for several w.
Ideal code lengths (−log₂ p summed) are compared, so the figures exclude the range
coder's few bytes of overhead. Run it on training photos, never on the evaluation set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec.index_coder import _contexts, _StageTables
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models.data import list_images, load_rgb


def stage_bits(indices: np.ndarray, width: int, counts: np.ndarray, stage: int, weight: int | None) -> float:
    """Ideal bits of one stage's symbols under the coder's own row tables: static (``weight``
    None, coder 1) or adapted with prior weight ``weight`` (coder 2)."""
    contexts, symbols = _contexts(indices, stage, width, counts.shape[2]), indices[stage]
    tables = _StageTables(counts, stage, adaptive=weight is not None, prior_weight=weight or 0)
    bits = 0.0
    for start in range(0, symbols.size, width):
        c, s = contexts[start : start + width], symbols[start : start + width]
        bits -= np.log2(tables.row(c)[np.arange(c.size), s].astype(np.float64)).sum()
        tables.coded(c, s)
    return bits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", type=Path)
    p.add_argument("--every", type=int, default=1, help="use every k-th image (sorted by path)")
    p.add_argument("--max-side", type=int, default=768, help="downscale so the long side is at most this")
    p.add_argument("--weights", default="32,128,512", help="prior weights w to try, comma-separated")
    args = p.parse_args()
    weights = [int(w) for w in args.weights.split(",")]
    loaded = load_model(resolve_quality(None).model_id, "cpu")
    stages = loaded.model.num_stages
    variants: list[int | None] = [None, *weights]
    bits = {v: np.zeros(stages) for v in variants}
    symbols = 0
    paths = list_images(args.images)[:: args.every]
    for path in paths:
        x = load_rgb(path, args.max_side).unsqueeze(0).float() / 255
        with torch.no_grad():
            indices, (_, width) = loaded.model.encode_indices(x)
        indices = indices.numpy()
        symbols += indices.shape[1]
        for v in variants:
            for m in range(stages):
                bits[v][m] += stage_bits(indices, width, loaded.tables, m, v)
    static = np.cumsum(bits[None])
    print(f"{len(paths)} images, {symbols} latent positions; ideal bits per position, stages 1..q, "
          "and the saving against static tables")
    print("q      static  " + "  ".join(f"w={w:<5d}  saving" for w in weights))
    for q in range(stages):
        cells = [f"{np.cumsum(bits[w])[q] / symbols:7.2f} {100 * (1 - np.cumsum(bits[w])[q] / static[q]):6.1f} %"
                 for w in weights]
        print(f"{q + 1:<4d} {static[q] / symbols:8.2f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
