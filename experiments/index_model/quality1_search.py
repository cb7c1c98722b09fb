"""Quality 1 (one stage) writes the nearest codewords (λ = 0). What would a small λ, with
the search's rounds charging the index model's costs, save in bits and lose in PSNR?

    python experiments/index_model/quality1_search.py TRAINING_DIR [--start 8] [--every 24] [--weights 0,0.001,...]

Each λ is coded and decoded for real (rate_weights.coded_means) on held-out training photos
(multiples of 8 are held out from the index model's training); prints mean bpp (payload),
PSNR, and the change against λ = 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diveq_codec.codec import index_costs
from diveq_codec.codec.release.rate_weights import coded_means, exact_vectors
from diveq_codec.codec.zoo import load_model, network_rate_points
from diveq_codec.models.data import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--start", type=int, default=8)
    parser.add_argument("--every", type=int, default=24)
    parser.add_argument("--stages", type=int, default=1)
    parser.add_argument("--weights", default="0,0.0005,0.001,0.002,0.003,0.005")
    args = parser.parse_args()
    loaded = load_model(network_rate_points()[0].model_id, "cpu")
    paths = list_images(args.folder)[args.start::args.every]
    weights = [float(w) for w in args.weights.split(",")]
    runs = {w: (args.stages, w, index_costs.ROUNDS) for w in weights}
    mean = coded_means(loaded, (exact_vectors(loaded, p) for p in paths), runs)
    bpp0, db0 = mean[weights[0]]
    print(f"{len(paths)} photos of {args.folder}, {args.stages} stage(s)")
    print("| λ | bpp | PSNR (dB) | bits | PSNR change |\n|---|---|---|---|---|")
    for w in weights:
        bpp, db = mean[w]
        print(f"| {w:g} | {bpp:.5f} | {db:.3f} | {100 * (bpp / bpp0 - 1):+.2f} % | {db - db0:+.3f} dB |")


if __name__ == "__main__":
    main()
