"""Model configuration: everything needed to rebuild a model from its weights file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

QUANTIZERS = ("diveq", "diveq-detach", "sf-diveq", "sf-diveq-detach")


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
        return config
