"""Turn a trained index prior (models/index_prior.py) into the integer tensors of
codec/index_model.py.

Weights become integers of at most ``WEIGHT_BITS`` bits (a power-of-two scale per layer),
activations integers in [0, ACTIVATION_CAP·2^ACTIVATION_BITS], codewords integers at
2^CODEWORD_BITS: post-training quantisation, whose cost in bits the training report
measures (``python -m diveq_codec.codec.release.index_model_report``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diveq_codec.codec.card_schema import save_card_data
from diveq_codec.codec.index_adaptation import log_table
from diveq_codec.codec.index_model import TENSOR_PREFIX, from_tensors
from diveq_codec.models.index_prior import ACTIVATION_CAP, IndexPrior, load_checkpoint
from diveq_codec.models.weights_file import file_sha256, read_tensors

WEIGHT_BITS = 12  # signed: |w| ≤ 2047
ACTIVATION_BITS = 8  # an activation's unit is 2^-8
CODEWORD_BITS = 10  # a codeword component's unit is 2^-10
LOGIT_STEPS_BITS = 4  # the output table has 2^4 steps per bit
# The output table spans 2^-TABLE_SPAN_BITS: with 128 codewords no probability exceeds
# 1 / (1 + 127·2^-span), which bounds the bits a symbol can cost from below.
TABLE_SPAN_BITS = 12
# The adaptation's weight per stage, in sixteenths (codec/index_adaptation.py), chosen on the
# held-out training photos (docs/entropy-coding.md).
ADAPT_WEIGHTS = (4, 4, 3, 0)


def weight_shift(w: torch.Tensor) -> int:
    """The largest power-of-two scale that keeps every weight within WEIGHT_BITS signed bits."""
    top = float(w.detach().abs().max())
    limit = 2 ** (WEIGHT_BITS - 1) - 1
    return int(math.floor(math.log2(limit / top))) if top > 0 else 0


def _int(x: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.round(x.detach().double() * 2.0**shift).to(torch.int32)


def output_table(span_bits: int = TABLE_SPAN_BITS) -> np.ndarray:
    steps = 2**LOGIT_STEPS_BITS
    d = np.arange(span_bits * steps + 1)
    return np.maximum(1, np.round(2.0**16 * 2.0 ** (-d / steps))).astype(np.int32)


def integer_tensors(prior: IndexPrior, codebooks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``index_model.*`` tensors of a trained prior; ``codebooks`` (S, codes, D) float."""
    a_bits = ACTIVATION_BITS
    out: dict[str, torch.Tensor] = {
        "codebooks": _int(codebooks[: prior.config.stages], CODEWORD_BITS),
        "cap": torch.tensor([int(ACTIVATION_CAP * 2**a_bits)], dtype=torch.int32),
        "output_table": torch.from_numpy(output_table()),
        "neighbour_offsets": torch.tensor(prior.config.neighbours, dtype=torch.int32),
        "log_table": torch.from_numpy(log_table(prior.config.codes)),
    }
    for m, stage in enumerate(prior.stages):
        p = f"stage{m + 1}."
        bias = stage.bias.detach().double()
        if m:
            project_w = stage.project.weight[:, :, 0, 0].T  # (D, P)
            sp = weight_shift(project_w)
            out[p + "project_w"] = _int(project_w, sp)
            out[p + "project_b"] = _int(stage.project.bias, sp + CODEWORD_BITS)
            out[p + "project_shift"] = torch.tensor([sp + CODEWORD_BITS - a_bits], dtype=torch.int32)
            context_w = stage.context.weight.permute(2, 3, 1, 0).reshape(-1, stage.context.weight.shape[0])
            first = weight_shift(context_w) + a_bits
            out[p + "context_w"] = _int(context_w, first - a_bits)
            out[p + "previous"] = _int(stage.previous.weight, first)
            bias = bias + stage.context.bias.detach().double()
        else:
            first = WEIGHT_BITS + a_bits
        out[p + "neighbours"] = _int(stage.neighbours, first)
        out[p + "bias"] = _int(bias, first)
        out[p + "first_shift"] = torch.tensor([first - a_bits], dtype=torch.int32)
        sh = weight_shift(stage.hidden.weight)
        out[p + "hidden_w"] = _int(stage.hidden.weight.T, sh)
        out[p + "hidden_b"] = _int(stage.hidden.bias, sh + a_bits)
        out[p + "hidden_shift"] = torch.tensor([sh], dtype=torch.int32)
        so = weight_shift(stage.out.weight)
        out[p + "out_w"] = _int(stage.out.weight.T, so)
        out[p + "out_b"] = _int(stage.out.bias, so + a_bits)
        out[p + "logit_shift"] = torch.tensor([so + a_bits - LOGIT_STEPS_BITS], dtype=torch.int32)
        weight = ADAPT_WEIGHTS[m] if m < len(ADAPT_WEIGHTS) else 0
        out[p + "adapt_weight"] = torch.tensor([weight], dtype=torch.int32)
    return {TENSOR_PREFIX + k: v.contiguous() for k, v in out.items()}


