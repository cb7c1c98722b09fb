"""Where the shipped model's curve flattens: transform or quantizer?

``python experiments/transform_ceiling/transform_ceiling.py IMAGE_DIR [-q QUALITY] [--every N]``

For each image: PSNR of the plain autoencoder (analysis → synthesis, no quantization: the
most any number of stages could give), PSNR after each number of residual stages, and the
share of the latent's energy that the stages leave over. Whole images, float32, on the
CPU, decoded outputs rounded to 8 bits as the codec rounds them; no file is written and the
codewords are the nearest ones (λ = 0, no DCT layer): what the network's stages alone give.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.pipeline import image_to_tensor, tensor_to_pixels
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models.autoencoder import crop_to, pad_to_multiple
from diveq_codec.models.data import list_images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", type=Path)
    p.add_argument("-q", "--quality", type=int, default=None, help="any rate point of the model to probe")
    p.add_argument("--every", type=int, default=1, help="only every N-th image (sorted by path; default: all)")
    args = p.parse_args()
    model = load_model(resolve_quality(args.quality).model_id, "cpu").model
    stages = model.num_stages
    plain, coded, left = [], [[] for _ in range(stages)], [[] for _ in range(stages)]
    with torch.no_grad():
        for path in list_images(args.images)[::args.every]:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            x = image_to_tensor(rgb, "cpu")
            h, w = x.shape[-2:]
            latent = model.analysis(pad_to_multiple(x, model.stride))
            b, _, lh, lw = latent.shape
            vectors = model.to_vectors(latent)
            plain.append(psnr(rgb, tensor_to_pixels(crop_to(model.synthesis(latent), h, w))))
            indices = model.quantizer.indices(vectors)
            for s in range(1, stages + 1):
                approx = model.quantizer.lookup(indices[:s])
                left[s - 1].append((torch.sum((vectors - approx) ** 2) / torch.sum(vectors**2)).item())
                image = model.synthesis(model.to_latent(approx, b, lh, lw))
                coded[s - 1].append(psnr(rgb, tensor_to_pixels(crop_to(image, h, w))))
    print(f"{len(plain)} images; mean PSNR-RGB in dB (8-bit rounded, float32, no file)")
    print(f"no quantization: {statistics.mean(plain):.2f}")
    for s in range(stages):
        print(f"{s + 1:2d} stages: {statistics.mean(coded[s]):.2f}   latent energy left "
              f"{100 * statistics.mean(left[s]):.2f} %")


if __name__ == "__main__":
    main()
