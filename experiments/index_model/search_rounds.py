"""How many rounds of the encoder's search should charge the index model's own costs.

    python experiments/index_model/search_rounds.py <training-dir> [--every 40] [--rounds 1,2,3]

On training photos held out from the index model (every ``--every``-th of the sorted names,
from number 8, so all are multiples of 8: see models/train_index_prior.HOLDOUT_EVERY), for
each network rate point with λ > 0: the static tables' search alone at 0.5–2 × the card's
λ (a curve), and the encoder's search with R rounds of the index model's costs
(codec/index_costs.py) at 0.5, 0.75 and 1 × λ. Prints each point's bpp (payload) and PSNR,
and its PSNR over the static curve at the same rate (interpolated in log-rate).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from diveq_codec.codec.release.rate_weights import coded_means, exact_vectors, gain_over
from diveq_codec.codec.zoo import load_model, network_rate_points
from diveq_codec.models.data import list_images

STATIC_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)
SCALES = (0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--rounds", default="1,2,3")
    args = parser.parse_args()
    rounds = [int(r) for r in args.rounds.split(",")]
    points = [p for p in network_rate_points() if p.rate_weight > 0]
    loaded = load_model(points[0].model_id, "cpu")
    paths = list_images(args.folder)[8::args.every]
    runs = [(0, s) for s in STATIC_SCALES] + [(r, s) for r in rounds for s in SCALES]
    means = coded_means(loaded, (exact_vectors(loaded, path) for path in paths),
                        {(p.quality, (r, s)): (p.stages, s * p.rate_weight, r) for p in points for r, s in runs})
    results = {}
    for point in points:
        mean = {run: means[(point.quality, run)] for run in runs}
        curve = np.array(sorted((mean[(0, s)] for s in STATIC_SCALES), key=lambda v: v[0]))
        print(f"quality {point.quality} ({point.stages} stages, λ {point.rate_weight}), {len(paths)} photos")
        for run in runs:
            bpp, db = mean[run]
            gain = gain_over(curve, bpp, db)
            print(f"  rounds {run[0]} × {run[1]:<4}: {bpp:.4f} bpp {db:.3f} dB, {gain:+.3f} dB over the static curve")
            results[f"q{point.quality} rounds {run[0]} x{run[1]}"] = [round(bpp, 5), round(db, 4), round(gain, 4)]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
