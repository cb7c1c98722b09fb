"""Train the index prior (models/index_prior.py) on the encoder's own index maps.

``python -m diveq_codec.models.train_index_prior MAPS.npz [MORE.npz ...] WEIGHTS.safetensors
OUT_DIR [--time-budget S] [--hidden H] [--wide] [--init CHECKPOINT] [--keep-best]``

MAPS.npz comes from ``python -m diveq_codec.codec.release.index_maps`` (training photos
only, never Kodak); several files (the trainpack's maps and the full-size photos') train
together. One photo in ``HOLDOUT_EVERY`` (by sorted name, so the same photo in every file)
is held out: the run reports bits per symbol on it, per stage, and never trains on it.
``--keep-best`` also sets aside the photos ``VALIDATION_OFFSET`` places after them, scores
them at each checkpoint, and keeps each stage's network at its best score there (the
stages are separate networks; the later ones, with less data, overfit first). Time-boxed and
resumable: OUT_DIR/checkpoint.pt is written every ``--checkpoint-every`` seconds and a run
started on the same OUT_DIR continues from it. ``--init`` starts from another run's
checkpoint of the same width, possibly with fewer neighbours: the new ones start at zero,
so the model starts as the one it came from.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from diveq_codec.models.index_prior import WIDE_NEIGHBOURS, IndexPrior, IndexPriorConfig, bits, stage_inputs
from diveq_codec.models.weights_file import read_tensors

HOLDOUT_EVERY = 8  # images 0, 8, 16, … of the sorted names are held out
VALIDATION_OFFSET = 4  # with --keep-best, images 4, 12, 20, … choose when each stage stops
PAD = 4  # a window's margin: past the farthest neighbour, and even so that columns keep their parity
OUTSIDE = 255  # a map cell off the image


def load_maps(paths: list[Path], validation: bool = False
              ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(training, held-out, validation) lists of (config key, map (S, h, w) uint8); the
    validation list is empty unless ``validation``."""
    files = [np.load(path) for path in paths]
    try:
        names = sorted({str(n) for data in files for n in data["names"]})
        position = {n: i for i, n in enumerate(names)}
        train: list[tuple[str, np.ndarray]] = []
        holdout: list[tuple[str, np.ndarray]] = []
        validate: list[tuple[str, np.ndarray]] = []
        for data in files:
            for key in data.files:
                if key == "names":
                    continue
                name, config = key.split("|", 1)
                i = position[name] % HOLDOUT_EVERY
                part = holdout if i == 0 else validate if validation and i == VALIDATION_OFFSET else train
                part.append((config, data[key]))
    finally:
        for data in files:
            data.close()
    return train, holdout, validate


