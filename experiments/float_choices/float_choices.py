"""Does the CPU's encoder choose the exact (float64) codewords?

``python experiments/float_choices/float_choices.py IMAGE_DIR [-q QUALITY] [--effort E] [--every N]`` encodes
every image's indices (all stages of the model behind QUALITY, default the middle one, with
that rate point's λ, and the search of encoder effort E)
three ways: plain float32 search, the CPU coding path (float32, with latents near a decision
boundary re-decided in float64) and the all-float64 path a GPU uses. It counts the decisions
where each float32 way differs from float64, the share of latents the CPU path re-decided,
and the float32 error of a latent (relative to its length: the largest and the tail), which
the re-decision margin must exceed, under the coding path's kernels and under two others
that may sum in other orders.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec.pipeline import image_to_tensor
from diveq_codec.codec.release.rate_weights import exact_search_beam
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models import autoencoder, chunked_search
from diveq_codec.models.data import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-q", "--quality", type=int, default=None, help="picks the model (default: the middle one)")
    parser.add_argument("--every", type=int, default=1, help="only every N-th image (default: all)")
    parser.add_argument("--effort", type=int, default=None, help="the encoder's effort (default 1)")
    args = parser.parse_args()
    beam = exact_search_beam(args.effort)
    point = resolve_quality(args.quality)
    loaded = load_model(point.model_id, "cpu")
    model = loaded.model
    rate = loaded.rate_costs(point.rate_weight)  # the rate point's entropy-constrained choices
    search = autoencoder.search_options(rate, beam)
    decisions = plain_differ = coded_differ = redecided = latents = 0
    errors: dict[str, list[np.ndarray]] = {name: [] for name in KERNELS}
    for path in list_images(args.folder)[::args.every]:
        x = image_to_tensor(np.asarray(Image.open(path).convert("RGB")), "cpu")
        exact_vectors = model.to_vectors(model.analyse(model.float64_analysis(), x.double()))
        exact = chunked_search.chunked_indices(model.quantizer, exact_vectors, None, **search)  # the float64 path's
        coded, _ = model.encode_indices(x, rate=rate, beam=beam)
        lengths = torch.linalg.vector_norm(exact_vectors, dim=1)
        for name, analyse in KERNELS.items():
            kernel_vectors = model.to_vectors(analyse(model, x))
            difference = torch.linalg.vector_norm(kernel_vectors.double() - exact_vectors, dim=1)
            errors[name].append((difference / lengths).numpy())
            if name == CODING_PATH:
                vectors = kernel_vectors
        plain, gaps = model.quantizer.indices_and_gaps(vectors, **search)
        redecided += int(autoencoder.unsure_choices(vectors, gaps).sum())
        latents += vectors.shape[0]
        decisions += exact.numel()
        plain_differ += int((plain != exact).sum())
        coded_differ += int((coded != exact).sum())
        print(f"{path.name}: plain float32 {int((plain != exact).sum())}, coding path "
              f"{int((coded != exact).sum())} of {exact.numel()} differ", flush=True)
    print(f"total over {decisions} decisions ({model.num_stages} stages): plain float32 search differs from "
          f"float64 in {plain_differ}, the CPU coding path in {coded_differ}; it re-decided "
          f"{redecided} of {latents} latents ({100 * redecided / max(latents, 1):.2f} %)")
    margin = autoencoder.EXACT_SEARCH_MARGIN
    print(f"float32 error of a latent, relative to its length (re-decision margin {margin:.0e}):")
    for name, parts in errors.items():
        error = np.concatenate(parts)
        tail = ", ".join(f"{q}th percentile {np.quantile(error, q / 100):.3g}" for q in (99.9, 99.99, 99.999))
        print(f"  {name}: largest {error.max():.3g} ({error.max() / margin:.2f} of the margin); {tail}")


def _coding_path(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.analyse(model.analysis, x)


def _channels_last(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # oneDNN's channels-last kernels: faster here (0.17 s against 0.22 s for a Kodak image),
    # but their 128-channel convolutions sum less accurately (larger error, below). Whole
    # image, strides set by a copy (an image permuted from HWC with batch 1 is read as
    # contiguous): training and Kodak images fit one tile.
    padded = autoencoder.pad_to_multiple(x, model.stride)
    return model.analysis(torch.empty_like(padded, memory_format=torch.channels_last).copy_(padded))


def _without_onednn(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch warns that TF32 is unavailable (irrelevant here)
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            return model.analyse(model.analysis, x)


def _one_thread(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return model.analyse(model.analysis, x)
    finally:
        torch.set_num_threads(threads)


# The float32 analysis as the encoder runs it, and under kernels that sum in other orders:
# stand-ins for other machines, whose errors the margin must cover too.
CODING_PATH = "coding path"
KERNELS = {
    CODING_PATH: _coding_path,
    "channels-last layout": _channels_last,
    "oneDNN off": _without_onednn,
    "one thread": _one_thread,
}


if __name__ == "__main__":
    main()
