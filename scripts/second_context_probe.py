"""How many bits does coder 3's second context save over coder 2, and which second context?

``python scripts/second_context_probe.py IMAGE_DIR [--every 1] [--max-side 512]``

Coder 3 (codec/entropy.py, what ``encode`` writes) scales coder 2's adaptive probability
p₁(s | c₁) of each symbol by the clipped square root of p₂(s | c₂) / p(s), p₂ the
adaptive probability in a second context and p the symbol's training-set frequency. This
probe splits the images in two (even positions, sorted by path, give the tables; odd ones
are measured, so no table has seen the image it codes), runs the shipped network's coding
path on each, and compares the ideal code lengths (−log₂ p summed, no range-coder
overhead) of:

- coder 2;
- coder 3 as shipped (``_TwoContextTables``);
- the plain product p₁ · p₂ / p in place of the square root, and the square root unclipped;
- other second contexts at stage 1: the left neighbour (known to the encoder only: a
  decoder decodes a row at once), the one above-right, the one two rows up.

Run it on training photos, never on the evaluation set.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec.index_coder import (
    _contexts,
    _second_contexts,
    _StageTables,
    _TwoContextTables,
    context_counts,
    second_context_counts,
    smoothed_counts,
)
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models.data import list_images, load_rgb

Contexts = Callable[[np.ndarray, int, int, int], np.ndarray]


def _neighbour(dy: int, dx: int) -> Contexts:
    """Stage 1's index dy rows up and dx columns left (negative: right); ``alphabet`` off the grid."""
    def contexts(indices: np.ndarray, stage: int, width: int, alphabet: int) -> np.ndarray:
        grid = indices[stage].reshape(-1, width)
        out = np.full_like(grid, alphabet)
        h, w = grid.shape
        out[dy:, max(dx, 0):w + min(dx, 0)] = grid[:h - dy, max(-dx, 0):w - max(dx, 0)]
        return out.reshape(-1)
    return contexts


STAGE1_ALTERNATIVES: dict[str, Contexts] = {
    "left": _neighbour(0, 1), "above-right": _neighbour(1, -1), "two above": _neighbour(2, 0),
}


def _counts(images: list[tuple[np.ndarray, int]], contexts: Contexts, stage: int, alphabet: int) -> np.ndarray:
    counts = np.zeros((stage + 1, alphabet + 1, alphabet), dtype=np.int64)
    for indices, width in images:
        np.add.at(counts[stage], (contexts(indices, stage, width, alphabet), indices[stage]), 1)
    return smoothed_counts(counts)


def _bits(rows: Callable[[np.ndarray, np.ndarray], np.ndarray], coded: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
          first: np.ndarray, second: np.ndarray | None, symbols: np.ndarray, width: int) -> float:
    total = 0.0
    for start in range(0, symbols.size, width):
        c1, s = first[start:start + width], symbols[start:start + width]
        c2 = second[start:start + width] if second is not None else None
        p = rows(c1, c2).astype(np.float64)
        total -= np.log2(p[np.arange(s.size), s] / p.sum(axis=1)).sum()
        coded(c1, s, c2)
    return total


def stage_bits(indices: np.ndarray, width: int, tables: np.ndarray, second: np.ndarray, stage: int,
               variant: str) -> float:
    """Ideal bits of one stage of one image under a variant (see the module docstring)."""
    alphabet = tables.shape[2]
    first_contexts, symbols = _contexts(indices, stage, width, alphabet), indices[stage]
    if variant == "coder 2" or stage == 1:
        plain = _StageTables(tables, stage, adaptive=True)
        return _bits(lambda c1, c2: plain.row(c1), lambda c1, s, c2: plain.coded(c1, s),
                     first_contexts, None, symbols, width)
    contexts = STAGE1_ALTERNATIVES.get(variant, _second_contexts)
    second_contexts = contexts(indices, stage, width, alphabet)
    mixed = _TwoContextTables(tables, second, stage)
    if variant not in ("product", "unclipped"):
        return _bits(mixed.row, lambda c1, s, c2: mixed.coded(c1, s, c2), first_contexts, second_contexts,
                     symbols, width)
    frequency = mixed.frequency.astype(np.float64)
    power = 1.0 if variant == "product" else 0.5
    return _bits(lambda c1, c2: mixed.first.row64(c1) * (mixed.second.row64(c2) / frequency) ** power,
                 lambda c1, s, c2: mixed.coded(c1, s, c2), first_contexts, second_contexts, symbols, width)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", type=Path)
    p.add_argument("--every", type=int, default=1, help="use every k-th image (sorted by path)")
    p.add_argument("--max-side", type=int, default=512, help="downscale so the long side is at most this")
    args = p.parse_args()
    model = load_model(resolve_quality(None).model_id, "cpu").model
    alphabet = model.quantizer.alphabet_sizes[0]
    coded: list[tuple[np.ndarray, int]] = []
    for path in list_images(args.images)[:: args.every]:
        x = load_rgb(path, args.max_side).unsqueeze(0).float() / 255
        with torch.no_grad():
            indices, (_, width) = model.encode_indices(x)
        coded.append((indices.numpy().astype(np.int64), width))
    fit, held_out = coded[0::2], coded[1::2]
    tables = smoothed_counts(sum(context_counts(i, w, alphabet) for i, w in fit))
    second = smoothed_counts(sum(second_context_counts(i, w, alphabet) for i, w in fit))
    variants = ["coder 2", "coder 3", "product", "unclipped", *STAGE1_ALTERNATIVES]
    stages = model.num_stages
    bits = {v: np.zeros(stages) for v in variants}
    for m in range(stages):
        for v in variants:
            if v in STAGE1_ALTERNATIVES and m:
                bits[v][m] = bits["coder 3"][m]
                continue
            second_tables = _counts(fit, STAGE1_ALTERNATIVES[v], m, alphabet) if v in STAGE1_ALTERNATIVES else second
            bits[v][m] = sum(stage_bits(i, w, tables, second_tables, m, v) for i, w in held_out)
    positions = sum(i.shape[1] for i, _ in held_out)
    print(f"tables from {len(fit)} images, measured on {len(held_out)} others ({positions} latent positions); "
          "bits per position of each stage, and the change against coder 2")
    print("stage  " + "  ".join(f"{v:>19s}" for v in variants))
    for m in range(stages):
        base = bits["coder 2"][m]
        print(f"{m + 1:<5d}  " + "  ".join(f"{bits[v][m] / positions:8.4f} {100 * (bits[v][m] / base - 1):+6.1f} %  "
                                           for v in variants))
    print("q      " + "  ".join(f"{v:>19s}" for v in variants) + "   (stages 1..q together)")
    for q in range(stages):
        base = bits["coder 2"][:q + 1].sum()
        print(f"{q + 1:<5d}  " + "  ".join(
            f"{bits[v][:q + 1].sum() / positions:8.4f} {100 * (bits[v][:q + 1].sum() / base - 1):+6.1f} %  "
            for v in variants))


if __name__ == "__main__":
    main()
