"""An eval folder's ``eval_meta.json``: what its rows were measured with.

Rows are keyed by (codec, quality, image) only, so the folder also records which weights,
entropy coder, image files and rate-point settings they belong to; a run with any of them
changed is refused rather than mixed in (exit code 6, "choose another -o").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diveq_codec.codec import dct_layer
from diveq_codec.codec.cards import RatePoint
from diveq_codec.codec.errors import OutputError

META_NAME = "eval_meta.json"
# Folders written before the DCT layer was named so record its settings as residual_*.
_OLD_LAYER_PREFIX, _LAYER_PREFIX = "residual_", "layer_"


def layer_record(step: float | None) -> dict[str, float]:
    """A DCT-layer point's part of its rate-point record: the step and the encoder's own
    choices (transform, rounding offset, rate–distortion weight): the same step writes other
    files under others."""
    if step is None:
        return {}
    return {"layer_step": step, "layer_transform": dct_layer.WRITTEN_TRANSFORM,
            "layer_rounding": dct_layer.ROUNDING, "layer_rd_weight": dct_layer.RD_WEIGHT}


def rate_point_record(point: RatePoint, searched: dict[str, int]) -> dict[str, Any]:
    """How a rate point is encoded: stages, λ (the static search's, after effort 3's
    refinement), the encoder effort's search settings and the DCT layer's."""
    weight = point.search_weight(rounds="refine_steps" not in searched)
    return {"stages": point.stages, "rate_weight": weight, **searched, **layer_record(point.layer_step)}


def _with_layer_names(record: Any) -> Any:
    if not isinstance(record, dict):
        return record
    return {(_LAYER_PREFIX + k[len(_OLD_LAYER_PREFIX):] if k.startswith(_OLD_LAYER_PREFIX) else k): v
            for k, v in record.items()}


def read_meta(out_dir: Path) -> dict[str, Any]:
    """The folder's meta ({} when there is none), with the DCT layer's keys under their current names."""
    path = out_dir / META_NAME
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise OutputError(f"{path} is unreadable; choose another -o") from None
    if not isinstance(old, dict):
        raise OutputError(f"{path} is unreadable; choose another -o")
    if isinstance(old.get("rate_points"), dict):
        old["rate_points"] = {q: _with_layer_names(r) for q, r in old["rate_points"].items()}
    return old


def _refuse_changed(out_dir: Path, old: dict[str, Any], meta_now: dict[str, Any]) -> None:
    # Our rows are keyed by quality, not by model: with another zoo (a model replaced, added
    # or gone) the same quality may be another model, so any change of the zoo is refused.
    zoo_before, zoo_now = old.get("weights"), meta_now.get("weights", {})
    if zoo_before is not None and zoo_before != zoo_now:
        raise OutputError(f"{out_dir} holds results for other weights (models {zoo_before} vs {zoo_now} now); "
                          f"choose another -o or remove it")
    # The same indices cost other bytes under another entropy coder. Folders whose meta
    # names no coder come from development builds.
    coder_before, coder_now = old.get("coder"), meta_now.get("coder")
    if old and coder_before != coder_now:
        made_by = f"entropy coder {coder_before}" if coder_before is not None else "a development build's coder"
        raise OutputError(f"{out_dir} holds files of {made_by}, and this version writes "
                          f"coder {coder_now}; choose another -o or remove it")
    before = old.get("images", {})
    for key, value in meta_now.get("images", {}).items():
        if key in before and before[key] != value:
            raise OutputError(f"{out_dir} holds results for other image {key} ({before[key]} vs {value} now); "
                              f"choose another -o or remove it")
    # The same weights give other files when a card gives a quality other stages, another
    # rate weight (the encoder's λ) or another DCT layer (layer_record). Folders from
    # before the meta named them are taken as they are.
    before = old.get("rate_points", {})
    for quality, value in meta_now.get("rate_points", {}).items():
        if quality in before and before[quality] != value:
            raise OutputError(f"{out_dir} holds results of quality {quality} encoded otherwise ({before[quality]} vs "
                              f"{value} now); choose another -o or remove it")


def check_meta(out_dir: Path, meta_now: dict[str, Any]) -> dict[str, Any]:
    """Refuse to mix rows of other weights, coder, images or encodings; return the merged meta."""
    old = read_meta(out_dir)
    _refuse_changed(out_dir, old, meta_now)
    merged = {**old, **{k: v for k, v in meta_now.items() if not isinstance(v, dict)}}
    for section in ("weights", "images", "rate_points"):
        merged[section] = {**old.get(section, {}), **meta_now.get(section, {})}
    return merged
