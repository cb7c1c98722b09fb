"""How much the base's detail in the DCT layer's contexts saves (docs/dct-layer.md, "Groups
and contexts"; codec/dct_layer_coding.base_detail).

    python experiments/dct_layer/base_detail_probe.py TRAINING_DIR [--start 8] [--every 48]
        [--qualities 5,7,10,14,18] [--settings 12000/4000,8000/4000,12000/8000]

For every photo picked and every layer rate point, the base comes from the real encoder and
decoder; then the layer is coded with no detail (every block's 0: the contexts of the
quotients alone) and with the detail of each OFFSET/UNIT setting, and decoded. It prints, per
quality and setting, the layer's bytes against no detail and the PSNR difference (the
rate–distortion pass sees other tables, so the quotients can differ a little). Pick photos
held out from the index model's training (a start and a step that are multiples of 8), never
the evaluation set.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec import dct_layer, pipeline
from diveq_codec.codec.dct_layer_coding import base_detail
from diveq_codec.codec.dct_transform import block_grid
from diveq_codec.codec.image_io import read_image
from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models.data import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--start", type=int, default=8)
    parser.add_argument("--every", type=int, default=48)
    parser.add_argument("--qualities", default="5,7,10,14,18")
    parser.add_argument("--settings", default="12000/4000", help="OFFSET/UNIT pairs, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = [tuple(int(v) for v in pair.split("/")) for pair in args.settings.split(",")]
    paths = list_images(args.folder)[args.start::args.every]
    totals: dict[tuple[int, object], list[float]] = {}
    for path in paths:
        source = read_image(path.read_bytes(), str(path))
        planes = pipeline.source_planes(source)
        height, width = planes.shape[:2]
        for quality in (int(q) for q in args.qualities.split(",")):
            point = resolve_quality(quality)
            loaded = load_model(point.model_id, "cpu")
            decoded = pipeline.decode_detailed(pipeline.encode_at_point(source, replace(point, layer_step=None), "cpu"))
            base = pipeline.decoded_planes(np.asarray(decoded.image.convert("RGB")), source.mode)
            rows, cols = block_grid(height, width)
            details: dict[object, np.ndarray] = {"none": np.zeros(rows * cols, dtype=np.int32)}
            for offset, unit in settings:
                details[(offset, unit)] = base_detail(loaded.require_index_model().codebooks, decoded.indices,
                                                      height, width, loaded.model.stride, offset, unit)
            for key, detail in details.items():
                layer = dct_layer.encode(planes, base, point.layer_step, detail)
                lifted = dct_layer.decode(layer, base, detail)
                entry = totals.setdefault((quality, key), [0.0, 0.0])
                entry[0] += len(layer)
                entry[1] += psnr(planes, lifted) / len(paths)
        print(f"{path.name} done", flush=True)
    print(f"{len(paths)} photos of {args.folder} (every {args.every}-th from {args.start})")
    print("| quality | step | setting | layer bytes | against none | PSNR against none |")
    print("|---|---|---|---|---|---|")
    for (quality, key), (size, db) in totals.items():
        none_size, none_db = totals[(quality, "none")]
        name = key if key == "none" else f"{key[0]}/{key[1]}"
        print(f"| {quality} | {resolve_quality(quality).layer_step:g} | {name} | {size:.0f} | "
              f"{100 * (size / none_size - 1):+.2f} % | {db - none_db:+.3f} dB |")


if __name__ == "__main__":
    main()
