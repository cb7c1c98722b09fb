"""Copy measured Kodak rate–distortion from an eval run into the model cards.

``python -m diveq_codec.codec.release.record_rd EVAL_DIR/diveq.json [--weights DIR]``

The eval JSON (written by ``diveq-codec eval``) lists, per rate point, the bpp and PSNR
averaged over the images; each card's ``rate_points`` entry with the same quality gets
them as ``kodak_bpp`` and ``kodak_psnr`` (the keys codec/zoo.py reads), and the card's
``kodak_eval`` records the command that produced them, so that `diveq-codec models` shows
only measured numbers.

When the eval folder's ``eval_meta.json`` is beside the JSON, a card gets only numbers
measured with its own weights and with its rate point encoded as the card says (stages,
λ, DCT layer): numbers of other weights are not recorded under these.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from diveq_codec.codec.card_schema import save_card_data
from diveq_codec.codec.errors import OutputError
from diveq_codec.codec.evaluation.eval_meta import META_NAME, layer_record, read_meta

PROG = "python -m diveq_codec.codec.release.record_rd"


def measured_points(results: dict[str, Any]) -> dict[int, tuple[float, float]]:
    """quality → (bpp, PSNR-RGB) of an eval results JSON; points without finite numbers left out."""
    qualities = results["meta"]["quality"]
    pairs = zip(results["results"]["bpp"], results["results"]["psnr-rgb"])
    return {int(q): (float(bpp), float(psnr)) for q, (bpp, psnr) in zip(qualities, pairs)
            if bpp is not None and psnr is not None and math.isfinite(bpp) and math.isfinite(psnr)}


def _mismatch(card: dict[str, Any], point: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Why the eval's numbers for ``point`` are not this card's, or None (also when there is no meta)."""
    if not meta:
        return None
    weights = meta.get("weights", {}).get(str(card.get("model_id")))
    if weights != bytes.fromhex(card["sha256"])[:8].hex():
        return f"measured with other weights ({weights})"
    # A record with more keys is another encoder effort's (beam, refine_steps): other
    # numbers than the default encoder's, which a card quotes. Older folders have no record.
    record = meta.get("rate_points", {}).get(str(point["quality"]))
    expected = {"stages": point["stages"], "rate_weight": point.get("rate_weight", 0.0),
                **layer_record(point.get("layer_step"))}
    if record is not None and record != expected:
        return f"encoded otherwise ({record} vs the card's {expected})"
    return None


def record(card: dict[str, Any], measured: dict[int, tuple[float, float]], meta: dict[str, Any],
           warn: Any) -> int:
    """Write ``measured`` into the card's matching rate points; returns how many."""
    updated = 0
    for point in card.get("rate_points", []):
        if point["quality"] not in measured:
            continue
        reason = _mismatch(card, point, meta)
        if reason:
            warn(f"{card['name']} quality {point['quality']} skipped: {reason}")
            continue
        bpp, psnr = measured[point["quality"]]
        point["kodak_bpp"], point["kodak_psnr"] = round(bpp, 4), round(psnr, 3)
        updated += 1
    return updated


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="our codec's JSON from `diveq-codec eval` (EVAL_DIR/diveq.json)")
    p.add_argument("--weights", type=Path, default=None,
                   help="folder of model cards (default: the zoo's, $DIVEQ_WEIGHTS_DIR or the shipped weights)")
    p.add_argument("--command", default="diveq-codec eval <kodak> -q all --device cpu",
                   help="the command that produced the results, recorded in the card")
    args = p.parse_args(argv)
    if args.weights is None:
        from diveq_codec.codec.cards import weights_dir

        args.weights = weights_dir()

    def warn(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr)

    try:
        results = json.loads(args.results.read_text())
        measured = measured_points(results)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warn(f"{args.results} is not an eval results JSON ({exc})")
        return 2
    try:
        meta = read_meta(args.results.parent)
    except OutputError as exc:
        warn(str(exc))
        return 2
    if not meta:
        warn(f"no {META_NAME} beside {args.results}: the weights the numbers belong to are not checked")
    total = 0
    for card_path in sorted(args.weights.glob("*.json")):
        card = json.loads(card_path.read_text())
        updated = record(card, measured, meta, warn)
        if not updated:  # a card none of whose points were measured keeps its own record
            continue
        card["kodak_eval"] = {"images": results["meta"].get("images"), "command": args.command,
                              "measure": "whole-file bpp; PSNR-RGB of the 8-bit decoded file, averaged per image"}
        save_card_data(card_path, card)
        total += updated
    print(f"recorded {total} rate points", file=sys.stderr)
    return 0 if total else 1


if __name__ == "__main__":
    raise SystemExit(main())
