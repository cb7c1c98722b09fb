"""Copy measured Kodak rate–distortion from an eval run into the model cards.

``python -m codec.record_rd EVAL_DIR/diveq.json [--weights weights]``

The eval JSON (written by ``diveq-codec eval``) lists, per rate point, the bpp and PSNR
averaged over the images; each card's ``rate_points`` entry with the same quality gets
them, together with the command that produced them, so that `diveq-codec models` shows
only measured numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m codec.record_rd", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="our codec's JSON from `diveq-codec eval`")
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--command", default="diveq-codec eval <kodak> -q all --device cpu",
                   help="the command that produced the results, recorded in the card")
    args = p.parse_args(argv)

    results = json.loads(args.results.read_text())
    measured = dict(zip(results["meta"]["quality"], zip(results["results"]["bpp"], results["results"]["psnr-rgb"])))
    images = results["meta"].get("images")
    updated = 0
    for card_path in sorted(args.weights.glob("*.json")):
        card = json.loads(card_path.read_text())
        for point in card.get("rate_points", []):
            if point["quality"] in measured:
                bpp, psnr = measured[point["quality"]]
                point["kodak_bpp"], point["kodak_psnr"] = round(bpp, 4), round(psnr, 3)
                updated += 1
        card["kodak_eval"] = {"images": images, "command": args.command,
                              "measure": "whole-file bpp; PSNR-RGB of the 8-bit decoded file, averaged per image"}
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(f"recorded {updated} rate points", file=sys.stderr)
    return 0 if updated else 1


if __name__ == "__main__":
    raise SystemExit(main())
