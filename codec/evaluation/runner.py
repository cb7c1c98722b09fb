"""The evaluation engine behind ``diveq-codec eval``: our codec and the classical anchors
on the same images, measured the same way, with CompressAI-compatible results.

Every number comes from real files: our codec goes through ``encode_source`` → bytes →
``decode_detailed`` (the same path as ``diveq-codec encode``/``decode``), the anchors
through Pillow into bytes and back. bpp = bytes × 8 / pixels with every header byte
counted; PSNR-RGB is measured on the 8-bit decoded image and averaged over images (per
image, then the mean, as the published Kodak curves are); MS-SSIM likewise. (An image
with alpha: our file carries the alpha plane losslessly and its bytes count; the anchors
code the RGB planes only. Kodak has none.)

OUTDIR holds:

* ``per_image.csv``: one row per (codec, quality, image), appended and flushed as soon as
  it is measured. Re-running with the same OUTDIR skips the rows already there, so an
  interrupted run resumes where it stopped. ``eval_meta.json`` records which weights,
  entropy coder, image files and rate-point settings (stages, λ) the rows belong to; a
  re-run with any of them changed is refused rather than mixed in.
* ``<codec>.json``: one per codec in CompressAI's results schema, computed from the CSV.
* ``rd.png``: PSNR-RGB and MS-SSIM (dB) against bpp for ours, the anchors and the
  published curves of ``--published``.
* ``bd_rate.md`` / ``bd_rate.json``: Bjøntegaard delta rate of ours against each anchor
  and published curve, "n/a" where the PSNR ranges do not overlap.
* ``matched_bpp.md``: at each of our rate points, our PSNR and MS-SSIM against each anchor
  measured here at the same bpp: where ours is ahead and where behind.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from diveq_codec.codec import container, dct_layer
from diveq_codec.codec.evaluation.anchors import Anchor, Measurement, measure, measure_decoded
from diveq_codec.codec.evaluation.bdrate import bd_rate, psnr_overlap, why_not
from diveq_codec.codec.errors import InputError, OutputError
from diveq_codec.codec.evaluation.msssim import ms_ssim_db

OURS = "diveq"
OURS_NAME = "DiVeQ"
CSV_NAME = "per_image.csv"
META_NAME = "eval_meta.json"
LOCK_NAME = ".eval.lock"
PLOT_NAME = "rd.png"
MATCHED_NAME = "matched_bpp.md"
CSV_FIELDS = ["codec", "quality", "image", "width", "height", "bytes", "bpp", "psnr_rgb", "ms_ssim_rgb",
              "encode_s", "decode_s"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}


# --------------------------------------------------------------------------- options

def parse_qualities(spec: str | None) -> list[int] | None:
    """``-q``: "all" (None) or a comma list of integers such as "1,3,5"."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"-q expects 'all' or a list of integers like 1,3,5, got {spec!r}") from None
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"-q expects 'all' or a list of integers like 1,3,5, got {spec!r}")
    return out


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``folder`` (by extension), sorted by name, at most ``limit``."""
    if not folder.exists():
        raise InputError(f"{folder}: no such directory")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a directory")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return paths[:limit] if limit is not None else paths


@dataclass
class EvalOptions:
    data_dir: Path
    out_dir: Path
    qualities: list[int] | None = None  # None: every rate point of the zoo
    anchors: list[Anchor] = field(default_factory=list)
    published_dir: Path | None = None
    device: str = "auto"
    limit: int | None = None
    effort: int | None = None  # the encoder's (codec.pipeline.EFFORTS); None: the default


# --------------------------------------------------------------------------- the CSV

def _parse_row(row: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return {
            "codec": str(row["codec"]), "quality": int(row["quality"]), "image": str(row["image"]),
            "width": int(row["width"]), "height": int(row["height"]), "bytes": int(row["bytes"]),
            "bpp": float(row["bpp"]), "psnr_rgb": float(row["psnr_rgb"]),
            "ms_ssim_rgb": float(row["ms_ssim_rgb"]), "encode_s": float(row["encode_s"]),
            "decode_s": float(row["decode_s"]),
        }
    except (KeyError, TypeError, ValueError):
        return None


class ResultsCSV:
    """The per-image CSV: read back on start (repairing a torn last line), appended per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self._load()
        else:
            self._rewrite()
        self.done = {(r["codec"], r["quality"], r["image"]) for r in self.rows}

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        torn = bool(raw) and not raw.endswith(b"\n")
        text = raw.decode("utf-8", errors="replace")
        if torn:  # a kill in the middle of a row: drop the partial row
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text))
        if text and reader.fieldnames != CSV_FIELDS:
            raise OutputError(f"{self.path} is not an eval CSV of this version (columns {reader.fieldnames}); "
                              f"choose another -o")
        parsed = [_parse_row(r) for r in reader]
        self.rows = [r for r in parsed if r is not None]
        if torn or len(self.rows) != len(parsed) or not text:
            self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        from diveq_codec.codec.file_io import write_output

        write_output(str(self.path), buf.getvalue().encode(), True)

    def append(self, row: dict[str, Any]) -> None:
        buf = io.StringIO()
        csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n").writerow(row)
        try:
            with self.path.open("a", encoding="utf-8", newline="") as fh:
                fh.write(buf.getvalue())
                fh.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.rows.append(row)
        self.done.add((row["codec"], row["quality"], row["image"]))


