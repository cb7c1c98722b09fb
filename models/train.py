"""Train a DiVeQ VQ autoencoder: ``python -m diveq_codec.models.train --data DIR --out DIR``.

Seeded, time-boxed (``--time-budget``), resumable (``--resume``), with a checkpoint every
``--checkpoint-every`` seconds so a killed run still leaves something usable. Runs on CPU
or CUDA (bf16 autocast, channels_last, data held on the GPU) and under
``torchrun --nproc_per_node N`` (DDP; gloo on CPU, nccl on CUDA).

The residual quantizer is trained with quantizer dropout: each crop in a batch is
reconstructed from a random prefix of the stages, so one weights file serves every rate.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from diveq_codec.models.autoencoder import VQAutoencoder, with_residual_blocks
from diveq_codec.models.config import QUANTIZERS, ModelConfig
from diveq_codec.models.checkpoint import Run
from diveq_codec.models.data import CropSampler
from diveq_codec.models.weights_file import file_sha256, read_tensors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m diveq_codec.models.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--out", required=True, help="folder for checkpoint.pt and train_log.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init", type=Path, default=None,
                   help="fine-tune: start from these weights (model.pt / checkpoint.pt, or a shipped "
                        ".safetensors); the model flags are then taken from it, warm-up is skipped")
    p.add_argument("--quantizer", choices=QUANTIZERS, default="diveq")
    p.add_argument("--stages", type=int, default=8)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--downsamplings", type=int, default=3)
    p.add_argument("--noise-std", type=float, default=1e-3)
    p.add_argument("--residual-blocks", type=int, default=None,
                   help="residual blocks per transform (default 0, or as many as --init's model has); "
                        "with --init of a model without them, adds identity blocks to it")
    p.add_argument("--loss", choices=LOSSES, default="mse",
                   help="mse: mean squared error over the batch; log-mse: mean over crops of "
                        "log10(MSE), i.e. of -PSNR, so a dB counts the same at every rate and in every crop")
    p.add_argument("--steps", type=int, default=100_000, help="total optimiser steps (schedule length)")
    p.add_argument("--time-budget", type=float, default=float("inf"), help="seconds; stop cleanly and save")
    p.add_argument("--batch", type=int, default=16, help="crops per step and process")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=300, help="steps without quantization before codebook init")
    p.add_argument("--max-side", type=int, default=512, help="downscale training images to this long side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="fp32",
                   help="CUDA only; bf16 autocast diverged with GDN at lr 1e-3 on an H100 (loss → 1e23)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    return p.parse_args(argv)


LOSSES = ("mse", "log-mse")
# Floor under a crop's MSE in log-mse (50 dB): a flat crop cannot dominate the batch.
LOG_MSE_FLOOR = 1e-5


def training_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, plain batch MSE for the log) of a batch of reconstructions.

    Uniform quantizer dropout with plain MSE lets the coarse prefixes dominate: their errors
    are several times those of the full depth, so the transforms learn mostly for low rates.
    log-mse weights each crop by 1/its MSE, which is what the mean per-image PSNR rewards.
    """
    per_crop = torch.mean((x_hat.float() - x.float()) ** 2, dim=(1, 2, 3))
    mse = per_crop.mean()
    if kind == "mse":
        return mse, mse
    if kind == "log-mse":
        return torch.log10(per_crop + LOG_MSE_FLOOR).mean(), mse
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")


def learning_rate(step: int, total: int, base: float, time_fraction: float = 0.0) -> float:
    """Linear warm-up over 200 steps, then cosine decay to 5 % of the base rate.

    Progress is the further of steps done and time budget used, so a time-boxed run
    finishes its decay when the budget ends, whatever the machine's speed.
    """
    if step < 200:
        return base * (step + 1) / 200
    progress = min(1.0, max((step - 200) / max(1, total - 200), time_fraction))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, total: int, base: float, elapsed: float,
                      budget: float) -> None:
    """Every group's rate at this step, ``elapsed`` of ``budget`` seconds gone (see learning_rate)."""
    time_fraction = elapsed / budget if math.isfinite(budget) else 0.0
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, total, base, time_fraction)


def optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> bool:
    """One step on ``loss``; False (and nothing changed) if the loss is not finite."""
    if not torch.isfinite(loss):
        print(f"non-finite loss at step {step}; stopping", file=sys.stderr)
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return True


