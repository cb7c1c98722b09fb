"""Rate–distortion curves: ours and the anchors' from the per-image rows, published ones
from JSON files, and CompressAI's results schema both ways."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diveq_codec.codec.errors import InputError
from diveq_codec.codec.evaluation.output_files import finite_or_none


@dataclass
class Curve:
    key: str
    name: str
    kind: str  # "ours", "local" (measured here) or "published"
    bpp: list[float]
    psnr: list[float]
    ms_ssim: list[float] | None = None
    source: str = ""


def summarize(rows: Iterable[dict[str, Any]], codec: str, images: Sequence[str]) -> dict[str, list[Any]] | None:
    """Per-quality means over ``images`` (only qualities measured on all of them), by bpp."""
    wanted = set(images)
    by_quality: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["codec"] == codec and r["image"] in wanted:
            by_quality.setdefault(r["quality"], {})[r["image"]] = r
    points = []
    for quality, per_image in by_quality.items():
        if len(per_image) != len(wanted):
            continue
        rs = list(per_image.values())
        means = {column: float(np.mean([r[column] for r in rs]))
                 for column in ("bpp", "psnr_rgb", "ms_ssim_rgb", "encode_s", "decode_s")}
        points.append({"quality": quality, "bpp": means["bpp"], "psnr-rgb": means["psnr_rgb"],
                       "ms-ssim-rgb": means["ms_ssim_rgb"], "encoding_time": means["encode_s"],
                       "decoding_time": means["decode_s"]})
    if not points:
        return None
    points.sort(key=lambda p: (p["bpp"], p["quality"]))
    return {k: [p[k] for p in points] for k in points[0]}


def results_json(name: str, description: str, summary: dict[str, list[Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """CompressAI's results schema (non-finite values, e.g. NaN MS-SSIM, become null)."""
    results = {k: summary[k] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")}
    return finite_or_none({"name": name, "description": description, "results": results,
                           "meta": {"quality": summary["quality"], **meta}})


def _floats(values: Any) -> list[float] | None:
    if not isinstance(values, list) or not values:
        return None
    try:
        return [math.nan if v is None else float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _curve_dicts(obj: Any, trail: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every dict holding a "bpp" list, with the keys leading to it (at most 4 levels deep)."""
    if not isinstance(obj, dict) or len(trail) > 4:
        return
    if isinstance(obj.get("bpp"), list):
        yield trail, obj
        return
    for key, value in obj.items():
        if isinstance(value, dict):
            yield from _curve_dicts(value, (*trail, str(key)))


def _published_curves(path: Path, data: Any, dataset: str | None) -> list[Curve]:
    """The curves of one published file's parsed JSON (see :func:`load_published`)."""
    entries = list(_curve_dicts(data, ()))
    if dataset and any(dataset.lower() in (t.lower() for t in trail) for trail, _ in entries):
        entries = [(trail, e) for trail, e in entries if dataset.lower() in (t.lower() for t in trail)]
    title = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else None
    curves = []
    for trail, entry in entries:
        bpp = _floats(entry.get("bpp"))
        psnr = _floats(entry.get("psnr-rgb", entry.get("psnr")))
        if not (bpp and psnr and len(bpp) == len(psnr)):
            continue
        msssim = _floats(entry.get("ms-ssim-rgb", entry.get("ms-ssim")))
        where = [t for t in trail if t != "results"]
        if title:
            name = f"{title} [{'/'.join(where)}]" if where else title
        else:
            name = "/".join(where) or path.stem
        curves.append(Curve(":".join([path.stem, *where]), name, "published", bpp, psnr,
                            msssim if msssim and len(msssim) == len(bpp) else None, path.name))
    return curves


def load_published(folder: Path, dataset: str | None = None) -> tuple[list[Curve], list[str]]:
    """Published curves from ``folder``/*.json: CompressAI's results schema, the
    ``{codec: {"bpp": [...], "psnr": [...]}}`` schema of deepmind-c3-baselines.json, or any
    nesting of such dicts (e.g. ``results.kodak.large`` in paper-tcm2023_mse.json).

    When a file's curves are grouped by dataset and one group is named ``dataset`` (the
    evaluated folder's name, e.g. "kodak"), only that group is kept. Returns the curves and
    a note for each file skipped.
    """
    if not folder.is_dir():
        raise InputError(f"--published {folder}: no such directory")
    curves: list[Curve] = []
    notes: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            notes.append(f"published {path.name} skipped: unreadable ({exc})")
            continue
        found = _published_curves(path, data, dataset)
        if not found:
            notes.append(f"published {path.name} skipped: no bpp/PSNR curve in a known schema")
        curves += found
    return curves, notes
