"""Choose each rate point's λ for entropy-constrained assignment, on training photos.

``python -m diveq_codec.codec.release.rate_weights IMAGE_DIR [--start 1] [--every 24] [--card weights/NAME.json]
[--effort E] [--keep-psnr]``

The photos are every ``--every``-th from number ``--start`` of IMAGE_DIR's sorted names.
The search is the encoder's: the static tables' costs, then rounds charging the index
model's own costs (codec/index_costs.py). Each choice is coded by the real coder and
decoded by the real decoder; the rate is the payload's (the header is the same few bytes
either way); PSNR is RGB, of the 8-bit decoded image, averaged per image. Never run it on
the test set.

Two criteria:

- the default: for every rate point the indices are chosen at λ = α·s for each α of the
  grid, where s is the stage's slope: the latent energy its codewords remove per bit of its
  tables (measured on these images). A rate point's gain at α is its PSNR minus that of the
  nearest-codeword curve (α = 0, all rate points) at the same bits per pixel, interpolated
  in log-rate (extended linearly past its ends). Each rate point keeps the α of the largest
  mean gain; with ``--card`` its λ goes into the card's ``rate_weight``. Where two rate
  points have the same stages, only the first is tuned: the other keeps λ = 0.
- ``--keep-psnr``: each rate point's λ is scaled so that the whole search gives the PSNR
  the static tables' search alone gave at the card's λ: the same quality for fewer bits.
  A layer point's λ gets the scale of the network point with its stages.

``--effort 2`` probes the beam search's choices instead (against its own α = 0 curve); a
card holds one λ per rate point, the default effort's, so it is printed only.

``exact_vectors``, ``encoder_choice``, ``coded_means``, ``coded_bits_and_psnr``,
``gain_over`` and ``exact_search_beam`` are shared with the probes under experiments/ and
scripts/encode_profile.py.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Hashable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec import index_coder, index_costs, rate_tables
from diveq_codec.codec.card_schema import save_card_data
from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.pipeline import effort_settings, image_to_tensor, tensor_to_pixels
from diveq_codec.codec.zoo import LoadedModel, RatePoint, load_model, network_rate_points
from diveq_codec.models.data import list_images
from diveq_codec.models.train_index_prior import HOLDOUT_EVERY

PROG = "python -m diveq_codec.codec.release.rate_weights"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
SCALES = (0.3, 0.45, 0.6, 0.75, 1.0)  # of the card's λ, for --keep-psnr


def stage_slopes(quantizer: torch.nn.Module, vectors: list[torch.Tensor], bits: np.ndarray) -> np.ndarray:
    """Mean squared latent energy each stage's nearest codewords remove, per bit of its tables."""
    remainder = torch.cat(vectors).double()
    energy = [float((remainder * remainder).sum(dim=1).mean())]
    indices = quantizer.indices(remainder)
    for m in range(indices.shape[0]):
        remainder = remainder - quantizer.codebooks[m].double()[indices[m]]
        energy.append(float((remainder * remainder).sum(dim=1).mean()))
    return (np.array(energy[:-1]) - np.array(energy[1:])) / bits


def exact_search_beam(effort: int | None) -> int:
    """The beam width of an effort that searches the analysis latent as it is (1 or 2); the
    probes measure that exact search, which a refining effort (3) does not run."""
    settings = effort_settings(effort)
    if settings.refine_steps:
        raise SystemExit(f"effort {effort} refines the latent first; this script measures the exact search only")
    return settings.beam


def coded_bits_and_psnr(loaded: LoadedModel, indices: torch.Tensor, grid: tuple[int, int],
                        rgb: np.ndarray) -> tuple[int, float]:
    """The payload bits of ``indices`` under the real coder and the PSNR of their real decode."""
    payload = index_coder.encode_indices(indices.numpy(), loaded.require_index_model(), grid[1])
    decoded = tensor_to_pixels(loaded.model.decode_indices(indices, grid, rgb.shape[0], rgb.shape[1]))
    return len(payload) * 8, psnr(rgb, decoded)


def exact_vectors(loaded: LoadedModel, path: Path) -> tuple[np.ndarray, torch.Tensor, tuple[int, int]]:
    """A photo's RGB pixels, its float64 latent vectors (h·w, D) and their grid (h, w): what
    the probes search, the exact choices without the CPU path's re-decisions."""
    model = loaded.model
    rgb = np.asarray(Image.open(path).convert("RGB"))
    with torch.no_grad():
        latent = model.analyse(model.float64_analysis(), image_to_tensor(rgb, "cpu").double())
    return rgb, model.to_vectors(latent), (latent.shape[-2], latent.shape[-1])


def encoder_choice(loaded: LoadedModel, vectors: torch.Tensor, grid: tuple[int, int], stages: int, weight: float,
                   beam: int, rounds: int = index_costs.ROUNDS) -> torch.Tensor:
    """The indices the encoder chooses for float64 latent vectors at λ = ``weight``: the
    static tables' search, then ``rounds`` charging the index model's costs (as encode does)."""
    recost = index_costs.recoster(loaded.index_model, weight, rounds)
    return loaded.model.vector_indices(vectors, grid, stages, loaded.rate_costs(weight), beam, recost)


