"""How much a beam search over the residual stages gains, by beam width, on training photos.

``python experiments/beam_width/beam_width_probe.py IMAGE_DIR [--every 24] [--widths 1,2,4,8] [-q 4,8,12]``

For every image (every ``--every``-th, starting at the second, as codec/release/rate_weights.py
picks them: never Kodak) and every rate point asked for, the indices are chosen at that
point's λ by the greedy search (width 1) and by beam searches of the other widths, from the
image's float64 latents (the exact choices), then coded and decoded for real. It prints each
width's mean bpp and PSNR and its gain in dB over the greedy curve at the same rate
(interpolated in log-rate), with the search's seconds per image. The width behind
``--effort 2`` (codec.pipeline.EFFORTS) was chosen with it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec.release.rate_weights import coded_bits_and_psnr, exact_vectors, gain_over
from diveq_codec.codec.zoo import load_model, network_rate_points
from diveq_codec.models import chunked_search
from diveq_codec.models.data import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--every", type=int, default=24)
    parser.add_argument("--widths", default="1,2,4,8", help="beam widths; 1 (the greedy search) is always run")
    parser.add_argument("-q", "--quality", default="2,3,4", help="rate points of the network alone to probe")
    args = parser.parse_args()
    widths = sorted({1, *(int(w) for w in args.widths.split(","))})
    wanted = {int(q) for q in args.quality.split(",")}
    points = [p for p in network_rate_points() if p.quality in wanted]
    if len(points) != len(wanted):
        parser.error(f"choose among the network's own rate points {[p.quality for p in network_rate_points()]}")
    loaded = load_model(points[0].model_id, "cpu")
    if any(p.model_id != loaded.card.model_id for p in points):
        raise SystemExit("the probe expects one residual model behind the rate points")
    model = loaded.model
    paths = list_images(args.folder)[1::args.every]
    totals = {(p.quality, w): np.zeros(3) for p in points for w in widths}  # bits, dB, search seconds
    pixels = 0
    with torch.no_grad():
        for path in paths:
            rgb, vectors, (h, w) = exact_vectors(loaded, path)
            pixels += rgb.shape[0] * rgb.shape[1]
            for point in points:
                rate = loaded.rate_costs(point.rate_weight)
                for width in widths:
                    started = time.perf_counter()
                    indices = chunked_search.chunked_indices(model.quantizer, vectors, point.stages, rate=rate, beam=width)
                    searched = time.perf_counter() - started
                    totals[(point.quality, width)] += (*coded_bits_and_psnr(loaded, indices, (h, w), rgb), searched)
    mean = {key: (bits / pixels, db / len(paths), seconds / len(paths)) for key, (bits, db, seconds) in totals.items()}
    greedy = np.array([mean[(p.quality, 1)][:2] for p in points])
    print(f"{len(paths)} images of {args.folder}; per width: bpp, PSNR dB, dB over the greedy curve at equal "
          f"rate, float64 search s per image")
    for point in points:
        cells = []
        for width in widths:
            bpp, db, seconds = mean[(point.quality, width)]
            cells.append(f"width {width}: {bpp:.4f} {db:.3f} {gain_over(greedy, bpp, db):+.3f} {seconds:.2f}s")
        print(f"quality {point.quality:>2}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
