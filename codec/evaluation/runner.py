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
  it is measured (results_csv.py). Re-running with the same OUTDIR skips the rows already
  there, so an interrupted run resumes where it stopped. ``eval_meta.json`` records which
  weights, entropy coder, image files and rate-point settings (stages, λ, DCT layer) the
  rows belong to; a re-run with any of them changed is refused rather than mixed in.
* ``<codec>.json``: one per codec in CompressAI's results schema, computed from the CSV.
* ``rd.png``: PSNR-RGB and MS-SSIM (dB) against bpp for ours, the anchors and the
  published curves of ``--published`` (plot.py).
* ``bd_rate.md`` / ``bd_rate.json``: Bjøntegaard delta rate of ours against each anchor
  and published curve, "n/a" where the PSNR ranges do not overlap (report.py).
* ``matched_bpp.md``: at each of our rate points, our PSNR and MS-SSIM against each anchor
  measured here at the same bpp: where ours is ahead and where behind.

The engine prints nothing: notes, the resume hint on an interrupt and progress go to the
caller's callbacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from diveq_codec.codec.cards import RatePoint
from diveq_codec.codec.errors import InputError, OutputError
from diveq_codec.codec.evaluation.anchors import Anchor, measure, measure_decoded
from diveq_codec.codec.evaluation.curves import Curve, load_published, results_json, summarize
from diveq_codec.codec.evaluation.eval_meta import META_NAME, check_meta, rate_point_record
from diveq_codec.codec.evaluation.output_files import write_file, write_json
from diveq_codec.codec.evaluation.plot import plot_rd
from diveq_codec.codec.evaluation.report import anchor_checks, bd_document, bd_markdown, bd_table, matched_markdown
from diveq_codec.codec.evaluation.results_csv import CSV_NAME, ResultsCSV, locked, measurement_row

OURS = "diveq"
OURS_NAME = "DiVeQ"
PLOT_NAME = "rd.png"
MATCHED_NAME = "matched_bpp.md"
BD_JSON_NAME = "bd_rate.json"
BD_MARKDOWN_NAME = "bd_rate.md"
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


# --------------------------------------------------------------------------- reporting hooks

class StepProgress(Protocol):
    """What the engine needs of a progress display (codec/cli/progress.py's Progress fits)."""

    def advance(self, steps: int = 1, detail: str = "") -> None: ...


# Given the number of measurements to make, a context that displays their progress.
ProgressFactory = Callable[[int], contextlib.AbstractContextManager[StepProgress]]


class _NoProgress:
    def advance(self, steps: int = 1, detail: str = "") -> None:
        pass


def _no_progress(total: int) -> contextlib.AbstractContextManager[StepProgress]:
    return contextlib.nullcontext(_NoProgress())


def _ignore(message: str) -> None:
    pass


# --------------------------------------------------------------------------- running

@dataclass
class EvalResult:
    curves: list[Curve]
    bd_rows: list[dict[str, Any]]
    anchor_checks: list[dict[str, Any]]
    measured: int
    skipped: int
    files: list[Path]


@dataclass
class _Plan:
    """One run's fixed inputs, resolved before the folder is locked."""

    opts: EvalOptions
    device: str
    points: list[RatePoint]  # by quality
    images: dict[str, Path]  # by name relative to the data folder
    published: list[Curve]

    @property
    def jobs_per_image(self) -> list[tuple[str, int]]:
        return ([(OURS, p.quality) for p in self.points]
                + [(a.key, q) for a in self.opts.anchors for q in a.qualities])


def run_eval(opts: EvalOptions, note: Callable[[str], None] | None = None, say: Callable[[str], None] | None = None,
             progress: ProgressFactory | None = None) -> EvalResult:
    """Measure, write the CSV incrementally, then summaries, plot and BD-rate table.

    ``note`` gets notes (files skipped, images converted), ``say`` the resume hint when
    interrupted, ``progress`` the number of measurements to make; all silent by default.
    """
    from diveq_codec.codec.cards import rate_points, resolve_quality
    from diveq_codec.codec.pipeline import resolve_device

    note, say, progress = note or _ignore, say or _ignore, progress or _no_progress
    device = resolve_device(opts.device)
    points = [resolve_quality(q) for q in opts.qualities] if opts.qualities else rate_points()
    if not points:
        resolve_quality(None)  # raises the WeightsError that says where models were looked for
    paths = list_images(opts.data_dir, opts.limit)
    published, notes = load_published(opts.published_dir, opts.data_dir.name) if opts.published_dir else ([], [])
    for text in notes:
        note(text)
    plan = _Plan(opts, device, sorted(points, key=lambda p: p.quality),
                 {p.relative_to(opts.data_dir).as_posix(): p for p in paths}, published)

    try:
        opts.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {opts.out_dir}: {exc.strerror or exc}") from None
    if not opts.out_dir.is_dir():
        raise OutputError(f"{opts.out_dir} is not a directory")

    with locked(opts.out_dir):
        searched = _open_folder(plan)
        table = ResultsCSV(opts.out_dir / CSV_NAME)
        try:
            measured, skipped = _measure_all(plan, table, note, progress)
        except KeyboardInterrupt:
            say(f"{len(table.rows)} rows kept in {table.path}; run the same command again to resume")
            raise
        return _write_summaries(plan, table, searched, measured, skipped)


def _searched(effort_level: int | None) -> dict[str, int]:
    """An effort's non-default search settings. A beam search or refinement writes other
    files of the same weights, so they join each rate point's record (the default's record
    is as it always was)."""
    from diveq_codec.codec.pipeline import effort_settings

    effort = effort_settings(effort_level)
    return {**({"beam": effort.beam} if effort.beam > 1 else {}),
            **({"refine_steps": effort.refine_steps} if effort.refine_steps else {})}


