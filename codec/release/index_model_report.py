"""Bits per symbol of the index coder, by stage, on saved index maps; and its decode time.

``python -m diveq_codec.codec.release.index_model_report MAPS.npz [--holdout]
[--checkpoint OUT_DIR/checkpoint.pt] [--spans 16,12,10] [--timing]``

MAPS.npz comes from ``python -m diveq_codec.codec.release.index_maps``. ``--holdout`` keeps
only the images the index model's training held out (models/train_index_prior.py). The
bits are the real coder's: the payload's length after each stage, less the one before.
Without ``--checkpoint`` the shipped model's index model is measured; with one, its integer
copy (as codec/release/index_model_export.py would ship it), and with ``--spans`` each
output-table span in bits (how far below the likeliest codeword a probability may fall:
the shorter, the more a near-certain symbol costs and the more bits a declared image needs);
``--adapt`` replaces the adaptation's weights (codec/index_adaptation.py).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec import index_coder
from diveq_codec.codec.index_model import IndexModel, from_tensors
from diveq_codec.codec.release import index_model_export
from diveq_codec.codec.zoo import load_model, network_rate_points
from diveq_codec.models.index_prior import load_checkpoint
from diveq_codec.models.train_index_prior import load_maps


def selected_maps(path: Path, holdout: bool) -> list[tuple[str, np.ndarray]]:
    """(configuration, map) of every image, or of the images the training held out."""
    train, held_out, _ = load_maps([path])
    return held_out if holdout else train + held_out


def candidate(checkpoint: Path, codebooks: torch.Tensor) -> IndexModel:
    prior, _ = load_checkpoint(checkpoint)
    tensors = index_model_export.integer_tensors(prior, codebooks)
    return from_tensors({k: v.numpy() for k, v in tensors.items()})


def with_span(model: IndexModel, span_bits: int) -> IndexModel:
    """The model with its output table made for another span (at most 16 bits: the table's
    first entry is 2^16 and none may fall below 1)."""
    table = index_model_export.output_table(span_bits).astype(np.float32)
    return replace(model, output_table=table)


def with_adaptation(model: IndexModel, weights: list[int]) -> IndexModel:
    return replace(model, stages=[replace(net, adapt_weight=w) for net, w in zip(model.stages, weights, strict=True)])


def stage_bits(model: IndexModel, maps: list[tuple[str, np.ndarray]]) -> dict[str, list[float]]:
    """Mean coded bits per symbol of each stage of each configuration (stages|λ)."""
    totals: dict[str, list[list[float]]] = {}
    for config, m in maps:
        stages, h, w = m.shape
        flat = m.reshape(stages, -1).astype(np.int64)
        entry = totals.setdefault(config, [[0.0, 0] for _ in range(stages)])
        before = 0
        for s in range(stages):
            coded = len(index_coder.encode_indices(flat[: s + 1], model, w)) * 8
            entry[s][0] += coded - before
            entry[s][1] += h * w
            before = coded
    return {c: [round(b / n, 4) for b, n in v] for c, v in totals.items()}


def decode_seconds(model: IndexModel, maps: list[tuple[str, np.ndarray]]) -> list[float]:
    """Mean seconds to decode each stage of a map (of the configurations with the most stages)."""
    deepest = max(m.shape[0] for _, m in maps)
    times = np.zeros(deepest)
    chosen = [m for _, m in maps if m.shape[0] == deepest]
    for m in chosen:
        stages, h, w = m.shape
        flat = m.reshape(stages, -1).astype(np.int64)
        before = 0.0
        for s in range(stages):
            payload = index_coder.encode_indices(flat[: s + 1], model, w)
            start = time.perf_counter()
            index_coder.decode_indices(payload, model, s + 1, h * w, w)
            took = time.perf_counter() - start
            times[s] += took - before
            before = took
    return [round(float(t) / len(chosen), 4) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", type=Path)
    parser.add_argument("--holdout", action="store_true")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--spans", default=None, help="output-table spans in bits to compare, e.g. 16,12,10")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--adapt", default=None, help="adaptation weights per stage in sixteenths, e.g. 4,4,2,0")
    args = parser.parse_args(argv)
    loaded = load_model(network_rate_points()[0].model_id)
    model = loaded.index_model
    if args.checkpoint is not None:
        model = candidate(args.checkpoint, loaded.model.quantizer.codebooks.detach().float())
    if args.adapt is not None:
        model = with_adaptation(model, [int(w) for w in args.adapt.split(",")])
    maps = selected_maps(args.maps, args.holdout)
    spans = [int(s) for s in args.spans.split(",")] if args.spans else [None]
    report: dict[str, object] = {"images": len(maps) // max(1, len({c for c, _ in maps}))}  # a map per configuration
    for span in spans:
        measured = model if span is None else with_span(model, span)
        report[f"bits (span {span})" if span else "bits"] = stage_bits(measured, maps)
    if args.timing:
        report["decode_s_per_stage"] = decode_seconds(model, maps)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
