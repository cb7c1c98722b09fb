"""Which network rate point should carry the residual layer, at which steps?

``python scripts/residual_layer_probe.py IMAGE_DIR [--every 34] [--bases 1,3,5,7] [--steps 4,6,8,...] [--rounding 0.5,0.4]``

For every training photo picked, every base rate point and every step, it codes the photo
through the real path (the base file from ``codec.pipeline.encode``, the layer from
``codec.residual_layer.encode`` against the decoded base, 4 more header bytes) and decodes
the layer, then prints each (base, step)'s mean bpp and PSNR (per image, an identical
decode counted as 60 dB) and the pairs on the upper hull of them all: the rate points worth
shipping. Run it on training photos, never on the evaluation set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codec import bitstream, pipeline, residual_layer
from codec.metrics import bits_per_pixel, psnr
from codec.weights import resolve_quality
from models.data import list_images, load_rgb


def upper_hull(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points on the upper-left convex hull of (bpp, PSNR): none another pair beats."""
    hull: list[tuple[float, float, str]] = []
    for point in sorted(points):
        while hull and hull[-1][1] <= point[1] and hull[-1][0] >= point[0] - 1e-12:
            hull.pop()
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (point[0] - x1) <= (point[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        if not hull or point[1] > hull[-1][1]:
            hull.append(point)
    return hull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("--every", type=int, default=34, help="take every N-th photo (sorted by path)")
    parser.add_argument("--bases", default="1,3,5,7", help="network rate points (no layer of their own)")
    parser.add_argument("--steps", default="4,5,6,8,10,12,16,20,24,32,40,48")
    parser.add_argument("--rounding", default=str(residual_layer.ROUNDING),
                        help="the encoder's rounding offsets to try, comma-separated (0.5: nearest)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    bases = [int(q) for q in args.bases.split(",")]
    layered = [q for q in bases if resolve_quality(q).residual_step is not None]
    if layered:
        parser.error(f"qualities {layered} carry a residual layer already; bases must be the network alone")
    steps = [float(s) for s in args.steps.split(",")]
    roundings = [float(r) for r in args.rounding.split(",")]
    paths = list_images(args.images)[:: args.every]
    extra = bitstream.HEADER_SIZE_V2 - bitstream.HEADER_SIZE
    results: dict[tuple[int, float], list[tuple[float, float]]] = {}
    for path in paths:
        rgb = load_rgb(path, None).permute(1, 2, 0).numpy()
        height, width = rgb.shape[:2]
        for quality in bases:
            data = pipeline.encode(Image.fromarray(rgb, "RGB"), quality=quality, device="cpu")
            base = np.asarray(pipeline.decode(data, "cpu"))
            results.setdefault((quality, 0.0, 0.0), []).append((bits_per_pixel(len(data), width, height), psnr(rgb, base)))
            for step in steps:
                for rounding in roundings:
                    layer = residual_layer.encode(rgb, base, step, rounding)
                    decoded = residual_layer.decode(layer, base)
                    size = len(data) + extra + len(layer)
                    results.setdefault((quality, step, rounding), []).append(
                        (bits_per_pixel(size, width, height), min(psnr(rgb, decoded), 60.0)))
    print(f"{len(paths)} photos from {args.images}")
    print("base  step  rounding     bpp   PSNR")
    curves: dict[float, list[tuple[float, float, str]]] = {rounding: [] for rounding in roundings}
    for (quality, step, rounding), values in sorted(results.items()):
        bpp, db = np.mean(values, axis=0)
        label = f"q{quality}" + (f"+{step:g}" if step else "")
        # The network alone belongs to every rounding's curve.
        for curve in ([curves[rounding]] if step else curves.values()):
            curve.append((float(bpp), float(db), label))
        print(f"{quality:4d} {step:5g} {rounding:9g} {bpp:7.4f} {db:6.2f}")
    for rounding, points in curves.items():
        print(f"upper hull, rounding {rounding:g}:",
              ", ".join(f"{label} ({bpp:.3f} bpp, {db:.2f} dB)" for bpp, db, label in upper_hull(points)))


if __name__ == "__main__":
    main()
