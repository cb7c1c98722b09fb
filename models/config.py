"""Model configuration: everything needed to rebuild a model from its weights file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

QUANTIZERS = ("diveq", "diveq-detach", "sf-diveq", "sf-diveq-detach")
# Bounds far beyond any model this project trains, so that a hostile config cannot ask for a
# network of many gigabytes before its tensors are compared with it.
BOUNDS = {"channels": (1, 1024), "latent_dim": (1, 1024), "downsamplings": (1, 6), "num_stages": (1, 64),
          "num_codes": (2, 1 << 16), "sf_t_bits": (0, 8), "residual_blocks": (0, 16)}


@dataclass(frozen=True)
class ModelConfig:
    channels: int = 64
    latent_dim: int = 64
    downsamplings: int = 3  # stride = 2**downsamplings
    quantizer: str = "diveq"
    num_stages: int = 8  # residual stages (DiVeQ family); SF-DiVeQ uses one
    num_codes: int = 256
    noise_std: float = 1e-3
    sf_t_bits: int = 2
    # Residual blocks at the latent resolution, in each transform (0: the original small model).
    residual_blocks: int = 0

    @property
    def stride(self) -> int:
        return 2**self.downsamplings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        config = cls(**data)
        if config.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {config.quantizer!r}; choose from {QUANTIZERS}")
        for name, (low, high) in BOUNDS.items():
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"config {name} must be a whole number from {low} to {high}, got {value!r:.20}")
        if isinstance(config.noise_std, bool) or not isinstance(config.noise_std, (int, float)):
            raise ValueError(f"config noise_std must be a number, got {config.noise_std!r:.20}")
        return config
