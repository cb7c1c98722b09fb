"""A model card checked field by field before anything uses it.

Cards are untrusted input (a user's own model goes through the same loader as the shipped
one), so the size, the nesting and every field the codec reads are checked here, and any
failure is one line naming the file and the field (exit 4). Standard library only, so the
command line reads cards without numpy or PyTorch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from diveq_codec.codec.errors import WeightsError
from diveq_codec.codec.limits import layer_step_is_valid

MAX_CARD_BYTES = 1 << 20  # the shipped card is ~16 KB
MAX_NESTING = 64  # the shipped card nests 21 deep (its training history); json itself recurses
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WEIGHTS_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.safetensors")


class CardError(WeightsError):
    """One field of one card is wrong."""

    def __init__(self, path: Path, field: str, problem: str) -> None:
        super().__init__(f"model card {path.name}: {field}: {problem}")


def _nesting(value: Any) -> int:
    """How deep lists and dicts nest, counted without recursion (a hostile card may nest deeply)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_NESTING:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _integer(path: Path, field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CardError(path, field, f"must be a whole number, got {type(value).__name__}")
    if not low <= value <= high:
        raise CardError(path, field, f"must be from {low} to {high}, got {value}")
    return value


def _number(path: Path, field: str, value: Any, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CardError(path, field, f"must be a finite number, got {value!r:.40}")
    return float(value)


def _text(path: Path, field: str, value: Any, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise CardError(path, field, "must be a non-empty string of at most 200 characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise CardError(path, field, f"{value!r:.60} is not a valid value")
    return value


def load_card_data(path: Path) -> dict[str, Any]:
    """The card's JSON object after the checks that protect the parser itself."""
    try:
        size = path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise CardError(path, "file", f"{size:,} bytes is over the {MAX_CARD_BYTES:,}-byte limit")
        data = json.loads(path.read_bytes())
    except WeightsError:
        raise
    except RecursionError:
        raise CardError(path, "file", f"nests deeper than {MAX_NESTING} levels") from None
    except (OSError, ValueError) as exc:
        raise CardError(path, "file", f"is not readable JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(data, dict):
        raise CardError(path, "file", f"must hold a JSON object, not {type(data).__name__}")
    if _nesting(data) > MAX_NESTING:
        raise CardError(path, "file", f"nests deeper than {MAX_NESTING} levels")
    return data


def save_card_data(path: Path, data: dict[str, Any]) -> None:
    """Write a card as every release tool does: one-space indents, text as it is (λ, ×), and
    a final newline, so that a tool's rewrite changes only the fields it sets."""
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def check_card(path: Path, data: dict[str, Any]) -> None:
    """Every field the codec reads, checked; CardError on the first that is wrong."""
    for field in ("name", "model_id", "file", "sha256", "rate_points"):
        if field not in data:
            raise CardError(path, field, "is missing")
    _text(path, "name", data["name"])
    _integer(path, "model_id", data["model_id"], 0, 0xFFFF)
    _text(path, "file", data["file"], _WEIGHTS_FILE)
    _text(path, "sha256", data["sha256"], _SHA256)
    points = data["rate_points"]
    if not isinstance(points, list) or not points or len(points) > 255:
        raise CardError(path, "rate_points", "must be a list of 1 to 255 rate points")
    for n, point in enumerate(points):
        _check_rate_point(path, f"rate_points[{n}]", point)
    qualities = [point["quality"] for point in points]
    if len(set(qualities)) != len(qualities):
        raise CardError(path, "rate_points", "lists a quality twice")
    if "default_quality" in data and data["default_quality"] not in qualities:
        raise CardError(path, "default_quality", f"{data['default_quality']!r:.20} is not one of its rate points")


def _check_rate_point(path: Path, where: str, point: Any) -> None:
    if not isinstance(point, dict):
        raise CardError(path, where, f"must be an object, got {type(point).__name__}")
    for field in ("quality", "stages"):
        if field not in point:
            raise CardError(path, f"{where}.{field}", "is missing")
    _integer(path, f"{where}.quality", point["quality"], 1, 255)
    _integer(path, f"{where}.stages", point["stages"], 1, 255)
    for field in ("kodak_bpp", "kodak_psnr"):
        _number(path, f"{where}.{field}", point.get(field), optional=True)
    for field, optional in (("rate_weight", False), ("static_rate_weight", True)):
        weight = _number(path, f"{where}.{field}", point.get(field, None if optional else 0.0), optional)
        if weight is not None and weight < 0:
            raise CardError(path, f"{where}.{field}", f"must be ≥ 0, got {weight}")
    step = _number(path, f"{where}.layer_step", point.get("layer_step"), optional=True)
    if step is not None and not layer_step_is_valid(step):
        raise CardError(path, f"{where}.layer_step", f"{step} is not a whole number of sixteenths from 0.25 up")
