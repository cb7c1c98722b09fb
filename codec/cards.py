"""The model cards: which models are installed and the rate points they offer.

Each model is ``weights/<name>.safetensors`` (tensors + the entropy tables) beside
``weights/<name>.json`` (its card). Reading cards needs only the standard library, so the
command line lists rate points and checks ``-q`` without loading numpy or PyTorch; loading
and verifying the weights themselves is codec/zoo.py's job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from diveq_codec.codec.errors import WeightsError
from diveq_codec.codec.card_schema import check_card, load_card_data

WEIGHTS_DIR_ENV = "DIVEQ_WEIGHTS_DIR"


def weights_dir() -> Path:
    """The shipped weights folder (works from a checkout, an editable install and a wheel).

    ``DIVEQ_WEIGHTS_DIR`` points elsewhere, e.g. at freshly exported models.
    """
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("diveq_codec.weights")))


@dataclass(frozen=True)
class RatePoint:
    quality: int
    model_name: str
    model_id: int
    stages: int
    kodak_bpp: float | None
    kodak_psnr: float | None
    # λ of the encoder's entropy-constrained assignment (squared latent distance per bit of
    # the static tables); 0 picks the nearest codewords. Only the encoder reads it.
    rate_weight: float = 0.0
    # The quantiser step of a DCT layer on top (codec/dct_layer.py), None for a
    # point the network codes alone. The layer's own header carries it for the decoder.
    layer_step: float | None = None
    # λ of the static tables' search on its own, where the index model's rounds do not run
    # (effort 3's final search, images too large for the rounds): rate_weight was scaled
    # down to keep the PSNR with the rounds (docs/encoder.md). None: rate_weight.
    static_rate_weight: float | None = None

    def search_weight(self, rounds: bool) -> float:
        """λ for a search with the index model's rounds after it (``rounds``) or without."""
        if rounds or self.static_rate_weight is None:
            return self.rate_weight
        return self.static_rate_weight


@dataclass(frozen=True)
class Card:
    name: str
    model_id: int
    file: str
    sha256: str
    data: dict[str, Any]

    @property
    def weights_id(self) -> bytes:
        return bytes.fromhex(self.sha256)[:8]


def read_card(path: Path) -> Card:
    """A card, checked field by field (codec/card_schema.py): a bad one is exit 4, one line."""
    data = load_card_data(path)
    check_card(path, data)
    return Card(data["name"], data["model_id"], data["file"], data["sha256"], data)


def list_cards() -> list[Card]:
    folder = weights_dir()
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} is missing")
    return sorted((read_card(p) for p in folder.glob("*.json")), key=lambda c: c.model_id)


def card_rate_points(card: Card) -> list[RatePoint]:
    """One card's rate points."""
    # read_card has checked every field, so the values are the right types and in range.
    return [RatePoint(rp["quality"], card.name, card.model_id, rp["stages"], rp.get("kodak_bpp"),
                      rp.get("kodak_psnr"), float(rp.get("rate_weight", 0.0)),
                      None if rp.get("layer_step") is None else float(rp["layer_step"]),
                      None if rp.get("static_rate_weight") is None else float(rp["static_rate_weight"]))
            for rp in card.data["rate_points"]]


def _zoo_points(cards: list[Card]) -> list[RatePoint]:
    return sorted((point for card in cards for point in card_rate_points(card)), key=lambda p: p.quality)


def rate_points() -> list[RatePoint]:
    return _zoo_points(list_cards())


def network_rate_points() -> list[RatePoint]:
    """The rate points the network codes alone (no DCT layer): what the probes of the
    network's own choices (λ, beam, refinement) measure."""
    return [point for point in rate_points() if point.layer_step is None]


def resolve_quality(quality: int | None) -> RatePoint:
    """The rate point for ``-q``; None picks the default: the quality a card names as its
    ``default_quality``, else the middle of the zoo."""
    cards = list_cards()
    points = _zoo_points(cards)
    if not points:
        raise WeightsError(f"no models found in {weights_dir()}")
    if quality is None:
        defaults = [card.data["default_quality"] for card in cards if "default_quality" in card.data]
        if not defaults:
            return points[(len(points) - 1) // 2]
        quality = defaults[0]  # check_card refused a card whose default is not one of its points
    for point in points:
        if point.quality == quality:
            return point
    # An unknown quality is a usage error (exit 2), not a missing-weights one.
    raise ValueError(f"quality {quality} is not available; choose from {[p.quality for p in points]}")


def card_for_model_id(model_id: int) -> Card:
    for card in list_cards():
        if card.model_id == model_id:
            return card
    raise WeightsError(f"this file needs model {model_id}, which is not installed (have: "
                       f"{[c.model_id for c in list_cards()]})")