def coded_means(loaded: LoadedModel, photos: Iterable[tuple[np.ndarray, torch.Tensor, tuple[int, int]]],
                runs: dict[Hashable, tuple[int, float, int]], beam: int = 1) -> dict[Hashable, tuple[float, float]]:
    """Each run's mean bpp (over all pixels) and PSNR (over photos) on ``photos`` (each as
    exact_vectors gives it), coded and decoded for real: ``runs`` maps a key to the stages, λ
    and rounds of one encoder search (encoder_choice)."""
    totals = {key: np.zeros(2) for key in runs}
    pixels = count = 0
    with torch.no_grad():
        for rgb, vectors, grid in photos:
            pixels += rgb.shape[0] * rgb.shape[1]
            count += 1
            for key, (stages, weight, rounds) in runs.items():
                indices = encoder_choice(loaded, vectors, grid, stages, weight, beam, rounds)
                totals[key] += coded_bits_and_psnr(loaded, indices, grid, rgb)
    return {key: (bits / pixels, db / count) for key, (bits, db) in totals.items()}


def gain_over(curve: np.ndarray, bpp: float, db: float) -> float:
    """PSNR above the (rate, PSNR) curve at the same rate, interpolated in log-rate."""
    log_rate = np.log(curve[:, 0])
    x = np.log(bpp)
    if x < log_rate[0]:
        i = 0
    elif x > log_rate[-1]:
        i = len(log_rate) - 2
    else:
        return db - float(np.interp(x, log_rate, curve[:, 1]))
    slope = (curve[i + 1, 1] - curve[i, 1]) / (log_rate[i + 1] - log_rate[i])
    return db - float(curve[i, 1] + slope * (x - log_rate[i]))


def tuned_points(every_point: list[RatePoint]) -> list[RatePoint]:
    """One rate point per stage count, the first of each; a later one with the same stages
    keeps the nearest codewords: the most faithful file those stages can give."""
    return list({p.stages: p for p in reversed(every_point)}.values())[::-1]


def measure(loaded: LoadedModel, points: list[RatePoint], paths: list[Path],
            beam: int) -> tuple[dict[tuple[int, float], tuple[float, float]], np.ndarray]:
    """Mean (bpp, PSNR) of every (quality, α) over the images, and the stage slopes."""
    photos = [exact_vectors(loaded, path) for path in paths]
    with torch.no_grad():
        slopes = stage_slopes(loaded.model.quantizer, [vectors for _, vectors, _ in photos],
                              rate_tables.table_entropy_bits(loaded.tables))
    runs = {(p.quality, a): (p.stages, a * float(slopes[p.stages - 1]), index_costs.ROUNDS)
            for p in points for a in ALPHAS}
    return coded_means(loaded, photos, runs, beam), slopes


def choose(points: list[RatePoint], mean: dict[tuple[int, float], tuple[float, float]],
           slopes: np.ndarray) -> dict[int, float]:
    """Each point's λ of the largest gain over the α = 0 curve; prints the table of gains."""
    nearest = np.array([mean[(p.quality, 0.0)] for p in points])
    print("quality  " + "  ".join(f"α={a:<5}" for a in ALPHAS) + "   (dB over the α = 0 curve)  chosen")
    chosen: dict[int, float] = {}
    for row, point in enumerate(points):
        gains = [gain_over(nearest, *mean[(point.quality, a)]) for a in ALPHAS]
        best = ALPHAS[int(np.argmax(gains))]
        chosen[point.quality] = best * float(slopes[point.stages - 1])
        bpp, db = mean[(point.quality, best)]
        print(f"{point.quality:>7}  " + "  ".join(f"{g:+.3f}  " for g in gains)
              + f"   α={best}: λ={chosen[point.quality]:.4g}, {bpp:.4f} bpp, {db:.3f} dB "
                f"(α=0: {nearest[row, 0]:.4f} bpp, {nearest[row, 1]:.3f} dB)")
    return chosen


