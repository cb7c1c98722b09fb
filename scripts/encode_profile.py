"""Where the CPU encoder's time goes, part by part.

``python scripts/encode_profile.py IMAGE_DIR [-q QUALITY] [--effort E]`` runs the steps of
``diveq_codec.codec.pipeline.encode_source`` one by one on every image (after one warm-up encode) and
prints the mean seconds per image of each: the float32 analysis (timed on its own), the
search (pipeline.choose_indices less one analysis: the static tables' search, the rounds
that charge the index model's costs, and the float64 re-decisions), entropy coding, and at
a rate point with a DCT layer the base's synthesis and the layer. It checks that the parts give the same
payload and layer as the encoder itself, so it times the real path. The parts run one after
another here; at a layer point the encoder codes the payload on a second thread beside the
layer, so its encode takes about the shorter of those two less than the total.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diveq_codec.codec import container, dct_layer, index_coder
from diveq_codec.codec.cli.allocator import keep_freed_memory
from diveq_codec.codec.image_io import read_image
from diveq_codec.codec.pipeline import (
    choose_indices,
    decoded_planes,
    encode_source,
    image_to_tensor,
    layer_detail,
    source_planes,
    tensor_to_pixels,
)
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models.data import list_images

NETWORK_PARTS = ("analysis", "search", "entropy coding")
LAYER_PARTS = ("synthesis", "DCT layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-q", "--quality", type=int, default=None)
    parser.add_argument("--effort", type=int, default=None, help="the encoder's effort (default 1)")
    args = parser.parse_args()
    keep_freed_memory()  # as the command line does, so the parts are timed as it runs them
    point = resolve_quality(args.quality)
    loaded = load_model(point.model_id, "cpu")
    model = loaded.model
    sources = [read_image(path.read_bytes(), str(path)) for path in list_images(args.folder)]
    encode_source(sources[0], point.quality, "cpu", args.effort)
    parts = NETWORK_PARTS + (LAYER_PARTS if point.layer_step is not None else ())
    totals = dict.fromkeys(parts, 0.0)
    with torch.no_grad():
        for source in sources:
            x = image_to_tensor(source.rgb, "cpu")
            start = time.perf_counter()
            # the analysis, then the search (the rounds and re-decisions included)
            indices, grid = choose_indices(loaded, point, args.effort, x)
            searched = time.perf_counter()
            model.analyse(model.analysis, x)  # once more on its own, warm as the first was not
            analysis = time.perf_counter() - searched
            coding = time.perf_counter()
            pixels = source.rgb.shape[0] * source.rgb.shape[1]
            payload = index_coder.encode_indices(indices.numpy(), loaded.require_index_model(), grid[1],
                                                 index_coder.min_payload_bytes(pixels))
            coded = time.perf_counter()
            times = [analysis, searched - start - analysis, coded - coding]
            layer = b""
            if point.layer_step is not None:
                height, width = source.rgb.shape[:2]
                base = model.decode_indices(indices, grid, height, width)
                synthesised = time.perf_counter()
                detail = layer_detail(loaded, indices.numpy(), height, width)
                layer = dct_layer.encode(source_planes(source), decoded_planes(tensor_to_pixels(base), source.mode),
                                         point.layer_step, detail)
                times += [synthesised - coded, time.perf_counter() - synthesised]
            parsed = container.unpack(encode_source(source, point.quality, "cpu", args.effort))
            if (payload, layer) != (parsed.payload, parsed.layer):
                raise SystemExit("the parts do not give the encoder's payload: this script is out of date")
            for part, seconds in zip(parts, times):
                totals[part] += seconds
    count = len(sources)
    print(f"quality {point.quality}, effort {args.effort or 1}, {count} images of {args.folder}, seconds per image: "
          + ", ".join(f"{part} {seconds / count:.3f}" for part, seconds in totals.items())
          + f"; total {sum(totals.values()) / count:.3f}")


if __name__ == "__main__":
    main()
