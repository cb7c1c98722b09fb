"""DiVeQ against the usual VQ gradient estimators at equal budget (issue 6).

``python -m models.study --data DIR --kodak DIR --out docs [--steps N --seeds 3 --quantizers all]``

Every run trains the same small VQ-VAE (``models.autoencoder`` transforms, a single
codebook of K = 256 words, or 2 residual stages of 16 words for residual DiVeQ: the same
raw 8 bits per latent vector) with the same seeds, crops, batch, steps, learning-rate
schedule, warm-up and codebook init; only the quantizer differs. Each trained model is
measured on the Kodak images through the pure coding path (indices → lookup → synthesis,
crop back) for PSNR-RGB, MS-SSIM, the fixed rate log₂K bits per latent vector, the
entropy-coded rate of the real coder (``codec.entropy``, static tables measured on
training crops after training, +1 smoothing), codebook usage and seconds per step.

SF-DiVeQ is coded two ways from the same weights: (c) the nearest codeword at log₂K bits,
the way the paper charges it, and (a) the codec's own segment + 2-bit position symbols
(alphabet (K − 1)·4), which is what a real bitstream would carry.

Writes ``OUT/quantizer-study.json`` (every run, the summary rows and the table as
Markdown: mean ± std over seeds) and ``OUT/quantizer-study.png`` (PSNR against bpp), and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from diveq_codec.codec.index_coder import encode_without_context, smoothed_counts, table_entropy_bits
from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.evaluation.msssim import ms_ssim
from diveq_codec.models.autoencoder import VQAutoencoder, analysis_transform, crop_to, pad_to_multiple, synthesis_transform
from diveq_codec.models.baselines import (EMAQuantizer, GumbelQuantizer, NSVQQuantizer, RotationTrickQuantizer,
                              STEQuantizer, gumbel_temperature)
from diveq_codec.models.codebook import nearest_codeword
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.data import CropSampler, list_images, load_rgb
from diveq_codec.models.diveq import DiVeQ, DiVeQDetach
from diveq_codec.models.quantizer import Quantizer
from diveq_codec.models.residual import ResidualDiVeQ
from diveq_codec.models.sf_diveq import SFDiVeQ, SFDiVeQDetach

QUANTIZERS = ("ste", "ema", "rotation", "gumbel", "nsvq", "diveq", "diveq-detach", "sf-diveq",
              "sf-diveq-detach", "residual-diveq")
LABELS = {
    "ste": "STE",
    "ema": "EMA",
    "rotation": "Rotation trick",
    "gumbel": "Gumbel-softmax",
    "nsvq": "NSVQ",
    "diveq": "DiVeQ",
    "diveq-detach": "DiVeQ-detach",
    "sf-diveq": "SF-DiVeQ",
    "sf-diveq-detach": "SF-DiVeQ-detach",
    "residual-diveq": "Residual DiVeQ 2×16",
}
RESIDUAL_STAGES, RESIDUAL_CODES = 2, 16
REFERENCE = "diveq"  # paired differences in the summary are taken against this quantizer


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``base``.

    ``models.train``'s schedule warms up over a fixed 200 steps, most of a study run.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_quantizer(name: str, num_codes: int, dim: int, noise_std: float) -> Quantizer:
    if name == "ste":
        return STEQuantizer(num_codes, dim)
    if name == "ema":
        return EMAQuantizer(num_codes, dim)
    if name == "rotation":
        return RotationTrickQuantizer(num_codes, dim)
    if name == "gumbel":
        return GumbelQuantizer(num_codes, dim)
    if name == "nsvq":
        return NSVQQuantizer(num_codes, dim)
    if name == "diveq":
        return DiVeQ(num_codes, dim, noise_std=noise_std)
    if name == "diveq-detach":
        return DiVeQDetach(num_codes, dim)
    if name == "sf-diveq":
        return SFDiVeQ(num_codes, dim, noise_std=noise_std, t_bits=2)
    if name == "sf-diveq-detach":
        return SFDiVeQDetach(num_codes, dim, t_bits=2)
    if name == "residual-diveq":
        # 2 stages × log2(16) = 8 bits per vector: the same raw rate as one K = 256 codebook.
        return ResidualDiVeQ(RESIDUAL_STAGES, RESIDUAL_CODES, dim, noise_std=noise_std)
    raise ValueError(f"unknown quantizer {name!r}; choose from {QUANTIZERS}")


class StudyModel(nn.Module):
    """analysis → quantizer → synthesis, transforms from ``models.autoencoder``."""

    def __init__(self, config: ModelConfig, quantizer: Quantizer) -> None:
        super().__init__()
        self.stride = config.stride
        self.analysis = analysis_transform(config)
        self.synthesis = synthesis_transform(config)
        self.quantizer = quantizer

    to_vectors = staticmethod(VQAutoencoder.to_vectors)
    to_latent = staticmethod(VQAutoencoder.to_latent)

    def forward(self, x: torch.Tensor, quantize: bool = True):
        latent = self.analysis(x)
        if not quantize:
            return self.synthesis(latent), None
        b, _, h, w = latent.shape
        out = self.quantizer(self.to_vectors(latent))
        return self.synthesis(self.to_latent(out.z_q, b, h, w)), out


@dataclass
class Coding:
    """One way to turn latents into symbols and back (the pure coding path)."""

    variant: str
    alphabet_sizes: list[int]
    indices: Callable[[torch.Tensor], torch.Tensor]
    lookup: Callable[[torch.Tensor], torch.Tensor]
    rate_note: str


def codings(name: str, quantizer: Quantizer) -> list[Coding]:
    if name.startswith("sf-"):
        k = quantizer.num_codes
        nearest = Coding(
            "c", [k],
            lambda z: nearest_codeword(z, quantizer.codebook).unsqueeze(0),
            lambda idx: quantizer.codebook.detach().float()[idx[0]],
            "(c) nearest codeword, log2 K bits (the paper's charge)",
        )
        segment = Coding(
            "a", list(quantizer.alphabet_sizes), quantizer.indices, quantizer.lookup,
            "(a) segment + 2-bit position, log2((K-1)*4) bits (the codec's bitstream)",
        )
        return [nearest, segment]
    return [Coding("", list(quantizer.alphabet_sizes), quantizer.indices, quantizer.lookup,
                   " + ".join(f"log2 {a}" for a in quantizer.alphabet_sizes) + " bits")]


def load_kodak(folder: str) -> list[tuple[str, np.ndarray]]:
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append((p.name, np.asarray(img.convert("RGB")).copy()))
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def table_latents(model: StudyModel, images: list[torch.Tensor], seed: int, batches: int, batch: int,
                  crop: int) -> list[torch.Tensor]:
    """Latent vectors of random training crops (own generator), for the frequency tables."""
    sampler = CropSampler(images, crop, torch.Generator().manual_seed(10_000 + seed))
    return [model.to_vectors(model.analysis(sampler.batch(batch))).float() for _ in range(batches)]


@torch.no_grad()
def frequency_tables(coding: Coding, latents: list[torch.Tensor]) -> np.ndarray:
    """Integer symbol counts of each stream over the given latent vectors."""
    counts = np.zeros((len(coding.alphabet_sizes), max(coding.alphabet_sizes)), dtype=np.int64)
    for vectors in latents:
        idx = coding.indices(vectors)
        for m in range(idx.shape[0]):
            counts[m] += np.bincount(idx[m].numpy(), minlength=counts.shape[1])[: counts.shape[1]]
    return counts


@torch.no_grad()
def kodak_latents(model: StudyModel, kodak: list[tuple[str, np.ndarray]]) -> list[torch.Tensor]:
    """Analysis of every Kodak image (padded to the stride), shared by all codings of a model."""
    out = []
    for _, ref in kodak:
        x = torch.from_numpy(ref).permute(2, 0, 1)[None].float().div(255.0)
        out.append(model.analysis(pad_to_multiple(x, model.stride)).float())
    return out


@torch.no_grad()
def evaluate_kodak(model: StudyModel, coding: Coding, tables: np.ndarray,
                   kodak: list[tuple[str, np.ndarray]], latents: list[torch.Tensor]) -> dict:
    stages = len(coding.alphabet_sizes)
    usage = np.zeros((stages, max(coding.alphabet_sizes)), dtype=np.int64)
    psnrs, msssims, ec_bpp, raw_bpp = [], [], [], []
    raw_bits_per_vector = sum(math.log2(a) for a in coding.alphabet_sizes)
    nonfinite = 0
    for (_, ref), latent in zip(kodak, latents):
        height, width = ref.shape[:2]
        _, _, h, w = latent.shape
        nonfinite += int((~torch.isfinite(latent)).sum())
        idx = coding.indices(model.to_vectors(latent))
        x_hat = model.synthesis(model.to_latent(coding.lookup(idx), 1, h, w))
        nonfinite += int((~torch.isfinite(x_hat)).sum())
        dec = to_uint8(crop_to(torch.nan_to_num(x_hat), height, width))
        psnrs.append(psnr(ref, dec))
        msssims.append(ms_ssim(ref, dec))
        idx_np = idx.numpy().astype(np.int64)
        payload = encode_without_context(idx_np, tables)
        ec_bpp.append(len(payload) * 8.0 / (height * width))
        raw_bpp.append(raw_bits_per_vector * h * w / (height * width))
        for m in range(stages):
            usage[m] += np.bincount(idx_np[m], minlength=usage.shape[1])[: usage.shape[1]]
    perplexities, dead = [], 0
    for m, size in enumerate(coding.alphabet_sizes):
        p = usage[m, :size] / max(1, usage[m, :size].sum())
        nz = p[p > 0]
        perplexities.append(float(np.exp(-(nz * np.log(nz)).sum())))
        dead += int((usage[m, :size] == 0).sum())
    return {
        "psnr": float(np.mean(psnrs)),
        "ms_ssim": float(np.mean(msssims)),
        "bpp_fixed": float(np.mean(raw_bpp)),
        "bpp_entropy": float(np.mean(ec_bpp)),
        "bits_per_vector_fixed": raw_bits_per_vector,
        "table_entropy_bits": [float(b) for b in table_entropy_bits(tables)],
        "kodak_perplexity": perplexities,
        "kodak_dead_symbols": dead,
        "alphabet_total": int(sum(coding.alphabet_sizes)),
        "nonfinite_kodak_values": nonfinite,
        "per_image_psnr": [float(v) for v in psnrs],
    }


def train_run(name: str, seed: int, args: argparse.Namespace, images: list[torch.Tensor],
              kodak: list[tuple[str, np.ndarray]]) -> dict:
    config = ModelConfig(channels=args.channels, latent_dim=args.latent_dim, downsamplings=args.downsamplings,
                         num_codes=args.codes, noise_std=args.noise_std)
    torch.manual_seed(seed)
    # Transforms first, so every quantizer starts from the same encoder/decoder weights.
    model = StudyModel(config, nn.Identity())  # type: ignore[arg-type]
    model.quantizer = make_quantizer(name, args.codes, args.latent_dim, args.noise_std)
    sampler = CropSampler(images, args.crop, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    quantized_steps = args.steps - args.warmup_steps
    losses, perplexities, replaced_total, nan_step = [], [], 0, None
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.lr_warmup)
        x = sampler.batch(args.batch)
        quantize = step >= args.warmup_steps
        if step == args.warmup_steps:
            with torch.no_grad():
                model.quantizer.init_from_data(model.to_vectors(model.analysis(x)).float())
        if isinstance(model.quantizer, GumbelQuantizer):
            model.quantizer.set_temperature(gumbel_temperature((step - args.warmup_steps) / max(1, quantized_steps - 1)))
        x_hat, q = model(x, quantize)
        mse = torch.mean((x_hat - x) ** 2)
        aux = getattr(model.quantizer, "aux_loss", None) if quantize else None
        loss = mse + (aux if aux is not None else 0.0)
        if not torch.isfinite(loss):
            nan_step = step
            print(f"  {name} seed {seed}: non-finite loss at step {step}; stopping this run", file=sys.stderr)
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if quantize:
            replaced_total += model.quantizer.replace_dead_codes(optimizer)
        losses.append(mse.item())
        if q is not None and q.perplexities:
            perplexities.append(float(np.mean(q.perplexities)))
    train_s = time.perf_counter() - start
    steps_done = len(losses)
    nonfinite_params = sum(int((~torch.isfinite(p)).sum()) for p in model.state_dict().values()
                           if torch.is_tensor(p) and p.is_floating_point())
    tail = losses[-args.log_tail:] if losses else [math.nan]
    result = {
        "quantizer": name,
        "seed": seed,
        "steps_done": steps_done,
        "train_seconds": train_s,
        "seconds_per_step": train_s / max(1, steps_done),
        "final_train_psnr": 10 * math.log10(1.0 / max(float(np.mean(tail)), 1e-12)),
        "final_train_perplexity": float(np.mean(perplexities[-args.log_tail:])) if perplexities else math.nan,
        "codewords_replaced": replaced_total,
        "nan_step": nan_step,
        "nonfinite_params": nonfinite_params,
        "codings": {},
    }
    model.eval()
    eval_start = time.perf_counter()
    train_vectors = table_latents(model, images, seed, args.table_batches, args.batch, args.table_crop)
    test_latents = kodak_latents(model, kodak)
    for coding in codings(name, model.quantizer):
        raw = frequency_tables(coding, train_vectors)
        tables = smoothed_counts(raw)
        metrics = evaluate_kodak(model, coding, tables, kodak, test_latents)
        metrics["rate_note"] = coding.rate_note
        metrics["alphabet_sizes"] = coding.alphabet_sizes
        metrics["table_symbols"] = int(raw.sum())
        result["codings"][coding.variant] = metrics
    result["eval_seconds"] = time.perf_counter() - eval_start
    return result


def row_key(name: str, variant: str) -> str:
    return name if not variant else f"{name} ({variant})"


def row_label(name: str, variant: str) -> str:
    label = LABELS[name]
    if variant == "c":
        return f"{label} (c) nearest codeword"
    if variant == "a":
        return f"{label} (a) segment + 2-bit t"
    return label


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and sample std over seeds, one row per (quantizer, coding variant)."""
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for run in runs:
        for variant, metrics in run["codings"].items():
            groups.setdefault((run["quantizer"], variant), []).append((run, metrics))
    rows = []
    for (name, variant), items in groups.items():
        def stat(values: list[float]) -> tuple[float, float]:
            arr = np.asarray(values, dtype=np.float64)
            return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        row = {"key": row_key(name, variant), "label": row_label(name, variant), "quantizer": name,
               "variant": variant, "seeds": len(items)}
        for field in ("psnr", "ms_ssim", "bpp_fixed", "bpp_entropy", "kodak_dead_symbols"):
            row[field] = stat([m[field] for _, m in items])
        row["kodak_perplexity"] = stat([float(np.mean(m["kodak_perplexity"])) for _, m in items])
        row["seconds_per_step"] = stat([r["seconds_per_step"] for r, _ in items])
        row["final_train_psnr"] = stat([r["final_train_psnr"] for r, _ in items])
        row["alphabet_total"] = items[0][1]["alphabet_total"]
        row["bits_per_vector_fixed"] = items[0][1]["bits_per_vector_fixed"]
        row["codewords_replaced"] = stat([r["codewords_replaced"] for r, _ in items])
        row["nan_runs"] = sum(1 for r, m in items if r["nan_step"] is not None or r["nonfinite_params"]
                              or m["nonfinite_kodak_values"])
        # Paired with DiVeQ on the same seed (same transform init, same crops): the seed's
        # own spread cancels, which is what the small differences here need.
        reference = {r["seed"]: r["codings"][""] for r in runs if r["quantizer"] == REFERENCE}
        paired = [(m, reference[r["seed"]]) for r, m in items if r["seed"] in reference]
        if paired:
            row["vs_diveq_same_seed"] = {
                field: stat([m[field] - ref[field] for m, ref in paired])
                for field in ("psnr", "ms_ssim", "bpp_entropy")
            }
            row["vs_diveq_same_seed"]["psnr_higher_seeds"] = sum(1 for m, ref in paired if m["psnr"] > ref["psnr"])
            row["vs_diveq_same_seed"]["seeds"] = len(paired)
        rows.append(row)
    order = {q: i for i, q in enumerate(QUANTIZERS)}
    rows.sort(key=lambda r: (order[r["quantizer"]], r["variant"] != "c"))
    return rows


