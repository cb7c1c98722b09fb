"""DiVeQ against the usual VQ gradient estimators at equal budget (issue 6).

``python -m experiments.quantizer_study --data DIR --kodak DIR --out docs [--steps N --seeds 3 --quantizers all]``
(from the repository root; ``--replot docs/quantizer-study.json`` only redraws the figure)

Every run trains the same small VQ-VAE (``diveq_codec.models.autoencoder`` transforms, a
single codebook of K = 256 words, or 2 residual stages of 16 words for residual DiVeQ: the
same raw 8 bits per latent vector) with the same seeds, crops, batch, steps, learning-rate
schedule, warm-up and codebook init; only the quantizer differs (training.py). Each trained
model is measured on the Kodak images through the pure coding path (coding.py) for PSNR-RGB,
MS-SSIM, the fixed rate log₂K bits per latent vector, the entropy-coded rate of the real
coder (static tables measured on training crops after training, +1 smoothing), codebook
usage and seconds per step.

SF-DiVeQ is coded two ways from the same weights: (c) the nearest codeword at log₂K bits,
the way the paper charges it, and (a) the codec's own segment + 2-bit position symbols
(alphabet (K − 1)·4), which is what a real bitstream would carry.

Writes ``OUT/quantizer-study.json`` (every run, the summary rows and the table as
Markdown: mean ± std over seeds) and ``OUT/quantizer-study.png`` (PSNR against bpp), and
prints the table (report.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diveq_codec.models.data import list_images, load_rgb

from experiments.quantizer_study.coding import evaluate_run, load_kodak
from experiments.quantizer_study.report import plot, plot_title, replot, row_key, summarize, table_markdown
from experiments.quantizer_study.training import QUANTIZERS, train_model

PROG = "python -m experiments.quantizer_study"


def train_run(name: str, seed: int, args: argparse.Namespace, images: list[torch.Tensor],
              kodak: list[tuple[str, np.ndarray]]) -> dict:
    """One quantizer and seed: trained, then measured on Kodak in every coding."""
    model, result = train_model(name, seed, args, images)
    evaluate_run(model, result, args, images, kodak)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", help="training images (searched recursively); required unless --replot")
    p.add_argument("--kodak", help="the 24 Kodak images (evaluation only); required unless --replot")
    p.add_argument("--out", help="folder for quantizer-study.json and quantizer-study.png; required unless --replot")
    p.add_argument("--replot", metavar="JSON", help="only redraw JSON's figure (next to it) and exit")
    p.add_argument("--quantizers", default="all", help=f"comma list from {','.join(QUANTIZERS)} or 'all'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--warmup-steps", type=int, default=40, help="plain-autoencoder steps before codebook init")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate")
    p.add_argument("--lr-warmup", type=int, default=20, help="steps of linear learning-rate warm-up")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--downsamplings", type=int, default=2)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--noise-std", type=float, default=1e-3)
    p.add_argument("--max-side", type=int, default=512, help="downscale training images to this long side")
    p.add_argument("--table-batches", type=int, default=8, help="batches of training crops for the frequency tables")
    p.add_argument("--table-crop", type=int, default=128)
    p.add_argument("--log-tail", type=int, default=50, help="steps averaged for the final training PSNR")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def chosen_quantizers(args: argparse.Namespace) -> list[str]:
    """The quantizers asked for; SystemExit for an unknown one or a bad warm-up."""
    names = list(QUANTIZERS) if args.quantizers == "all" else [q.strip() for q in args.quantizers.split(",")]
    for name in names:
        if name not in QUANTIZERS:
            raise SystemExit(f"unknown quantizer {name!r}; choose from {QUANTIZERS}")
    if not 0 <= args.warmup_steps < args.steps:
        raise SystemExit("--warmup-steps must be in [0, --steps)")
    return names


def write_report(out: Path, args: argparse.Namespace, names: list[str], runs: list[dict], wall: float,
                 command: str) -> list[dict]:
    """quantizer-study.json and .png under ``out``; the summary rows."""
    rows = summarize(runs)
    report = {
        "command": command,
        "args": vars(args),
        "budget": {
            "steps": args.steps, "warmup_steps": args.warmup_steps, "batch": args.batch, "crop": args.crop,
            "seeds": args.seeds, "quantizers": names,
            "latent_vectors_per_step": args.batch * (args.crop // 2**args.downsamplings) ** 2,
        },
        "wall_seconds": wall,
        "host": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                 "machine": platform.machine()},
        "summary": rows,
        "table_markdown": table_markdown(rows),
        "runs": runs,
    }
    (out / "quantizer-study.json").write_text(json.dumps(report, indent=1))
    plot(rows, out / "quantizer-study.png", plot_title(vars(args)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        replot(Path(args.replot))
        return 0
    if not (args.data and args.kodak and args.out):
        raise SystemExit("--data, --kodak and --out are required")
    torch.set_num_threads(args.threads)
    names = chosen_quantizers(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall_start = time.perf_counter()
    images = [load_rgb(p, args.max_side) for p in list_images(args.data)]
    if not images:
        raise SystemExit(f"no training images under {args.data}")
    kodak = load_kodak(args.kodak)
    print(f"{len(images)} training images, {len(kodak)} Kodak images, "
          f"load {time.perf_counter() - wall_start:.1f}s", file=sys.stderr)
    runs = []
    for seed in range(args.seeds):
        for name in names:
            t0 = time.perf_counter()
            run = train_run(name, seed, args, images, kodak)
            runs.append(run)
            summary = ", ".join(f"{row_key(name, v)}: {m['psnr']:.2f} dB @ {m['bpp_entropy']:.3f} bpp"
                                for v, m in run["codings"].items())
            print(f"[{time.perf_counter() - wall_start:7.1f}s] seed {seed} {name}: {summary}; "
                  f"{run['seconds_per_step']:.3f} s/step, run {time.perf_counter() - t0:.1f}s", file=sys.stderr,
                  flush=True)
    wall = time.perf_counter() - wall_start
    command = f"{PROG} " + " ".join(sys.argv[1:]) if argv is None else "experiments.quantizer_study.study.main(...)"
    rows = write_report(out, args, names, runs, wall, command)
    print(table_markdown(rows))
    print(f"total wall time {wall:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
