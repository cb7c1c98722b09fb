"""Training data: a folder of images held in memory, sampled as random crops with flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def list_images(folder: str | Path) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: Path, max_side: int | None) -> torch.Tensor:
    """uint8 tensor (3, H, W); optionally downscaled so the long side is ≤ max_side."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if max_side is not None and max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


class CropSampler:
    """Random crops of a fixed size from images held as uint8 tensors (on any device)."""

    def __init__(self, images: list[torch.Tensor], crop: int, generator: torch.Generator) -> None:
        self.images = [im for im in images if im.shape[1] >= crop and im.shape[2] >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}×{crop}")
        self.crop = crop
        self.generator = generator

    @classmethod
    def from_folder(cls, folder: str | Path, crop: int, generator: torch.Generator, max_side: int | None = None,
                    device: torch.device | str = "cpu") -> "CropSampler":
        paths = list_images(folder)
        if not paths:
            raise FileNotFoundError(f"no images found under {folder}")
        return cls([load_rgb(p, max_side).to(device) for p in paths], crop, generator)

    def batch(self, size: int) -> torch.Tensor:
        """Float batch (size, 3, crop, crop) in [0, 1]."""
        g = self.generator
        picks = torch.randint(0, len(self.images), (size,), generator=g).tolist()
        crops = []
        for i in picks:
            img = self.images[i]
            y = int(torch.randint(0, img.shape[1] - self.crop + 1, (1,), generator=g))
            x = int(torch.randint(0, img.shape[2] - self.crop + 1, (1,), generator=g))
            patch = img[:, y : y + self.crop, x : x + self.crop]
            if bool(torch.randint(0, 2, (1,), generator=g)):
                patch = patch.flip(-1)
            if bool(torch.randint(0, 2, (1,), generator=g)):
                patch = patch.flip(-2)
            crops.append(patch)
        return torch.stack(crops).float().div_(255.0)