def _open_folder(plan: _Plan) -> dict[str, int]:
    """Check the folder's meta against this run's (weights, coder, images, rate points) and
    write the merged meta; returns the effort's search settings."""
    from diveq_codec.codec.file_io import read_input
    from diveq_codec.codec.pipeline import WRITTEN_CODER
    from diveq_codec.codec.zoo import load_model

    searched = _searched(plan.opts.effort)
    loaded = {p.model_id: load_model(p.model_id, plan.device) for p in plan.points}
    hashes = {key: hashlib.sha256(read_input(str(path))).hexdigest()[:16] for key, path in plan.images.items()}
    meta = check_meta(plan.opts.out_dir, {
        "coder": WRITTEN_CODER,
        "weights": {str(mid): lm.card.weights_id.hex() for mid, lm in loaded.items()},
        "images": hashes,
        "rate_points": {str(p.quality): rate_point_record(p, searched) for p in plan.points},
    })
    write_json(plan.opts.out_dir / META_NAME, meta)
    return searched


def _measure_all(plan: _Plan, table: ResultsCSV, note: Callable[[str], None],
                 progress: ProgressFactory) -> tuple[int, int]:
    """Measure every (codec, quality, image) not in the CSV yet, appending each row as it
    comes; returns (measured, skipped)."""
    from diveq_codec.codec.file_io import read_input
    from diveq_codec.codec.image_io import read_image
    from diveq_codec.codec.pipeline import decode_detailed, encode_source

    jobs = plan.jobs_per_image
    todo = {key: [(c, q) for c, q in jobs if (c, q, key) not in table.done] for key in plan.images}
    total = sum(len(t) for t in todo.values())
    anchors = {a.key: a for a in plan.opts.anchors}
    effort, device = plan.opts.effort, plan.device
    warmed = False
    with progress(total) as bar:
        for key, path in plan.images.items():
            if not todo[key]:
                continue
            source = read_image(read_input(str(path)), str(path))
            for notice in source.notices:
                note(f"{key}: {notice}")
            height, width = source.rgb.shape[:2]
            for codec_key, quality in todo[key]:
                if codec_key == OURS:
                    if not warmed:  # first use pays for lazy initialisation: keep it out of the timings
                        decode_detailed(encode_source(source, quality, device, effort), device)
                        warmed = True
                    start = time.perf_counter()
                    data = encode_source(source, quality, device, effort)
                    encoded = time.perf_counter()
                    decoded = decode_detailed(data, device).image
                    done = time.perf_counter()
                    m = measure_decoded(source.rgb, data, decoded, encoded - start, done - encoded)
                else:
                    m = measure(anchors[codec_key], source.rgb, quality)
                table.append(measurement_row(codec_key, quality, key, width, height, m))
                bar.advance(detail=f"{codec_key} q={quality} {key}")
    return total, len(jobs) * len(plan.images) - total


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diveq-codec")
    except PackageNotFoundError:
        return "(not installed)"


def _ours_description(plan: _Plan, searched: dict[str, int]) -> str:
    models = ", ".join(sorted({p.model_name for p in plan.points}))
    effort = ""
    if searched:
        described = ", ".join(f"{name} {value}" for name, value in searched.items())  # e.g. "beam 4"
        effort = f"encoder effort {plan.opts.effort} ({described}), "
    return (f"diveq-codec {_version()}, model(s) {models}, {effort}real .dvq files (header included), "
            f"decoded on {plan.device}")


def _write_summaries(plan: _Plan, table: ResultsCSV, searched: dict[str, int], measured: int,
                     skipped: int) -> EvalResult:
    """From the CSV: one results JSON per codec, the BD-rate and matched-bpp tables, the plot."""
    import PIL

    opts, out = plan.opts, plan.opts.out_dir
    names = list(plan.images)
    ours_summary = summarize(table.rows, OURS, names)
    if ours_summary is None:  # cannot happen after a complete run
        raise OutputError(f"no complete rate point for {OURS} in {table.path}")
    summaries = [(OURS, OURS_NAME, _ours_description(plan, searched), ours_summary, "ours")]
    for anchor in opts.anchors:
        s = summarize(table.rows, anchor.key, names)
        if s is not None:
            summaries.append((anchor.key, anchor.name, f"{anchor.description}, Pillow {PIL.__version__}", s, "local"))
    common = {"images": len(names), "dataset": str(opts.data_dir), "device": plan.device}
    curves: list[Curve] = []
    files: list[Path] = [table.path]
    for key, name, desc, s, kind in summaries:
        path = out / f"{key}.json"
        write_json(path, results_json(name, desc, s, common))
        files.append(path)
        curves.append(Curve(key, name, kind, s["bpp"], s["psnr-rgb"], s["ms-ssim-rgb"], path.name))
    ours, local = curves[0], curves[1:]

    bd_rows = bd_table(ours, local + plan.published)
    checks = anchor_checks(local, plan.published)
    write_json(out / BD_JSON_NAME, bd_document(OURS_NAME, bd_rows, checks))
    write_file(out / BD_MARKDOWN_NAME, bd_markdown(OURS_NAME, bd_rows).encode())
    write_file(out / MATCHED_NAME, matched_markdown(OURS_NAME, ours, local).encode())
    plot_rd(out / PLOT_NAME, curves + plan.published,
            f"{OURS_NAME} vs anchors on {opts.data_dir.name} ({len(names)} images)")
    files += [out / BD_JSON_NAME, out / BD_MARKDOWN_NAME, out / MATCHED_NAME, out / PLOT_NAME]
    return EvalResult(curves, bd_rows, checks, measured, skipped, files)
