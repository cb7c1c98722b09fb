"""The zoo before and after the index model, on the eval's Kodak results.

    python experiments/index_model/compare_zoos.py <(git show 8d4b778:docs/kodak/diveq.json) docs/kodak/diveq.json

For each quality both files hold (``--qualities`` when AFTER is an eval of some of them):
bpp before and after, the change in bits, and the PSNR difference (the same indices give
the same PSNR); then the BD-rate of the whole curve after against before, and against WebP
measured here when ``--webp`` names its JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diveq_codec.codec.evaluation.bdrate import bd_rate


def curve(path: Path) -> dict[str, list[float]]:
    return json.loads(Path(path).read_text())["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--webp", type=Path, default=None)
    parser.add_argument("--qualities", default=None,
                        help="the qualities AFTER holds, comma-separated, when it is not the whole zoo "
                             "(an eval run with -q): BEFORE is cut to them")
    args = parser.parse_args()
    before, after = curve(args.before), curve(args.after)
    if args.qualities is not None:
        wanted = [int(q) - 1 for q in args.qualities.split(",")]
        before = {key: [values[i] for i in wanted] for key, values in before.items() if isinstance(values, list)}
    print("| quality | bpp before | bpp after | bits | PSNR after − before (dB) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    labels = range(1, len(before["bpp"]) + 1) if args.qualities is None else map(int, args.qualities.split(","))
    for q, b0, b1, p0, p1 in zip(labels, before["bpp"], after["bpp"], before["psnr-rgb"], after["psnr-rgb"], strict=True):
        print(f"| {q} | {b0:.4f} | {b1:.4f} | {100 * (b1 / b0 - 1):+.1f} % | {p1 - p0:+.3f} |")
    print(f"\nBD-rate after against before: {bd_rate(before['bpp'], before['psnr-rgb'], after['bpp'], after['psnr-rgb']):+.2f} %")
    if args.webp is not None:
        webp = curve(args.webp)
        for name, ours in (("before", before), ("after", after)):
            print(f"BD-rate {name} against WebP: {bd_rate(webp['bpp'], webp['psnr-rgb'], ours['bpp'], ours['psnr-rgb']):+.2f} %")


if __name__ == "__main__":
    main()
