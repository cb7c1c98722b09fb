"""The model zoo: verifying and loading the weights the cards (codec/cards.py) name.

Weights are verified against the card's sha256 before use; the first 8 bytes of that hash
are the weights id written into every file, so a file is never decoded with weights other
than the ones that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from diveq_codec.codec.index_model import TENSOR_PREFIX, IndexModel, from_tensors
from diveq_codec.codec.rate_tables import code_lengths
from diveq_codec.codec.cards import (  # noqa: F401  (re-exported: the zoo's public face)
    Card,
    RatePoint,
    card_for_model_id,
    card_rate_points,
    list_cards,
    network_rate_points,
    rate_points,
    read_card,
    resolve_quality,
    weights_dir,
)
from diveq_codec.codec.errors import WeightsError
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.weights_file import file_sha256, read_tensors
from diveq_codec.models.residual import RateCosts

ENTROPY_TENSOR = "entropy_counts"  # the static tables of the encoder's rate term (codec/rate_tables.py)


@dataclass(frozen=True)
class LoadedModel:
    card: Card
    model: VQAutoencoder
    tables: np.ndarray  # smoothed integer counts (stages, alphabet + 1, alphabet): the rate term's
    index_model: IndexModel | None  # the index coder's probabilities (None: a release in the making)

    def require_index_model(self) -> IndexModel:
        """The index model, which coding needs: weights without one are exit 4."""
        if self.index_model is None:
            raise WeightsError(f"weights file {self.card.file} has no index model ({TENSOR_PREFIX}*), which the "
                               f"format's index coder needs; add one (docs/training.md)")
        return self.index_model

    @cached_property
    def _code_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return code_lengths(self.tables)

    def rate_costs(self, weight: float) -> RateCosts | None:
        """The encoder's rate term at λ = ``weight`` (None at 0: the nearest codewords)."""
        return RateCosts.from_lengths(self._code_lengths, weight, next(self.model.parameters()).device)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def _check_tensors(path: Path, expected: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> None:
    """The stored tensors must be exactly the ones the config's network has, by name, shape and
    dtype; otherwise one line naming the first difference (not PyTorch's state-dict dump)."""
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        which = f"lacks tensor {missing[0]!r}" if missing else f"has an unexpected tensor {unexpected[0]!r:.80}"
        raise WeightsError(f"weights file {path.name} {which} for the network its config describes")
    for name, tensor in expected.items():
        if stored[name].shape != tensor.shape or stored[name].dtype != tensor.dtype:
            raise WeightsError(f"weights file {path.name}: tensor {name!r} is {stored[name].dtype} "
                               f"{tuple(stored[name].shape)}, the config's network needs {tensor.dtype} {tuple(tensor.shape)}")


def read_weights_file(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], np.ndarray, dict[str, np.ndarray]]:
    """(config, network tensors, static tables, index-model tensors) of a weights file, as
    stored: no checks."""
    config, tensors = read_tensors(path)
    tables = tensors.pop(ENTROPY_TENSOR).numpy().astype(np.int64)
    index_tensors = {name: tensors.pop(name).numpy() for name in list(tensors) if name.startswith(TENSOR_PREFIX)}
    return config, tensors, tables, index_tensors


@lru_cache(maxsize=4)
def _load(model_id: int, device: str, folder: str) -> LoadedModel:
    card = card_for_model_id(model_id)
    path = Path(folder) / card.file
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing")
    if file_sha256(path) != card.sha256:
        raise WeightsError(f"weights file {path.name} does not match the sha256 in its card")
    try:
        config, tensors, tables, index_tensors = read_weights_file(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is this file's fault
        raise WeightsError(f"weights file {path.name} cannot be read ({_first_line(exc)})") from None
    try:
        model = VQAutoencoder(config)
    except (ValueError, TypeError, RuntimeError) as exc:  # a config no network can be built from
        raise WeightsError(f"weights file {path.name}: its config describes no valid network ({_first_line(exc)})") from None
    _check_tensors(path, model.state_dict(), tensors)
    model.load_state_dict(tensors)
    alphabet = model.quantizer.alphabet_sizes[0]
    if tables.shape != (model.num_stages, alphabet + 1, alphabet) or (tables < 1).any():
        raise WeightsError(f"entropy tables in {path.name} do not fit the model")
    needed = max((point.stages for point in card_rate_points(card)), default=1)
    index_model = _index_model(path, index_tensors, alphabet, model.num_stages, needed)
    model.eval().to(device)
    if device == "cpu":
        # The image tensor arrives channels-last (a view of the decoded pixels), and so does
        # the synthesis's latent; weights in the same layout spare oneDNN a reorder per
        # convolution: the same floats, 4-5 % faster on Kodak (docs/results.md).
        for transform in (model.analysis, model.synthesis):
            transform.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(card, model, tables, index_model)


def _index_model(path: Path, tensors: dict[str, np.ndarray], alphabet: int, stages: int,
                 needed: int) -> IndexModel | None:
    """The index model of a weights file, checked against the network and the ``needed``
    stages of the card's rate points (exit 4 if it does not fit), or None for weights without
    one (which choose indices but cannot code them)."""
    if not tensors:
        return None
    try:
        index_model = from_tensors(tensors)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise WeightsError(f"weights file {path.name}: index model is invalid ({_first_line(exc)})") from None
    count = len(index_model.stages)
    if index_model.codes != alphabet or index_model.codebooks.shape[0] != count or not needed <= count <= stages:
        raise WeightsError(f"weights file {path.name}: index model of {count} stages and {index_model.codes} "
                           f"codewords does not fit the network ({alphabet}) or its rate points ({needed} stages)")
    return index_model


def load_model(model_id: int, device: str = "cpu") -> LoadedModel:
    return _load(model_id, device, str(weights_dir()))


def clear_model_cache() -> None:
    """Forget the loaded models, so that the next load reads the weights folder again."""
    _load.cache_clear()
