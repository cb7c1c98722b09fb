"""How much effort 3's refinement of the latent gains, on training photos.

``python experiments/refine/refine_probe.py IMAGE_DIR [--first 5] [--every 80] [-q 4,8,12] [--beam 4] [--steps 10] [--step-size 1e-3]``

For every ``--every``-th image from the ``--first`` (sorted by path; never the test set),
each rate point 1–12 is coded from the analysis latent with the search of ``--beam`` (the
curve to beat), and the points of ``-q`` are coded again after ``models.refine`` moved the
latent ``--steps`` times by ``--step-size``; both are coded and decoded for real. It prints
the mean bpp and PSNR of both and the refined point's gain in dB over the unrefined curve at
the same rate (interpolated in log-rate). ``models.refine.STEPS`` and ``STEP_SIZE`` were
chosen with it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec.pipeline import image_to_tensor
from diveq_codec.codec.release.rate_weights import coded_bits_and_psnr, gain_over
from diveq_codec.codec.zoo import load_model, network_rate_points
from diveq_codec.models import refine
from diveq_codec.models.autoencoder import search_options
from diveq_codec.models.data import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--first", type=int, default=5)
    parser.add_argument("--every", type=int, default=80)
    parser.add_argument("-q", "--quality", default="2,3,4", help="rate points of the network alone to refine")
    parser.add_argument("--beam", type=int, default=4, help="the search's beam width (effort 3's: 4)")
    parser.add_argument("--steps", type=int, default=refine.STEPS)
    parser.add_argument("--step-size", type=float, default=refine.STEP_SIZE)
    args = parser.parse_args()
    wanted = {int(q) for q in args.quality.split(",")}
    curve_points = network_rate_points()  # each at its λ
    if not wanted <= {p.quality for p in curve_points}:
        parser.error(f"choose among the network's own rate points {[p.quality for p in curve_points]}")
    loaded = load_model(curve_points[0].model_id, "cpu")
    model = loaded.model
    paths = list_images(args.folder)[args.first::args.every]
    totals: dict[tuple[int, bool], np.ndarray] = {}  # (quality, refined) → bits, dB
    pixels, started = 0, time.perf_counter()
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        pixels += rgb.shape[0] * rgb.shape[1]
        x = image_to_tensor(rgb, "cpu")
        with torch.no_grad():
            latent = model.analyse(model.analysis, x)
        for point in curve_points:
            search = search_options(loaded.rate_costs(point.rate_weight), args.beam)
            latents = {False: latent}
            if point.quality in wanted:
                latents[True] = refine.refine_latent(model, x, latent, point.stages, search, args.steps,
                                                     args.step_size)
            for refined, chosen in latents.items():
                indices = refine.latent_indices(model, chosen, point.stages, search)
                measured = coded_bits_and_psnr(loaded, indices, tuple(latent.shape[-2:]), rgb)
                totals[(point.quality, refined)] = totals.get((point.quality, refined), 0) + np.array(measured)
    mean = {key: (bits / pixels, db / len(paths)) for key, (bits, db) in totals.items()}
    curve = np.array([mean[(p.quality, False)] for p in curve_points])
    print(f"{len(paths)} images of {args.folder}, beam {args.beam}, {args.steps} steps of {args.step_size}, "
          f"{time.perf_counter() - started:.0f} s; bpp, PSNR dB, dB over the unrefined curve at equal rate")
    for quality in sorted(wanted):
        (bpp0, db0), (bpp, db) = mean[(quality, False)], mean[(quality, True)]
        print(f"quality {quality:>2}  unrefined {bpp0:.4f} {db0:.3f}  refined {bpp:.4f} {db:.3f} "
              f"{gain_over(curve, bpp, db):+.3f}")


if __name__ == "__main__":
    main()