def _row(codec: str, quality: int, image: str, width: int, height: int, m: Measurement) -> dict[str, Any]:
    return {"codec": codec, "quality": quality, "image": image, "width": width, "height": height,
            "bytes": m.num_bytes, "bpp": m.bpp, "psnr_rgb": m.psnr, "ms_ssim_rgb": m.ms_ssim,
            "encode_s": m.encode_s, "decode_s": m.decode_s}


# --------------------------------------------------------------------------- curves

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

        def mean(key: str) -> float:
            return float(np.mean([r[key] for r in rs]))

        points.append({"quality": quality, "bpp": mean("bpp"), "psnr-rgb": mean("psnr_rgb"),
                       "ms-ssim-rgb": mean("ms_ssim_rgb"), "encoding_time": mean("encode_s"),
                       "decoding_time": mean("decode_s")})
    if not points:
        return None
    points.sort(key=lambda p: (p["bpp"], p["quality"]))
    return {k: [p[k] for p in points] for k in points[0]}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def results_json(name: str, description: str, summary: dict[str, list[Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """CompressAI's results schema (non-finite values, e.g. NaN MS-SSIM, become null)."""
    results = {k: summary[k] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")}
    return _finite_or_none({"name": name, "description": description, "results": results,
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


def load_published(folder: Path, dataset: str | None = None) -> tuple[list[Curve], list[str]]:
    """Published curves from ``folder``/*.json: CompressAI's results schema, the
    ``{codec: {"bpp": [...], "psnr": [...]}}`` schema of deepmind-c3-baselines.json, or any
    nesting of such dicts (e.g. ``results.kodak.large`` in paper-tcm2023_mse.json).

    When a file's curves are grouped by dataset and one group is named ``dataset`` (the
    evaluated folder's name, e.g. "kodak"), only that group is kept.
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
        found = 0
        entries = list(_curve_dicts(data, ()))
        if dataset and any(dataset.lower() in (t.lower() for t in trail) for trail, _ in entries):
            entries = [(trail, e) for trail, e in entries if dataset.lower() in (t.lower() for t in trail)]
        title = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else None
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
            found += 1
        if not found:
            notes.append(f"published {path.name} skipped: no bpp/PSNR curve in a known schema")
    return curves, notes


# --------------------------------------------------------------------------- BD-rate

def bd_table(ours: Curve, references: Sequence[Curve]) -> list[dict[str, Any]]:
    rows = []
    for ref in references:
        reason = why_not(ref.bpp, ref.psnr, ours.bpp, ours.psnr)
        value = None if reason else bd_rate(ref.bpp, ref.psnr, ours.bpp, ours.psnr)
        if value is not None and not math.isfinite(value):
            value, reason = None, "fit failed"
        overlap = psnr_overlap(ref.psnr, ours.psnr)
        rows.append({"reference": ref.name, "key": ref.key, "kind": ref.kind, "source": ref.source,
                     "bd_rate_percent": value, "psnr_overlap_db": list(overlap) if overlap else None,
                     "note": reason})
    return rows


def bd_markdown(test_name: str, rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"BD-rate of {test_name} against each reference (PSNR-RGB; Bjøntegaard cubic fit over the "
             "shared PSNR range; negative = fewer bits for the same PSNR)", "",
             "| reference | source | BD-rate | PSNR overlap (dB) |", "| --- | --- | ---: | --- |"]
    for r in rows:
        value = f"{r['bd_rate_percent']:+.1f} %" if r["bd_rate_percent"] is not None else "n/a"
        overlap = (f"{r['psnr_overlap_db'][0]:.2f}–{r['psnr_overlap_db'][1]:.2f}"
                   if r["psnr_overlap_db"] else "none")
        source = "measured here" if r["kind"] == "local" else f"published ({r['source']})"
        lines.append(f"| {r['reference']} | {source} | {value} | {overlap} |")
    return "\n".join(lines) + "\n"


def _interpolator(bpp: Sequence[float], values: Sequence[float] | None) -> Callable[[float], float | None]:
    """``values`` at a given bpp, interpolated linearly in log bpp; None outside the curve's
    bpp range (no extrapolation) or where the curve has no such values."""
    if values is None:
        return lambda _: None
    b = np.asarray(bpp, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(b) & np.isfinite(v) & (b > 0)
    order = np.argsort(b[keep])
    b, v = b[keep][order], v[keep][order]

    def at(rate: float) -> float | None:
        if b.size < 2 or not b[0] <= rate <= b[-1]:
            return None
        return float(np.interp(np.log(rate), np.log(b), v))
    return at


def psnr_gap(local: Curve, published: Curve) -> dict[str, Any] | None:
    """Local minus published PSNR at the local points' bpp (published curve interpolated
    linearly in log bpp, only inside its bpp range): mean and largest absolute gap."""
    published_at = _interpolator(published.bpp, published.psnr)
    gaps = []
    for b, p in zip(local.bpp, local.psnr):
        there = published_at(b)
        if there is not None and math.isfinite(p):
            gaps.append(p - there)
    if not gaps:
        return None
    return {"local": local.name, "published": published.source, "points": len(gaps),
            "mean_gap_db": float(np.mean(gaps)), "max_abs_gap_db": float(np.max(np.abs(gaps)))}


def _ms_ssim_db(value: float | None) -> float | None:
    return None if value is None or not value < 1 else -10 * math.log10(1 - value)


def matched_rate_rows(ours: Curve, reference: Curve) -> list[dict[str, Any]]:
    """At each of our rate points inside the reference's bpp range: both PSNRs and both
    MS-SSIMs (in dB), the reference's interpolated linearly in log bpp."""
    psnr_at = _interpolator(reference.bpp, reference.psnr)
    ms_ssim_at = _interpolator(reference.bpp, reference.ms_ssim)
    rows = []
    for i, rate in enumerate(ours.bpp):
        their_psnr = psnr_at(rate)
        if their_psnr is None:
            continue
        our_ms = _ms_ssim_db(ours.ms_ssim[i]) if ours.ms_ssim else None
        rows.append({"bpp": rate, "psnr": ours.psnr[i], "reference_psnr": their_psnr,
                     "ms_ssim_db": our_ms, "reference_ms_ssim_db": _ms_ssim_db(ms_ssim_at(rate))})
    return rows


def matched_markdown(test_name: str, ours: Curve, references: Sequence[Curve]) -> str:
    """One table per reference: where, rate point by rate point, ours is ahead or behind."""
    def cell(value: float | None, signed: bool = False) -> str:
        return "n/a" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")

    lines = [f"{test_name} against each codec measured here, at {test_name}'s own rate points (the other "
             "curve interpolated linearly in log bpp, never extrapolated); MS-SSIM as -10·log10(1 − MS-SSIM)"]
    for ref in references:
        lines += ["", f"### {ref.name}", "",
                  f"| bpp | PSNR {test_name} | PSNR {ref.name} | Δ dB | MS-SSIM dB {test_name} | "
                  f"MS-SSIM dB {ref.name} | Δ dB |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows = matched_rate_rows(ours, ref)
        if not rows:
            lines.append("| no rate point of ours inside its bpp range | | | | | | |")
        for r in rows:
            ms_delta = (None if r["ms_ssim_db"] is None or r["reference_ms_ssim_db"] is None
                        else r["ms_ssim_db"] - r["reference_ms_ssim_db"])
            lines.append(f"| {r['bpp']:.4f} | {cell(r['psnr'])} | {cell(r['reference_psnr'])} | "
                         f"{cell(r['psnr'] - r['reference_psnr'], True)} | {cell(r['ms_ssim_db'])} | "
                         f"{cell(r['reference_ms_ssim_db'])} | {cell(ms_delta, True)} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot

def plot_rd(path: Path, curves: Sequence[Curve], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen: set[str] = set()
    unique = []  # one curve per name (a CompressAI file, with MS-SSIM, before a copy in another file)
    for c in sorted(curves, key=lambda c: (c.kind != "ours", c.kind != "local", c.ms_ssim is None)):
        if c.name.lower() not in seen:
            seen.add(c.name.lower())
            unique.append(c)
    curves = unique
    ours = [c for c in curves if c.kind == "ours"]
    top = max((max(c.bpp) for c in ours), default=1.0)
    xmax = max(1.0, 1.6 * top)
    palette = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(16, 7))
    panels = (("psnr", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM-RGB (dB)"))
    for ax, (metric, label) in zip(axes, panels):
        lows, highs = [], []
        for i, c in enumerate(curves):
            ys = c.psnr if metric == "psnr" else ([ms_ssim_db(v) for v in c.ms_ssim] if c.ms_ssim else None)
            if ys is None:
                continue
            pts = sorted((b, y) for b, y in zip(c.bpp, ys) if math.isfinite(b) and math.isfinite(y))
            if not pts:
                continue
            xs, vs = zip(*pts)
            style: dict[str, Any]
            if c.kind == "ours":
                style = {"color": "black", "linewidth": 2.5, "marker": "o", "markersize": 5, "zorder": 10}
            elif c.kind == "local":
                style = {"color": palette(i % 20), "linewidth": 1.6, "marker": ".", "markersize": 6}
            else:
                style = {"color": palette(i % 20), "linewidth": 1.0, "alpha": 0.8,
                         "linestyle": ("--", ":", "-.")[(i // 20) % 3]}
            tag = {"ours": "", "local": " (measured here)", "published": " (published)"}[c.kind]
            ax.plot(xs, vs, label=f"{c.name}{tag}", **style)
            visible = [v for x, v in pts if x <= xmax]
            if visible:
                lows.append(min(visible))
                highs.append(max(visible))
        ax.set_xlim(0, xmax)
        if lows:
            ax.set_ylim(min(lows) - 0.5, max(highs) + 0.5)
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=6.5, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.8, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _write(path, buf.getvalue())


# --------------------------------------------------------------------------- running

def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diveq-codec")
    except PackageNotFoundError:
        return "(not installed)"


def _write(path: Path, data: bytes) -> None:
    from diveq_codec.codec.file_io import write_output

    write_output(str(path), data, True)


def _write_json(path: Path, obj: Any) -> None:
    _write(path, (json.dumps(_finite_or_none(obj), indent=1) + "\n").encode())


class Progress:
    """One counter line on stderr (redrawn with \\r on a terminal, every 10 % otherwise)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.count, self.start = max(total, 1), 0, time.monotonic()
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.measured = 0
        self._last_decile = -1

    def step(self, label: str, measured: bool) -> None:
        self.count += 1
        self.measured += int(measured)
        elapsed = time.monotonic() - self.start
        rate = elapsed / self.measured if self.measured else 0.0
        eta = rate * (self.total - self.count)
        text = (f"eval [{self.count:>{len(str(self.total))}}/{self.total}] {100 * self.count / self.total:5.1f}% "
                f"{label}  elapsed {elapsed:5.0f}s  eta {eta:5.0f}s")
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
        else:
            decile = 10 * self.count // self.total
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _image_key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _layer_record(step: float | None) -> dict[str, float]:
    """A layer point's part of its rate-point record: the step and the encoder's own choices
    (transform, rounding offset, rate–distortion weight): the same step writes other files
    under others."""
    if step is None:
        return {}
    return {"layer_step": step, "layer_transform": dct_layer.WRITTEN_TRANSFORM,
            "layer_rounding": dct_layer.ROUNDING, "layer_rd_weight": dct_layer.RD_WEIGHT}


def _check_meta(out_dir: Path, meta_now: dict[str, Any]) -> dict[str, Any]:
    """Refuse to mix rows of other weights or other image files; return the merged meta."""
    path = out_dir / META_NAME
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise OutputError(f"{path} is unreadable; choose another -o") from None
    # Our rows are keyed by quality, not by model: with another zoo (a model replaced, added
    # or gone) the same quality may be another model, so any change of the zoo is refused.
    zoo_before, zoo_now = old.get("weights"), meta_now.get("weights", {})
    if zoo_before is not None and zoo_before != zoo_now:
        raise OutputError(f"{out_dir} holds results for other weights (models {zoo_before} vs {zoo_now} now); "
                          f"choose another -o or remove it")
    # The same indices cost other bytes under another entropy coder. Folders from before
    # the meta named the coder hold coder 1's files.
    coder_before, coder_now = old.get("coder", container.CODER_CONSTRICTION_RANGE), meta_now.get("coder")
    if old and coder_before != coder_now:
        raise OutputError(f"{out_dir} holds files of entropy coder {coder_before}, and this version writes "
                          f"coder {coder_now}; choose another -o or remove it")
    before = old.get("images", {})
    for key, value in meta_now.get("images", {}).items():
        if key in before and before[key] != value:
            raise OutputError(f"{out_dir} holds results for other image {key} ({before[key]} vs {value} now); "
                              f"choose another -o or remove it")
    # The same weights give other files when a card gives a quality other stages, another
    # rate weight (the encoder's λ) or another DCT layer (_layer_record). Folders from
    # before the meta named them are taken as they are.
    before = old.get("rate_points", {})
    for quality, value in meta_now.get("rate_points", {}).items():
        if quality in before and before[quality] != value:
            raise OutputError(f"{out_dir} holds results of quality {quality} encoded otherwise ({before[quality]} vs "
                              f"{value} now); choose another -o or remove it")
    merged = {**old, **{k: v for k, v in meta_now.items() if not isinstance(v, dict)}}
    for section in ("weights", "images", "rate_points"):
        merged[section] = {**old.get(section, {}), **meta_now.get(section, {})}
    return merged


@dataclass
class EvalResult:
    curves: list[Curve]
    bd_rows: list[dict[str, Any]]
    anchor_checks: list[dict[str, Any]]
    measured: int
    skipped: int
    files: list[Path]


def run_eval(opts: EvalOptions, say: Callable[[str], None] | None = None,
             progress_stream: TextIO | None = None) -> EvalResult:
    """Measure, write the CSV incrementally, then summaries, plot and BD-rate table."""
    from diveq_codec.codec.pipeline import resolve_device
    from diveq_codec.codec.zoo import rate_points, resolve_quality

    say = say or (lambda message: print(message, file=sys.stderr))
    device = resolve_device(opts.device)
    points = [resolve_quality(q) for q in opts.qualities] if opts.qualities else rate_points()
    if not points:
        resolve_quality(None)  # raises the WeightsError that says where models were looked for
    points = sorted(points, key=lambda p: p.quality)
    paths = list_images(opts.data_dir, opts.limit)
    published, notes = load_published(opts.published_dir, opts.data_dir.name) if opts.published_dir else ([], [])
    for note in notes:
        say(f"diveq-codec: note: {note}")

    try:
        opts.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {opts.out_dir}: {exc.strerror or exc}") from None
    if not opts.out_dir.is_dir():
        raise OutputError(f"{opts.out_dir} is not a directory")

    with _locked(opts.out_dir):
        return _run_locked(opts, say, progress_stream, device, points, paths, published)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One eval per OUTDIR at a time: two writers would append the same rows twice."""
    try:
        handle = (out_dir / LOCK_NAME).open("a")
    except OSError as exc:
        raise OutputError(f"cannot write in {out_dir}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"another eval is writing to {out_dir}; wait for it or choose another -o") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _described(searched: dict[str, int]) -> str:
    """An effort's non-default settings in words, e.g. 'beam 4, refine_steps 10'."""
    return ", ".join(f"{name} {value}" for name, value in searched.items())


def _run_locked(opts: EvalOptions, say: Callable[[str], None], progress_stream: TextIO | None, device: str,
                points: list[Any], paths: list[Path], published: list[Curve]) -> EvalResult:
    import PIL

    from diveq_codec.codec.file_io import read_input
    from diveq_codec.codec.image_io import read_image
    from diveq_codec.codec.pipeline import (
        WRITTEN_CODER,
        decode_detailed,
        effort_settings,
        encode_source,
    )
    from diveq_codec.codec.zoo import load_model

    effort = effort_settings(opts.effort)
    # A beam search or refinement (--effort) writes other files of the same weights: its
    # settings join each rate point's record, so one folder never mixes efforts (the
    # default's record is as before).
    searched = {**({"beam": effort.beam} if effort.beam > 1 else {}),
                **({"refine_steps": effort.refine_steps} if effort.refine_steps else {})}
    loaded = {p.model_id: load_model(p.model_id, device) for p in points}
    images = {_image_key(p, opts.data_dir): p for p in paths}
    hashes = {}
    for key, path in images.items():
        hashes[key] = hashlib.sha256(read_input(str(path))).hexdigest()[:16]
    meta = _check_meta(opts.out_dir, {
        "coder": WRITTEN_CODER,
        "weights": {str(mid): lm.card.weights_id.hex() for mid, lm in loaded.items()},
        "images": hashes,
        "rate_points": {str(p.quality): {"stages": p.stages, "rate_weight": p.rate_weight, **searched,
                                         **_layer_record(p.layer_step)}
                        for p in points},
    })
    _write_json(opts.out_dir / META_NAME, meta)
    table = ResultsCSV(opts.out_dir / CSV_NAME)

    jobs_per_image = [(OURS, p.quality) for p in points] + [(a.key, q) for a in opts.anchors for q in a.qualities]
    progress = Progress(len(jobs_per_image) * len(images), progress_stream)
    anchors = {a.key: a for a in opts.anchors}
    measured = skipped = 0
    warmed = False
    try:
        for key, path in images.items():
            todo = [(c, q) for c, q in jobs_per_image if (c, q, key) not in table.done]
            if not todo:
                for c, q in jobs_per_image:
                    skipped += 1
                    progress.step(f"{c} q={q} {key}", False)
                continue
            source = read_image(read_input(str(path)), str(path))
            for notice in source.notices:
                say(f"diveq-codec: note: {key}: {notice}")
            rgb = source.rgb
            height, width = rgb.shape[:2]
            for codec_key, quality in jobs_per_image:
                if (codec_key, quality, key) in table.done:
                    skipped += 1
                    progress.step(f"{codec_key} q={quality} {key}", False)
                    continue
                if codec_key == OURS:
                    if not warmed:  # first use pays for lazy initialisation: keep it out of the timings
                        decode_detailed(encode_source(source, quality, device, opts.effort), device)
                        warmed = True
                    start = time.perf_counter()
                    data = encode_source(source, quality, device, opts.effort)
                    encoded = time.perf_counter()
                    decoded = decode_detailed(data, device).image
                    done = time.perf_counter()
                    m = measure_decoded(rgb, data, decoded, encoded - start, done - encoded)
                else:
                    m = measure(anchors[codec_key], rgb, quality)
                table.append(_row(codec_key, quality, key, width, height, m))
                measured += 1
                progress.step(f"{codec_key} q={quality} {key}", True)
    except KeyboardInterrupt:
        progress.close()
        say(f"diveq-codec: {len(table.rows)} rows kept in {table.path}; run the same command again to resume")
        raise
    progress.close()

    # ---- summaries, from the CSV
    names = list(images)
    curves: list[Curve] = []
    files: list[Path] = [table.path]
    model_names = sorted({p.model_name for p in points})
    common = {"images": len(names), "dataset": str(opts.data_dir), "device": device}
    ours_summary = summarize(table.rows, OURS, names)
    if ours_summary is None:  # cannot happen after a complete run
        raise OutputError(f"no complete rate point for {OURS} in {table.path}")
    ours_desc = (f"diveq-codec {_version()}, model(s) {', '.join(model_names)}, "
                 f"{f'encoder effort {opts.effort} ({_described(searched)}), ' if searched else ''}real .dvq files "
                 f"(header included), decoded on {device}")
    summaries = [(OURS, OURS_NAME, ours_desc, ours_summary, "ours")]
    for anchor in opts.anchors:
        s = summarize(table.rows, anchor.key, names)
        if s is not None:
            summaries.append((anchor.key, anchor.name, f"{anchor.description}, Pillow {PIL.__version__}", s, "local"))
    for key, name, desc, s, kind in summaries:
        path = opts.out_dir / f"{key}.json"
        _write_json(path, results_json(name, desc, s, common))
        files.append(path)
        curves.append(Curve(key, name, kind, s["bpp"], s["psnr-rgb"], s["ms-ssim-rgb"], path.name))
    ours = curves[0]
    locals_ = curves[1:]

    bd_rows = bd_table(ours, locals_ + published)
    checks = []
    for local in locals_:
        for pub in published:
            if pub.name.lower() == local.name.lower():
                gap = psnr_gap(local, pub)
                if gap:
                    checks.append(gap)
    _write_json(opts.out_dir / "bd_rate.json", {
        "test": OURS_NAME, "metric": "psnr-rgb", "rate": "bpp",
        "method": "Bjøntegaard (VCEG-M33) cubic fit of log rate vs PSNR over the shared PSNR range",
        "rows": bd_rows, "anchor_checks": checks})
    _write(opts.out_dir / "bd_rate.md", bd_markdown(OURS_NAME, bd_rows).encode())
    _write(opts.out_dir / MATCHED_NAME, matched_markdown(OURS_NAME, ours, locals_).encode())
    files += [opts.out_dir / "bd_rate.json", opts.out_dir / "bd_rate.md", opts.out_dir / MATCHED_NAME]

    plot_rd(opts.out_dir / PLOT_NAME, curves + published,
            f"{OURS_NAME} vs anchors on {opts.data_dir.name} ({len(names)} images)")
    files.append(opts.out_dir / PLOT_NAME)
    return EvalResult(curves, bd_rows, checks, measured, skipped, files)