def psnr_from_mse(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class TrainLog:
    """The periodic training record: every ``every`` steps, the mean loss, MSE and PSNR of the
    steps since the last record, with images/s and the elapsed time (including the runs before
    a resume), as one JSON line on stderr and in OUT/train_log.jsonl. A loop adds its own
    fields (the learning rate, codebook usage) when it writes."""

    def __init__(self, path: Path, every: int, elapsed_before: float) -> None:
        self.file = path.open("a")
        self.every = every
        self.elapsed_before = elapsed_before
        self.start = time.monotonic()
        self._reset(self.start)

    def _reset(self, now: float) -> None:
        self.loss = self.mse = 0.0
        self.steps = self.images = 0
        self.since = now

    def add(self, loss: float, mse: float, images: int) -> None:
        self.loss, self.mse = self.loss + loss, self.mse + mse
        self.steps, self.images = self.steps + 1, self.images + images

    def due(self, step: int) -> bool:
        """Whether a record is due after ``step`` (so that its fields need computing)."""
        return step % self.every == 0 and self.steps > 0

    def write(self, step: int, **fields: object) -> None:
        now = time.monotonic()
        record = {"step": step, "elapsed_s": round(self.elapsed_before + now - self.start, 1),
                  "loss": self.loss / self.steps, "mse": self.mse / self.steps,
                  "psnr": psnr_from_mse(self.mse / self.steps), **fields,
                  "images_per_s": round(self.images / max(now - self.since, 1e-9), 1)}
        print(json.dumps(record), file=sys.stderr, flush=True)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self._reset(now)

    def close(self) -> None:
        self.file.close()


def load_initial_weights(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, state dict, provenance) from a training checkpoint or a shipped safetensors file."""
    if path.suffix == ".safetensors":
        # The entropy tables belong to the coder, not to the network being trained.
        config, tensors = read_tensors(path)
        network = VQAutoencoder(config).state_dict().keys()
        return config, {k: v for k, v in tensors.items() if k in network}, {"path": str(path), "sha256": file_sha256(path)}
    state = torch.load(path, map_location="cpu", weights_only=True)
    provenance = {"path": str(path), "sha256": file_sha256(path), "steps": int(state["step"]),
                  "wall_time_s": round(float(state["elapsed_s"]), 1), "images_seen": int(state["images_seen"]),
                  "device": state.get("device", "unknown")}
    return ModelConfig.from_dict(state["config"]), state["model"], provenance


def setup_distributed(device: str) -> tuple[int, int]:
    """(rank, world size); starts a process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), world


