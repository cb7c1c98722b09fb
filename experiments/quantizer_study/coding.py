"""How the study codes and measures a trained model on Kodak, through the pure coding path
(indices → lookup → synthesis, crop back): PSNR-RGB, MS-SSIM, the fixed rate log₂K bits per
latent vector, the entropy-coded rate of the real range coder (context-free static tables
measured on training crops after training, +1 smoothing) and codebook usage.

Kodak is the evaluation set here, never a tuning set: nothing is chosen from these figures.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec.evaluation.msssim import ms_ssim
from diveq_codec.codec.rate_tables import encode_without_context, smoothed_counts, table_entropy_bits
from diveq_codec.codec.metrics import psnr
from diveq_codec.models.autoencoder import crop_to, pad_to_multiple
from diveq_codec.models.codebook import nearest_codeword
from diveq_codec.models.data import CropSampler, list_images
from diveq_codec.models.quantizer import Quantizer

from experiments.quantizer_study.training import StudyModel


@dataclass
class Coding:
    """One way to turn latents into symbols and back (the pure coding path)."""

    variant: str
    alphabet_sizes: list[int]
    indices: Callable[[torch.Tensor], torch.Tensor]
    lookup: Callable[[torch.Tensor], torch.Tensor]
    rate_note: str


def codings(name: str, quantizer: Quantizer) -> list[Coding]:
    """SF-DiVeQ is coded two ways from the same weights: (c) the nearest codeword at log₂K
    bits, the paper's charge, and (a) the codec's segment + 2-bit position symbols."""
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


def usage_figures(usage: np.ndarray, alphabet_sizes: list[int]) -> tuple[list[float], int]:
    """Each stream's perplexity on Kodak and the number of its symbols Kodak never used."""
    perplexities, dead = [], 0
    for m, size in enumerate(alphabet_sizes):
        p = usage[m, :size] / max(1, usage[m, :size].sum())
        nz = p[p > 0]
        perplexities.append(float(np.exp(-(nz * np.log(nz)).sum())))
        dead += int((usage[m, :size] == 0).sum())
    return perplexities, dead


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
    perplexities, dead = usage_figures(usage, coding.alphabet_sizes)
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


def evaluate_run(model: StudyModel, result: dict, args: argparse.Namespace, images: list[torch.Tensor],
                 kodak: list[tuple[str, np.ndarray]]) -> None:
    """Fill a trained run's ``codings`` (one entry per coding variant) and ``eval_seconds``."""
    eval_start = time.perf_counter()
    train_vectors = table_latents(model, images, result["seed"], args.table_batches, args.batch, args.table_crop)
    test_latents = kodak_latents(model, kodak)
    for coding in codings(result["quantizer"], model.quantizer):
        raw = frequency_tables(coding, train_vectors)
        tables = smoothed_counts(raw)
        metrics = evaluate_kodak(model, coding, tables, kodak, test_latents)
        metrics["rate_note"] = coding.rate_note
        metrics["alphabet_sizes"] = coding.alphabet_sizes
        metrics["table_symbols"] = int(raw.sum())
        result["codings"][coding.variant] = metrics
    result["eval_seconds"] = time.perf_counter() - eval_start
