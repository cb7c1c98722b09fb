"""Which network rate point should carry the DCT layer, at which steps?

``python experiments/dct_layer/dct_layer_probe.py IMAGE_DIR [--every 34] [--bases 1,3,4]
[--base-rate-weights 0.007,0.0035] [--steps 4,6,8,...] [--rounding 0.5,0.4] [--rd-weight 0,1]``

For every training photo picked, every base rate point and every step, it codes the photo
through the real path (the base file from ``pipeline.encode_at_point``, the layer from
``dct_layer.encode`` against the decoded base, 4 more header bytes) and decodes the layer,
then prints each (base, step)'s mean bpp and PSNR (per image, an identical decode counted
as 60 dB) and the pairs on the upper hull of them all: the rate points worth shipping. A
base is a network rate point, coded at its own λ or at each of ``--base-rate-weights`` (the
λ of its entropy-constrained codeword choice, which a layer point sets apart from the
network point it shares stages with). With several bases or encoder settings (rounding
offsets × rate–distortion weights) it also prints each (base, setting) curve's PSNR over
the first one's at equal rate (interpolated in log bpp, so give dense steps). Run it on
training photos, never on the evaluation set.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec import container, dct_layer, pipeline
from diveq_codec.codec.metrics import bits_per_pixel, psnr
from diveq_codec.codec.zoo import RatePoint, load_model, network_rate_points
from diveq_codec.models.data import list_images, load_rgb

Setting = tuple[float, float]  # the layer encoder's (rounding offset, rate–distortion weight)
Curve = list[tuple[float, float]]  # (bpp, PSNR) per image or per step


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


def base_points(points: list[RatePoint], rate_weights: str | None) -> dict[str, RatePoint]:
    """Each base point by its label, at its own λ or at each λ of the comma-separated list."""
    if rate_weights is None:
        return {f"q{p.quality} λ {p.rate_weight:g}": p for p in points}
    weights = [float(w) for w in rate_weights.split(",")]
    return {f"q{p.quality} λ {w:g}": replace(p, rate_weight=w) for p in points for w in weights}


def at_rate(curve: Curve, bpp: float) -> float:
    """A curve's PSNR at ``bpp``, interpolated linearly in log bpp between its points."""
    rates, dbs = zip(*sorted(curve))
    return float(np.interp(np.log(bpp), np.log(rates), dbs))


def measure(paths: list[Path], bases: dict[str, RatePoint], settings: list[Setting],
            steps: list[float]) -> tuple[dict[str, Curve], dict[tuple[str, Setting, float], Curve]]:
    """Per image: each base alone, and each (base, setting, step) with its layer."""
    extra = container.HEADER_SIZE_WITH_LAYER - container.HEADER_SIZE
    alone: dict[str, Curve] = {}
    results: dict[tuple[str, Setting, float], Curve] = {}
    for path in paths:
        rgb = load_rgb(path, None).permute(1, 2, 0).numpy()
        height, width = rgb.shape[:2]
        image = Image.fromarray(rgb, "RGB")
        for label, point in bases.items():
            data = pipeline.encode_at_point(image, point, device="cpu")
            decoded = pipeline.decode_detailed(data, "cpu")
            base = np.asarray(decoded.image)
            detail = pipeline.layer_detail(load_model(point.model_id, "cpu"), decoded.indices, height, width)
            alone.setdefault(label, []).append((bits_per_pixel(len(data), width, height), psnr(rgb, base)))
            for setting in settings:
                for step in steps:
                    layer = dct_layer.encode(rgb, base, step, detail, rounding=setting[0], rd_weight=setting[1])
                    lifted = dct_layer.decode(layer, base, detail)
                    size = len(data) + extra + len(layer)
                    results.setdefault((label, setting, step), []).append(
                        (bits_per_pixel(size, width, height), min(psnr(rgb, lifted), 60.0)))
    return alone, results


def report(alone: dict[str, Curve], results: dict[tuple[str, Setting, float], Curve]) -> None:
    """Each curve's mean points, the upper hull, and each curve against the first at equal rate."""
    print("base               step  rounding  rd_weight     bpp   PSNR")
    points = [(*np.mean(values, axis=0), label) for label, values in alone.items()]
    curves: dict[tuple[str, Setting], Curve] = {}
    for (label, setting, step), values in results.items():
        bpp, db = np.mean(values, axis=0)
        curves.setdefault((label, setting), []).append((float(bpp), float(db)))
        points.append((float(bpp), float(db), f"{label}+{step:g} ({setting[0]:g}, {setting[1]:g})"))
        print(f"{label:16s} {step:6g} {setting[0]:9g} {setting[1]:10g} {bpp:7.4f} {db:6.2f}")
    for label, values in alone.items():
        bpp, db = np.mean(values, axis=0)
        print(f"{label} alone: {bpp:.4f} bpp, {db:.2f} dB")
    print("upper hull:", ", ".join(f"{label} ({bpp:.3f} bpp, {db:.2f} dB)" for bpp, db, label in upper_hull(points)))
    (first_label, first_setting), reference = next(iter(curves.items()))
    for (label, setting), curve in list(curves.items())[1:]:
        gains = [db - at_rate(reference, bpp) for bpp, db in curve if reference[0][0] <= bpp <= reference[-1][0]]
        print(f"{label}, rounding {setting[0]:g}, rd_weight {setting[1]:g}: dB over {first_label}, rounding "
              f"{first_setting[0]:g}, rd_weight {first_setting[1]:g} at equal rate, step by step: "
              + " ".join(f"{g:+.3f}" for g in gains))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("--every", type=int, default=34, help="take every N-th photo (sorted by path)")
    parser.add_argument("--bases", default="1,3,4", help="network rate points (no layer of their own)")
    parser.add_argument("--base-rate-weights", default=None,
                        help="λ values to code each base at, comma-separated (default: the card's own)")
    parser.add_argument("--steps", default="4,5,6,8,10,12,16,20,24,32,40,48")
    parser.add_argument("--rounding", default=str(dct_layer.ROUNDING),
                        help="the encoder's rounding offsets to try, comma-separated (0.5: nearest)")
    parser.add_argument("--rd-weight", default=str(dct_layer.RD_WEIGHT),
                        help="the encoder's rate–distortion weights to try, comma-separated (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    network = {p.quality: p for p in network_rate_points()}
    qualities = [int(q) for q in args.bases.split(",")]
    if not set(qualities) <= set(network):
        parser.error(f"bases must be rate points of the network alone, {sorted(network)}")
    bases = base_points([network[q] for q in qualities], args.base_rate_weights)
    steps = sorted({float(s) for s in args.steps.split(",")}, reverse=True)
    settings = [(float(r), float(w)) for r in args.rounding.split(",") for w in args.rd_weight.split(",")]
    paths = list_images(args.images)[:: args.every]
    alone, results = measure(paths, bases, settings, steps)
    print(f"{len(paths)} photos from {args.images}")
    report(alone, results)


if __name__ == "__main__":
    main()