def shutdown_distributed() -> None:
    """Tear the process group down only once every rank is done (rank 0 saves the checkpoint
    while the others would already be leaving), and after the DDP wrapper and its pending
    gloo work are gone: a gloo work object still alive when the interpreter finalises, or a
    peer that closes its sockets mid-operation, aborts the process (SIGABRT) even though the
    training itself finished."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def sync_quantizer(model: VQAutoencoder, optimizer: torch.optim.Optimizer, world: int) -> None:
    """Codebook init and dead-code replacement mutate weights (and reset Adam rows) outside
    the optimiser, on rank 0 only; its codebooks and their Adam moments are made everyone's
    so the replicas stay identical."""
    if world == 1:
        return
    for param in model.quantizer.parameters():
        dist.broadcast(param.data, src=0)
        for moment in optimizer.state.get(param, {}).values():
            if torch.is_tensor(moment) and moment.dim() > 0:
                dist.broadcast(moment, src=0)


def starting_point(args: argparse.Namespace, ckpt_path: Path) -> tuple[ModelConfig, dict | None, dict | None, dict | None]:
    """(config, checkpoint to resume, initial weights, their provenance): of the flags, --resume or --init."""
    config = ModelConfig(channels=args.channels, latent_dim=args.latent_dim, downsamplings=args.downsamplings,
                         quantizer=args.quantizer, num_stages=args.stages, num_codes=args.codes,
                         noise_std=args.noise_std, residual_blocks=args.residual_blocks or 0)
    if config.quantizer.startswith("sf-"):
        config = replace(config, num_stages=1)
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        return ModelConfig.from_dict(state["config"]), state, None, state.get("init_from")
    if args.init is None:
        return config, None, None, None
    config, initial, init_from = load_initial_weights(args.init)
    if args.residual_blocks is not None and args.residual_blocks != config.residual_blocks:
        try:
            config, initial = with_residual_blocks(config, initial, args.residual_blocks)
        except ValueError as exc:
            raise SystemExit(f"--residual-blocks {args.residual_blocks} with --init {args.init}: {exc}") from None
        init_from["grown_residual_blocks"] = args.residual_blocks
    return config, None, initial, init_from


def build_model(config: ModelConfig, initial: dict | None, init_path: Path | None, device: str) -> VQAutoencoder:
    """The network on ``device`` (channels_last on CUDA), with the --init weights if any."""
    model = VQAutoencoder(config).to(device)
    if initial is not None:
        model.load_state_dict(initial)
        print(f"initialised from {init_path}", file=sys.stderr)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # every batch has the same shape
    return model


def train(run: Run, trainer: torch.nn.Module, sampler: CropSampler, log: TrainLog | None,
          args: argparse.Namespace, rank: int, world: int) -> bool:
    """The training loop, to --steps or the time budget; False if the loss stopped being finite."""
    model, optimizer, device, config = run.model, run.optimizer, run.device, run.model.config
    # A fine-tuned model already has trained codebooks: no plain-autoencoder warm-up.
    warmup_steps = 0 if run.init_from is not None else args.warmup_steps
    residual_stages = model.num_stages if config.quantizer in ("diveq", "diveq-detach") and config.num_stages > 1 else 0
    run.begin()
    model.train()
    while run.step < args.steps:
        # Every rank must take the same decision to stop, or DDP would hang.
        stop = torch.tensor(float(time.monotonic() - run.start >= args.time_budget))
        if world > 1:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            break
        set_learning_rate(optimizer, run.step, args.steps, args.lr, time.monotonic() - run.start, args.time_budget)
        x = sampler.batch(args.batch)
        if device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        quantize = run.step >= warmup_steps
        if run.step == warmup_steps and run.init_from is None:
            # Warm-up trains a plain autoencoder so the codebooks are seeded from latents
            # that already mean something, not from a random encoder.
            with torch.no_grad():
                model.quantizer.init_from_data(model.to_vectors(model.analysis(x)).float())
            sync_quantizer(model, optimizer, world)
        active = None
        if quantize and residual_stages:
            active = torch.randint(1, residual_stages + 1, (x.shape[0],), generator=run.generator).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda" and args.precision == "bf16"):
            x_hat, q = trainer(x, active, quantize)
            loss, mse = training_loss(x_hat, x, args.loss)
        if not optimiser_step(optimizer, loss, run.step):
            return False
        replaced = model.quantizer.replace_dead_codes(optimizer) if quantize and rank == 0 else 0
        if world > 1 and quantize:
            flag = torch.tensor(float(replaced))
            dist.broadcast(flag, src=0)
            if flag.item():
                sync_quantizer(model, optimizer, world)
        run.step += 1
        run.images_seen += x.shape[0] * world
        if log is not None:
            log.add(loss.item(), mse.item(), x.shape[0] * world)
            if log.due(run.step):
                log.write(run.step, perplexity=[round(p, 1) for p in q.perplexities] if q is not None else [],
                          replaced=replaced, lr=optimizer.param_groups[0]["lr"])
        if rank == 0:
            run.save_when_due(args.checkpoint_every)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    rank, world = setup_distributed(device)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1000 * rank)  # each rank sees other crops
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"

    config, state, initial, init_from = starting_point(args, ckpt_path)
    model = build_model(config, initial, args.init, device)
    run = Run(ckpt_path, model, torch.optim.Adam(model.parameters(), lr=args.lr), generator, device, init_from)
    if state is not None:
        run.resume(state, rank)
    # The codebooks sit idle during warm-up, hence find_unused_parameters.
    trainer = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    sampler = CropSampler.from_folder(args.data, args.crop, generator, max_side=args.max_side, device=device)
    if rank == 0:
        print(f"{len(sampler.images)} training images, device {device}, {world} process(es), "
              f"config {config.to_dict()}", file=sys.stderr)
    log = TrainLog(out / "train_log.jsonl", args.log_every, run.elapsed_before) if rank == 0 else None
    if not train(run, trainer, sampler, log, args, rank, world):
        return 1
    if log is not None:
        log.close()
        run.save()
        print(f"saved {ckpt_path} at step {run.step}", file=sys.stderr)
    if world > 1:
        del trainer
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
