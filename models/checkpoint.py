"""A training run's checkpoints: what they record, when they are written, how a run resumes.

Shared by the network's training (models/train.py) and the synthesis fine-tuning of the
release tooling, so that both write the same resumable files.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diveq_codec.models.autoencoder import VQAutoencoder


def save_checkpoint(path: Path, model: VQAutoencoder, optimizer: torch.optim.Optimizer, step: int,
                    elapsed: float, images_seen: int, generator: torch.Generator, device: str,
                    init_from: dict | None) -> None:
    """Write ``checkpoint.pt`` (resumable) and ``model.pt`` (no optimiser state: a third of
    the size, enough for export and small enough to travel back from a lent GPU)."""
    record = {
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "step": step,
        "elapsed_s": elapsed,
        "images_seen": images_seen,
        "generator": generator.get_state(),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
    }
    if init_from is not None:
        record["init_from"] = init_from
    for target, content in ((path.with_name("model.pt"), record),
                            (path, {**record, "optimizer": optimizer.state_dict()})):
        tmp = target.with_suffix(".tmp")
        torch.save(content, tmp)
        tmp.replace(target)



@dataclass
class Run:
    """A run's progress and what its checkpoints record (``elapsed_before``: seconds before a resume)."""

    ckpt_path: Path
    model: VQAutoencoder
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    device: str
    init_from: dict | None
    step: int = 0
    elapsed_before: float = 0.0
    images_seen: int = 0
    start: float = 0.0
    last_saved: float = 0.0

    def begin(self) -> None:
        self.start = self.last_saved = time.monotonic()

    def save(self) -> None:
        elapsed = self.elapsed_before + time.monotonic() - self.start
        save_checkpoint(self.ckpt_path, self.model, self.optimizer, self.step, elapsed, self.images_seen,
                        self.generator, self.device, self.init_from)
        self.last_saved = time.monotonic()

    def save_when_due(self, every: float) -> None:
        """A checkpoint once ``every`` seconds have passed since the start or the last one."""
        if time.monotonic() - self.last_saved > every:
            self.save()

    def resume(self, state: dict, rank: int = 0) -> None:
        """Continue from checkpoint ``state``: weights, optimiser, counters, rank 0's crop generator."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_before, self.images_seen = state["step"], state["elapsed_s"], state["images_seen"]
        if rank == 0:
            self.generator.set_state(state["generator"])
        print(f"resumed at step {self.step}", file=sys.stderr)