def fmt(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table_markdown(rows: list[dict]) -> str:
    head = ("| quantizer | bits/vector (fixed) | bpp fixed | bpp entropy-coded | PSNR-RGB (dB) "
            "| ΔPSNR vs DiVeQ, same seed (dB) | MS-SSIM "
            "| Kodak perplexity | dead symbols on Kodak | train PSNR, last steps (dB) | s/step | NaN runs |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        delta = r.get("vs_diveq_same_seed")
        delta_cell = (f"{fmt(delta['psnr'], 2)} ({delta['psnr_higher_seeds']}/{delta['seeds']} higher)"
                      if delta and r["key"] != REFERENCE else "—")
        lines.append(
            f"| {r['label']} | {r['bits_per_vector_fixed']:.2f} | {r['bpp_fixed'][0]:.4f} "
            f"| {fmt(r['bpp_entropy'], 4)} | {fmt(r['psnr'], 2)} | {delta_cell} | {fmt(r['ms_ssim'], 4)} "
            f"| {fmt(r['kodak_perplexity'], 1)} | {fmt(r['kodak_dead_symbols'], 1)} / {r['alphabet_total']} "
            f"| {fmt(r['final_train_psnr'], 2)} | {fmt(r['seconds_per_step'], 3)} | {r['nan_runs']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against fixed and entropy-coded bpp, one marker per row, error bars = std over seeds.

    On the fixed-rate panel most rows share one rate (log₂K bits per vector), so they are
    spread sideways by a small offset (stated on the axis) to keep them visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True)
    markers = "osD^v<>phX*Pd"
    cmap = plt.get_cmap("tab10")
    spread = 0.004
    for i, r in enumerate(rows):
        style = dict(fmt=markers[i % len(markers)], color=cmap(i % 10), capsize=3, markersize=7, label=r["label"])
        offset = (i - (len(rows) - 1) / 2) * spread
        axes[0].errorbar(r["bpp_fixed"][0] + offset, r["psnr"][0], yerr=r["psnr"][1], **style)
        axes[1].errorbar(r["bpp_entropy"][0], r["psnr"][0], xerr=r["bpp_entropy"][1], yerr=r["psnr"][1], **style)
    axes[0].set_xlabel(f"bpp, fixed rate: log₂(alphabet) bits per latent vector / stride²\n"
                       f"(markers spread sideways by {spread} bpp per row for visibility)")
    axes[1].set_xlabel("bpp, entropy-coded payload (static table from training crops)")
    axes[0].set_ylabel("Kodak PSNR-RGB (dB), mean ± std over seeds")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(args: dict) -> str:
    return (f"VQ-VAE (channels {args['channels']}, D = {args['latent_dim']}, stride {2 ** args['downsamplings']}), "
            f"{args['steps']} steps ({args['warmup_steps']} without quantizer) × batch {args['batch']} × "
            f"{args['crop']}² crops, {args['seeds']} seeds; evaluated on Kodak")


def replot(json_path: Path) -> None:
    """Redraw the figure from a JSON this module wrote (no training, no evaluation)."""
    report = json.loads(json_path.read_text())
    plot(report["summary"], json_path.with_suffix(".png"), plot_title(report["args"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.study", description=__doc__.splitlines()[0])
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        replot(Path(args.replot))
        return 0
    if not (args.data and args.kodak and args.out):
        raise SystemExit("--data, --kodak and --out are required")
    torch.set_num_threads(args.threads)
    names = list(QUANTIZERS) if args.quantizers == "all" else [q.strip() for q in args.quantizers.split(",")]
    for name in names:
        if name not in QUANTIZERS:
            raise SystemExit(f"unknown quantizer {name!r}; choose from {QUANTIZERS}")
    if not 0 <= args.warmup_steps < args.steps:
        raise SystemExit("--warmup-steps must be in [0, --steps)")
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
    rows = summarize(runs)
    wall = time.perf_counter() - wall_start
    command = "python -m models.study " + " ".join(sys.argv[1:]) if argv is None else "models.study.main(...)"
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
    print(table_markdown(rows))
    print(f"total wall time {wall:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