def keep_psnr(loaded: LoadedModel, points: list[RatePoint], paths: list[Path]) -> dict[int, float]:
    """Each point's scale of its static λ (the static tables' search alone: the card's
    static_rate_weight, else its rate_weight) at which the encoder's search (static tables,
    then the index model's costs) gives the PSNR the static tables' search alone gave at
    that λ, on these images: the same quality for fewer bits. Prints the table; points at
    λ = 0 (the nearest codewords) keep it."""
    tuned = [p for p in points if p.search_weight(rounds=False) > 0]
    runs = {}
    for point in tuned:
        static = point.search_weight(rounds=False)
        # None: the static tables' search alone at the static λ, the PSNR to keep
        runs[(point.quality, None)] = (point.stages, static, 0)
        runs.update({(point.quality, scale): (point.stages, scale * static, index_costs.ROUNDS) for scale in SCALES})
    mean = coded_means(loaded, (exact_vectors(loaded, path) for path in paths), runs)
    chosen = {}
    print("quality  static tables (bpp, dB)  " + "  ".join(f"×{s:<4}" for s in SCALES) + "  chosen")
    for point in tuned:
        bpp0, db0 = mean[(point.quality, None)]
        curve = np.array([mean[(point.quality, s)] for s in SCALES])  # PSNR falls as the scale grows
        scale = float(np.interp(-db0, -curve[:, 1], SCALES))
        bpp = float(np.exp(np.interp(-db0, -curve[:, 1], np.log(curve[:, 0]))))
        chosen[point.stages] = scale
        print(f"{point.quality:>7}  {bpp0:.4f} {db0:.3f}  " + "  ".join(f"{b:.4f} {d:.3f}" for b, d in curve)
              + f"  ×{scale:.3f}: {bpp:.4f} bpp ({100 * (bpp / bpp0 - 1):+.1f} %)")
    return chosen


def write_card(card_path: Path, points: list[RatePoint], chosen: dict[int, float], chosen_by: str) -> None:
    """Put each rate point's λ into the card; a layer point's λ is its base's: the network
    point of the same stages."""
    card = json.loads(card_path.read_text())
    base_of = {p.stages: p.quality for p in points}
    for rp in card["rate_points"]:
        quality = base_of.get(int(rp["stages"])) if "layer_step" in rp else int(rp["quality"])
        rp["rate_weight"] = float(f"{chosen.get(quality, 0.0):.4g}")
        rp.pop("static_rate_weight", None)  # chosen for the whole search: no separate static λ
    card["rate_weight_chosen_by"] = chosen_by
    save_card_data(card_path, card)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="training photos (never the evaluation set)")
    parser.add_argument("--every", type=int, default=24, help="every N-th photo, starting at the second")
    parser.add_argument("--card", type=Path, default=None, help="write the chosen λ into this card")
    parser.add_argument("--effort", type=int, default=None, help="the encoder's effort (default 1)")
    parser.add_argument("--start", type=int, default=1, help="the first photo picked (0-based)")
    parser.add_argument("--keep-psnr", action="store_true",
                        help="scale each point's λ (layer points: their base's scale) so that the whole search "
                             "keeps the PSNR the static tables' search alone gave")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    beam = exact_search_beam(args.effort)
    if args.card is not None and beam > 1:
        raise SystemExit("a card's rate_weight is the default effort's: --card goes with effort 1 only")
    started = time.perf_counter()
    every_point = network_rate_points()
    loaded = load_model(every_point[-1].model_id, "cpu")
    if any(p.model_id != loaded.card.model_id for p in every_point):
        raise SystemExit("the probe expects one residual model behind every rate point")
    points = tuned_points(every_point)
    paths = list_images(args.folder)[args.start::args.every]
    if not paths:
        raise SystemExit(f"no images picked from {args.folder} (every {args.every}-th from number {args.start})")
    if args.keep_psnr:
        return scale_to_keep_psnr(args, loaded, points, paths, started)
    mean, slopes = measure(loaded, points, paths, beam)
    print(f"{len(paths)} images of {args.folder}, {time.perf_counter() - started:.0f} s; stage slopes "
          f"{', '.join(f'{s:.3g}' for s in slopes)}")
    chosen = choose(points, mean, slopes)
    if args.card is not None:
        write_card(args.card, points, chosen, f"{PROG} {args.folder} --every {args.every} --card {args.card} "
                                              f"({len(paths)} training photos, α grid {list(ALPHAS)})")
        print(f"wrote rate_weight into {args.card}")
    return 0


def scale_to_keep_psnr(args: argparse.Namespace, loaded: LoadedModel, points: list[RatePoint],
                       paths: list[Path], started: float) -> int:
    scales = keep_psnr(loaded, points, paths)
    print(f"{len(paths)} images of {args.folder}, {time.perf_counter() - started:.0f} s")
    if args.card is not None:
        card = json.loads(args.card.read_text())
        listed = ", ".join(f"{k} stages ×{v:.3f}" for k, v in sorted(scales.items()))
        for rp in card["rate_points"]:
            static = rp.get("static_rate_weight", rp.get("rate_weight", 0.0))
            rp["static_rate_weight"] = static
            rp["rate_weight"] = float(f"{scales.get(int(rp['stages']), 1.0) * static:.4g}")
        held_out = args.start % HOLDOUT_EVERY == 0 and args.every % HOLDOUT_EVERY == 0
        photos = f"{len(paths)} training photos" + (" held out from the index model" if held_out else "")
        card["rate_weight_chosen_by"] = (f"{PROG} {args.folder} --start {args.start} --every {args.every} --keep-psnr "
                                         f"--card {args.card} ({photos}; scales {listed})")
        save_card_data(args.card, card)
        print(f"wrote rate_weight into {args.card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