def window_batch(maps: list[np.ndarray], stage: int, size: int, count: int,
                 rng: np.random.Generator) -> torch.Tensor:
    """``count`` windows (count, stage + 1, size + 2·PAD, size + 2·PAD) of maps with more
    than ``stage`` stages, OUTSIDE beyond the image; their left edge is at an even column so
    the columns keep their parity."""
    usable = [m for m in maps if m.shape[0] > stage]
    out = np.full((count, stage + 1, size + 2 * PAD, size + 2 * PAD), OUTSIDE, dtype=np.int64)
    for n in range(count):
        m = usable[rng.integers(len(usable))][: stage + 1]
        padded = np.pad(m, ((0, 0), (PAD, PAD), (PAD, PAD)), constant_values=OUTSIDE)
        y = rng.integers(max(1, padded.shape[1] - out.shape[2] + 1))
        x = 2 * rng.integers(max(1, (padded.shape[2] - out.shape[3]) // 2 + 1))
        piece = padded[:, y : y + out.shape[2], x : x + out.shape[3]]
        out[n, :, : piece.shape[1], : piece.shape[2]] = piece
    return torch.from_numpy(out)


def window_bits(prior: IndexPrior, windows: torch.Tensor, stage: int, books: torch.Tensor) -> torch.Tensor:
    """Bits of every real cell of the windows' stage ``stage`` (teacher forcing)."""
    config = prior.config
    outside = windows == OUTSIDE
    maps = windows.masked_fill(outside, config.codes)  # the codebooks' extra zero row
    previous_sum, previous_index, tokens = stage_inputs(maps, stage, books, config)
    if previous_index is not None:
        previous_index = previous_index.clamp(max=config.codes - 1)
    inner = ~outside[:, stage]
    inner[:, :PAD] = False
    inner[:, :, :PAD] = False
    inner[:, :, -PAD:] = False
    logits = prior.stages[stage](previous_sum, previous_index, tokens, where=inner)
    return bits(logits, maps[:, stage][inner])


def padded_codebooks(weights: Path, stages: int) -> torch.Tensor:
    """The first ``stages`` codebooks (stages, codes + 1, D), with a zero row for cells off the image."""
    _, tensors = read_tensors(weights)
    books = tensors["quantizer.codebooks"].float()[:stages]
    return torch.cat([books, torch.zeros(stages, 1, books.shape[2])], dim=1)


@torch.no_grad()
def warm_start(prior: IndexPrior, checkpoint: Path) -> None:
    """Load a checkpoint whose neighbours are a subset of ``prior``'s; the others start at zero."""
    state = torch.load(checkpoint, weights_only=False)
    old = [tuple(o) for o in state["config"]["neighbours"]]
    new = list(prior.config.neighbours)
    if not set(old) <= set(new):
        raise SystemExit(f"{checkpoint}: its neighbours {old} are not all among {new}")
    model = dict(state["model"])
    for m, stage in enumerate(prior.stages):
        key = f"stages.{m}.neighbours"
        embeddings = torch.zeros_like(stage.neighbours)
        for j, offset in enumerate(old):
            embeddings[new.index(offset)] = model[key][j]
        model[key] = embeddings
    prior.load_state_dict(model)


@torch.no_grad()
def bit_totals(prior: IndexPrior, maps: list[tuple[str, np.ndarray]], books: torch.Tensor
               ) -> dict[str, list[tuple[float, int]]]:
    """Per configuration, each stage's (total bits, symbols) on whole maps."""
    totals: dict[str, list[tuple[float, int]]] = {}
    for config, m in maps:
        padded = np.pad(m.astype(np.int64), ((0, 0), (PAD, PAD), (PAD, PAD)), constant_values=OUTSIDE)
        windows = torch.from_numpy(padded)[None]
        entry = totals.setdefault(config, [(0.0, 0)] * m.shape[0])
        for stage in range(m.shape[0]):
            b = window_bits(prior, windows[:, : stage + 1], stage, books)
            entry[stage] = (entry[stage][0] + float(b.sum()), entry[stage][1] + b.numel())
    return totals


def holdout_bits(prior: IndexPrior, maps: list[tuple[str, np.ndarray]], books: torch.Tensor) -> dict[str, list[float]]:
    """Mean bits per symbol of each stage of each config on whole held-out maps."""
    return {c: [s / max(n, 1) for s, n in v] for c, v in bit_totals(prior, maps, books).items()}


def pooled_stage_bits(prior: IndexPrior, maps: list[tuple[str, np.ndarray]], books: torch.Tensor) -> list[float]:
    """Mean bits per symbol of each stage over every configuration's maps together."""
    pooled = [[0.0, 0] for _ in prior.stages]
    for entry in bit_totals(prior, maps, books).values():
        for stage, (s, n) in enumerate(entry):
            pooled[stage][0] += s
            pooled[stage][1] += n
    return [s / max(n, 1) for s, n in pooled]


def rescored(prior: IndexPrior, best: list, validation: list[tuple[str, np.ndarray]], books: torch.Tensor) -> list:
    """``best`` (per stage: score, state) with each kept state scored again on ``validation``."""
    kept = copy.deepcopy(prior)
    for m, entry in enumerate(best):
        if entry is not None:
            kept.stages[m].load_state_dict(entry[1])
    scores = pooled_stage_bits(kept, validation, books)
    return [None if entry is None else (scores[m], entry[1]) for m, entry in enumerate(best)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", type=Path, nargs="+")
    parser.add_argument("weights", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--time-budget", type=float, default=1800.0)
    parser.add_argument("--checkpoint-every", type=float, default=120.0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--projected", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--wide", action="store_true", help="condition on 19 neighbours rather than 10")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint (see above)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--keep-best", action="store_true",
                        help="keep each stage at its best score on validation photos (see above)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, holdout, validation = load_maps(args.maps, validation=args.keep_best)
    config = IndexPriorConfig(stages=max(m.shape[0] for _, m in train), hidden=args.hidden, projected=args.projected,
                              **({"neighbours": WIDE_NEIGHBOURS} if args.wide else {}))
    books = padded_codebooks(args.weights, config.stages)
    prior = IndexPrior(config)
    optimizer = torch.optim.Adam(prior.parameters(), lr=args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint.pt"
    step, elapsed_before = 0, 0.0
    best: list[tuple[float, dict[str, torch.Tensor]] | None] = [None] * config.stages
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        prior.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = state["step"], state["elapsed_s"]
        best = state.get("best", best)
        if validation and any(b is not None for b in best):
            best = rescored(prior, best, validation, books)  # the validation photos' maps may have changed
        print(f"resumed at step {step}", flush=True)
    elif args.init is not None:
        warm_start(prior, args.init)
        print(f"started from {args.init}", flush=True)
    train_maps = [m for _, m in train]
    rng = np.random.default_rng(step)
    start = last_saved = time.monotonic()

    config_record = {**config.__dict__, "neighbours": [list(o) for o in config.neighbours]}

    def save() -> None:
        if validation:
            scores = pooled_stage_bits(prior, validation, books)
            for m, score in enumerate(scores):
                if best[m] is None or score < best[m][0]:
                    best[m] = (score, {k: v.clone() for k, v in prior.stages[m].state_dict().items()})
            print(f"step {step} validation bits " + " ".join(f"{v:.4f}" for v in scores)
                  + " best " + " ".join(f"{b[0]:.4f}" for b in best if b is not None), flush=True)
        record = {"config": config_record, "model": prior.state_dict(), "optimizer": optimizer.state_dict(),
                  "step": step, "elapsed_s": elapsed_before + time.monotonic() - start, "best": best}
        torch.save(record, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)

    while not args.eval_only and elapsed_before + time.monotonic() - start < args.time_budget:
        # The learning rate falls to a tenth over the budget (cosine).
        progress = min(1.0, (elapsed_before + time.monotonic() - start) / args.time_budget)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))
        losses = []
        for stage in range(config.stages):
            windows = window_batch(train_maps, stage, args.window, args.batch, rng)
            loss = window_bits(prior, windows, stage, books).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        step += 1
        if step % 100 == 0:
            print(f"step {step} {time.monotonic() - start:.0f} s bits " + " ".join(f"{v:.3f}" for v in losses), flush=True)
        if time.monotonic() - last_saved > args.checkpoint_every:
            save()
            last_saved = time.monotonic()
    if not args.eval_only:
        save()
    if validation:
        # The model that ships: each stage's network as it was at its best validation score.
        for m, kept in enumerate(best):
            if kept is not None:
                prior.stages[m].load_state_dict(kept[1])
        torch.save({"config": config_record, "model": prior.state_dict(), "step": step,
                    "elapsed_s": elapsed_before + time.monotonic() - start,
                    "best_bits": [b[0] if b else None for b in best]}, args.out / "best.pt")
    result = holdout_bits(prior, holdout, books)
    (args.out / "holdout_bits.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