def add_to_release(card_path: Path, checkpoint: Path, name: str, model_id: int, out: Path,
                   record: dict) -> Path:
    """Write OUT/NAME.safetensors (the card's network and static tables, plus the index model
    of ``checkpoint``) and its card OUT/NAME.json; returns the card's path."""
    card = json.loads(card_path.read_text())
    _, tensors = read_tensors(card_path.parent / card["file"])
    tensors = {k: v for k, v in tensors.items() if not k.startswith(TENSOR_PREFIX)}
    prior, state = load_checkpoint(checkpoint)
    index_tensors = integer_tensors(prior, tensors["quantizer.codebooks"].float())
    from_tensors({k: v.numpy() for k, v in index_tensors.items()})  # refuses inexact sums
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    with safe_open(str(card_path.parent / card["file"]), framework="pt") as fh:
        metadata = dict(fh.metadata())
    metadata["model_id"] = str(model_id)
    save_file({**tensors, **index_tensors}, str(weights), metadata=metadata)
    parameters = sum(v.numel() for k, v in index_tensors.items() if not k.endswith(("codebooks", "output_table")))
    card.update(name=name, model_id=model_id, file=weights.name, sha256=file_sha256(weights),
                bytes=weights.stat().st_size)
    card["entropy_tables"] = {k: v for k, v in card["entropy_tables"].items()
                              if k not in ("second_contexts", "second_tensor")}
    card["entropy_tables"]["use"] = "the encoder's rate term only (codec/rate_tables.py)"
    card["index_model"] = {
        "config": state["config"], "parameters": parameters, "training_steps": state["step"],
        "training_s": round(state["elapsed_s"]), **record,
        "integer": {"weight_bits": WEIGHT_BITS, "activation_bits": ACTIVATION_BITS,
                    "codeword_bits": CODEWORD_BITS, "table_span_bits": TABLE_SPAN_BITS},
        "adapt_weights_sixteenths": list(ADAPT_WEIGHTS[: prior.config.stages]),
    }
    card_out = out / f"{name}.json"
    save_card_data(card_out, card)
    return card_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add a trained index model to a release's weights.")
    parser.add_argument("checkpoint", type=Path, help="OUT_DIR/checkpoint.pt of models.train_index_prior")
    parser.add_argument("--card", type=Path, required=True, help="the release's card (its weights beside it)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-id", type=int, required=True)
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--command", default="", help="the training command, for the card")
    args = parser.parse_args(argv)
    holdout = args.checkpoint.parent / "holdout_bits.json"
    record = {"command": args.command}
    if holdout.exists():
        record["holdout_float_bits_per_symbol"] = json.loads(holdout.read_text())
    card = add_to_release(args.card, args.checkpoint, args.name, args.model_id, args.out, record)
    print(f"wrote {card}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
