"""Which λ a search without the index model's rounds should take: the card's rate_weight
(scaled down to keep the PSNR with the rounds) or its static_rate_weight (the λ the static
tables' search was tuned at).

    python experiments/index_model/static_lambda.py TRAINING_DIR [--start 8] [--every 96] [-q 3,4,7]

Images above index_costs.MAX_LATENTS (4.2 MP) and effort 3's final search skip the rounds.
Here the cap is set to 0 to make Kodak-sized training photos take that path; each point is
coded for real three ways (the rounds at rate_weight; no rounds at rate_weight; no rounds at
static_rate_weight) and the mean bpp and PSNR printed. Held-out training photos only.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from diveq_codec.codec import index_costs, pipeline
from diveq_codec.codec.image_io import read_image
from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.zoo import resolve_quality
from diveq_codec.models.data import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--start", type=int, default=8)
    parser.add_argument("--every", type=int, default=96)
    parser.add_argument("-q", "--qualities", default="3,4,7")
    args = parser.parse_args()
    paths = list_images(args.folder)[args.start::args.every]
    sources = [read_image(path.read_bytes(), str(path)) for path in paths]
    cap = index_costs.MAX_LATENTS
    print(f"{len(paths)} photos of {args.folder}")
    print("| quality | search | λ | bpp | PSNR (dB) |\n|---|---|---|---|---|")
    for quality in (int(q) for q in args.qualities.split(",")):
        point = resolve_quality(quality)
        for label, latents_cap, weight in (("rounds", cap, point.rate_weight),
                                           ("no rounds", 0, point.rate_weight),
                                           ("no rounds", 0, point.search_weight(rounds=False))):
            index_costs.MAX_LATENTS = latents_cap
            bits = pixels = 0
            dbs = []
            for source in sources:
                data = pipeline.encode_at_point(source, replace(point, rate_weight=weight, static_rate_weight=weight),
                                                "cpu")
                decoded = np.asarray(pipeline.decode(data, "cpu").convert("RGB"))
                bits += 8 * len(data)
                pixels += decoded.shape[0] * decoded.shape[1]
                dbs.append(psnr(source.rgb, decoded))
            print(f"| {quality} | {label} | {weight:g} | {bits / pixels:.4f} | {np.mean(dbs):.3f} |", flush=True)
    index_costs.MAX_LATENTS = cap


if __name__ == "__main__":
    main()
