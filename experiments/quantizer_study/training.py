"""The study's models and their training: one small VQ-VAE per quantizer, same budget.

Every run trains the same transforms (``diveq_codec.models.autoencoder``) with the same
seed, crops, batch, steps, learning-rate schedule, warm-up and codebook init; only the
quantizer differs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
from torch import nn

from diveq_codec.models.autoencoder import VQAutoencoder, analysis_transform, synthesis_transform
from diveq_codec.models.baselines import (EMAQuantizer, GumbelQuantizer, NSVQQuantizer, RotationTrickQuantizer,
                                          STEQuantizer, gumbel_temperature)
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.data import CropSampler
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


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``base``.

    ``diveq_codec.models.train``'s schedule warms up over a fixed 200 steps, most of a study run.
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
    """analysis → quantizer → synthesis, transforms from ``diveq_codec.models.autoencoder``."""

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


def train_model(name: str, seed: int, args: argparse.Namespace,
                images: list[torch.Tensor]) -> tuple[StudyModel, dict]:
    """Train one quantizer's model; the run's training figures (``codings`` still empty)."""
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
    return model, result
