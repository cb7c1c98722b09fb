"""Fine-tune the synthesis transform on the encoder's own codeword choices:
``python -m diveq_codec.codec.release.decoder_finetune --weights W.safetensors --card W.json --data DIR --out DIR``.

Why: the network learnt to decode the nearest codewords' sum (DiVeQ's forward value), but
the shipped encoder chooses codewords entropy-constrained, at each rate point's λ, which
leaves latents further from the analysis output, in directions the synthesis never saw.
Here the analysis, the codebooks and the entropy tables stay as they are, so the encoder,
its files' sizes and its exact float64 re-decision are unchanged: every training image is
coded once at every rate point of the card, as the encoder codes it (the float32 search;
the few latents it would re-decide in float64 do not matter to training), and only the
synthesis learns to decode those choices. Crops are whole latent cells, each decoded with the
latents of its receptive field around it, so it is scored as it decodes in the whole image
(and without flips: a flipped latent grid is not the latent of the flipped image).

Every ``--holdout-every``-th image is kept out of training; ``holdout.jsonl`` gets their
mean PSNR per rate point before training and at the end, the measurement that says
whether the run helped. Seeded, time-boxed, resumable, checkpointed as ``models.train``
is, and its ``model.pt`` exports with ``codec.export`` like any other run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec.rate_tables import code_lengths
from diveq_codec.codec.zoo import card_rate_points, file_sha256, read_card, read_weights_file
from diveq_codec.models import tiling
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.choices import Points, choices_at_points
from diveq_codec.models.data import list_images, load_rgb
from diveq_codec.models.checkpoint import Run
from diveq_codec.models.train import (
    TrainLog,
    optimiser_step,
    psnr_from_mse,
    set_learning_rate,
    training_loss,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m diveq_codec.codec.release.decoder_finetune", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True, help="a shipped .safetensors file")
    p.add_argument("--card", type=Path, required=True, help="its card: the rate points (stages, rate_weight) to code at")
    p.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--out", required=True, help="folder for checkpoint.pt, model.pt and train_log.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--steps", type=int, default=100_000, help="total optimiser steps (schedule length)")
    p.add_argument("--time-budget", type=float, default=float("inf"), help="seconds; stop cleanly and save")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-cells", type=int, default=16,
                   help="side of the scored crop in latent cells (16 = 128 px at the shipped stride of 8)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--loss", choices=("mse", "log-mse"), default="log-mse")
    p.add_argument("--holdout-every", type=int, default=8, help="keep every N-th image out of training (0: none)")
    p.add_argument("--max-side", type=int, default=512, help="downscale images to this long side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    return p.parse_args(argv)


@dataclass
class CodedImage:
    """An image and, per rate point, the indices (stages, h, w) the encoder picks for it."""

    rgb: torch.Tensor  # uint8 (3, H, W)
    choices: list[torch.Tensor]


def code_images(model: VQAutoencoder, paths: list[Path], max_side: int, points: Points,
                lengths: tuple[np.ndarray, np.ndarray]) -> list[CodedImage]:
    compact = torch.uint8 if model.config.num_codes <= 256 else torch.int16
    coded = []
    for path in paths:
        rgb = load_rgb(path, max_side)
        choices = choices_at_points(model, rgb.unsqueeze(0).float() / 255.0, points, lengths)
        coded.append(CodedImage(rgb, [indices.to(compact) for indices in choices]))
    return coded


def latent_of(model: VQAutoencoder, indices: torch.Tensor) -> torch.Tensor:
    """The latent (D, h, w) that indices (stages, h, w) stand for."""
    stages, h, w = indices.shape
    vectors = model.quantizer.lookup(indices.long().reshape(stages, h * w))
    return vectors.t().reshape(-1, h, w)


def holdout_psnr(model: VQAutoencoder, images: list[CodedImage]) -> list[float]:
    """Mean PSNR (dB, of the 8-bit decoded image) over the images, per rate point."""
    if not images:
        return []
    totals = [0.0] * len(images[0].choices)
    with torch.no_grad():
        for image in images:
            x = image.rgb.float()
            height, width = x.shape[-2:]
            for k, indices in enumerate(image.choices):
                stages, h, w = indices.shape
                decoded = model.decode_indices(indices.long().reshape(stages, h * w), (h, w), height, width)
                mse = torch.mean(((decoded[0] * 255).round() - x) ** 2).item() / 255**2
                totals[k] += psnr_from_mse(mse)
    return [round(t / len(images), 4) for t in totals]


def write_holdout(out: Path, model: VQAutoencoder, images: list[CodedImage], step: int) -> None:
    """Append the held-out PSNR per rate point at this step to OUT/holdout.jsonl."""
    record = {"step": step, "images": len(images), "psnr_per_rate_point": holdout_psnr(model, images)}
    print(json.dumps(record), file=sys.stderr, flush=True)
    with (out / "holdout.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


class ChoiceCropSampler:
    """Random crops at random rate points, aligned to latent cells, each with the latent
    window that decodes it exactly as the whole image decodes it.

    The window reaches ``context`` cells (the synthesis's receptive field) past the crop on
    every side, clipped to the latent grid, where a whole-image decode pads with zeros too.
    Scoring a crop decoded without that context teaches the synthesis the crop's own borders
    instead: a first run that did so, on bare 16-cell crops, gained 0.9 dB on crops and lost
    0.07-0.5 dB on whole held-out images.
    """

    def __init__(self, images: list[CodedImage], cells: int, context: int, stride: int,
                 generator: torch.Generator) -> None:
        self.window = cells + 2 * context
        self.images = [im for im in images if min(im.choices[0].shape[1:]) >= self.window
                       and min(im.rgb.shape[1:]) >= cells * stride]
        if not self.images:
            raise ValueError(f"no training image has a latent grid of at least {self.window}×{self.window} cells")
        self.cells, self.context, self.stride, self.generator = cells, context, stride, generator

    def batch(self, model: VQAutoencoder, size: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """(latent windows, target crops, each crop's offset in its window, in cells)."""
        g, c, s, window = self.generator, self.cells, self.stride, self.window
        latents, targets, offsets = [], [], []
        for _ in range(size):
            image = self.images[int(torch.randint(0, len(self.images), (1,), generator=g))]
            indices = image.choices[int(torch.randint(0, len(image.choices), (1,), generator=g))]
            # The crop's cells lie inside the image (no replicated padding); its window in the grid.
            rows, cols = image.rgb.shape[1] // s, image.rgb.shape[2] // s
            cy = int(torch.randint(0, rows - c + 1, (1,), generator=g))
            cx = int(torch.randint(0, cols - c + 1, (1,), generator=g))
            wy = min(max(cy - self.context, 0), indices.shape[1] - window)
            wx = min(max(cx - self.context, 0), indices.shape[2] - window)
            latents.append(latent_of(model, indices[:, wy : wy + window, wx : wx + window]))
            targets.append(image.rgb[:, cy * s : (cy + c) * s, cx * s : (cx + c) * s])
            offsets.append((cy - wy, cx - wx))
        return torch.stack(latents), torch.stack(targets).float().div_(255.0), offsets


def scored_crops(decoded: torch.Tensor, offsets: list[tuple[int, int]], cells: int, stride: int) -> torch.Tensor:
    """The crops (B, 3, cells·stride, cells·stride) at ``offsets`` (cells) of decoded windows."""
    side = cells * stride
    return torch.stack([decoded[i, :, oy * stride : oy * stride + side, ox * stride : ox * stride + side]
                        for i, (oy, ox) in enumerate(offsets)])


def load_release(weights: Path, card_path: Path) -> tuple[VQAutoencoder, np.ndarray, str, Points]:
    """The shipped model with only its synthesis trainable, its entropy tables, its sha256 and its
    card's rate points (stages, rate_weight), lowest quality first."""
    config, tensors, tables, _ = read_weights_file(weights)
    card = read_card(card_path)
    if card.sha256 != file_sha256(weights):
        raise SystemExit(f"{card_path} is not the card of {weights} (sha256 differs)")
    points = [(p.stages, p.rate_weight) for p in sorted(card_rate_points(card), key=lambda p: p.quality)]
    if not points:
        raise SystemExit(f"{card_path} lists no rate points")
    model = VQAutoencoder(config)
    model.load_state_dict(tensors)
    model.eval()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("synthesis."))
    return model, tables, card.sha256, points


def code_data(args: argparse.Namespace, model: VQAutoencoder, tables: np.ndarray, points: Points,
              generator: torch.Generator) -> tuple[list[CodedImage], ChoiceCropSampler]:
    """The held-out images, and a crop sampler over the training ones, coded at every rate point."""
    paths = list_images(args.data)
    every = args.holdout_every
    held = paths[::every] if every else []
    training = [p for i, p in enumerate(paths) if not every or i % every]
    start = time.monotonic()
    lengths = code_lengths(tables)
    held_out = code_images(model, held, args.max_side, points, lengths)
    sampler = ChoiceCropSampler(code_images(model, training, args.max_side, points, lengths), args.crop_cells,
                                tiling.synthesis_margin(model.synthesis), model.stride, generator)
    print(f"{len(sampler.images)} training and {len(held_out)} held-out images coded at {len(points)} rate "
          f"points in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return held_out, sampler


def train_synthesis(run: Run, sampler: ChoiceCropSampler, log: TrainLog, args: argparse.Namespace) -> bool:
    """The training loop, to --steps or the time budget; False if the loss stopped being finite."""
    model, optimizer = run.model, run.optimizer
    run.begin()
    model.synthesis.train()
    while run.step < args.steps and time.monotonic() - run.start < args.time_budget:
        set_learning_rate(optimizer, run.step, args.steps, args.lr, time.monotonic() - run.start, args.time_budget)
        latent, x, offsets = sampler.batch(model, args.batch)
        decoded = scored_crops(model.synthesis(latent), offsets, args.crop_cells, model.stride)
        loss, mse = training_loss(decoded, x, args.loss)
        if not optimiser_step(optimizer, loss, run.step):
            return False
        run.step += 1
        run.images_seen += args.batch
        log.add(loss.item(), mse.item(), args.batch)
        if log.due(run.step):
            log.write(run.step, lr=optimizer.param_groups[0]["lr"])
        run.save_when_due(args.checkpoint_every)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    model, tables, sha256, points = load_release(args.weights, args.card)
    optimizer = torch.optim.Adam(model.synthesis.parameters(), lr=args.lr)
    init_from = {"path": str(args.weights), "sha256": sha256, "trained": "synthesis only",
                 "coded_at": [{"stages": s, "rate_weight": w} for s, w in points]}
    run = Run(ckpt_path, model, optimizer, generator, "cpu", init_from)
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("init_from", {}).get("sha256") != sha256:
            raise SystemExit(f"{ckpt_path} did not start from {args.weights}")
        run.resume(state)

    held_out, sampler = code_data(args, model, tables, points, generator)
    if run.step == 0 and held_out:
        write_holdout(out, model, held_out, 0)
    log = TrainLog(out / "train_log.jsonl", args.log_every, run.elapsed_before)
    if not train_synthesis(run, sampler, log, args):
        return 1
    model.eval()
    run.save()
    log.close()
    if held_out:
        write_holdout(out, model, held_out, run.step)
    print(f"saved {ckpt_path} at step {run.step}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
