"""``diveq-codec eval`` and ``diveq-codec bench``: the command functions.

codec/cli/app.py registers them; they share codec/cli/common.py's error handling. Nothing
here imports torch or the evaluation engine until a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import typer

from diveq_codec.codec.cli.common import EXIT_USAGE, PROG, fail, guarded, json_out, note, say
from diveq_codec.codec.cli.options import EFFORT_HELP, Device


class _EvalConsole:
    """Where eval's engine reports: notes (none with --quiet) on lines of their own above the
    progress bar, the bar itself (codec/cli/progress.py: on a terminal only)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar: Any = None  # the Progress while measuring

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.print_line(f"{PROG}: note: {text}")
        else:
            note(text)

    def say(self, text: str) -> None:
        say(f"{PROG}: {text}")

    @contextlib.contextmanager
    def progress(self, total: int) -> Iterator[Any]:
        from diveq_codec.codec.cli.progress import Progress

        with Progress(total, "eval", quiet=self.quiet) as bar:
            self._bar = bar
            try:
                yield bar
            finally:
                self._bar = None


def eval_command(
    directory: Path = typer.Argument(..., help="folder of images to evaluate on (e.g. Kodak's 24 PNGs)"),
    quality: str = typer.Option("all", "-q", "--quality", help="our rate points: all, or a list like 1,3,5"),
    anchors: Optional[str] = typer.Option(
        None, "--anchors", help="classical codecs to run beside ours: a list of jpeg,webp,avif,jpeg2000, "
        "or none (default: every one this Pillow supports)"),
    published: Optional[Path] = typer.Option(
        None, "--published", help="folder of published results JSON (CompressAI schema) to plot and compare"),
    device: Device = typer.Option(Device.auto, "--device", help="where our model runs"),
    effort: Optional[int] = typer.Option(None, "--effort", help=EFFORT_HELP + " (one effort per results folder)"),
    output: Path = typer.Option(Path("eval-out"), "-o", "--output",
                                help="results folder; re-running with the same one resumes"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="use only the first N images (by name)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar and no notes on stderr"),
) -> None:
    """Rate–distortion of our codec and the classical anchors on a folder of images.

    Writes per_image.csv, one CompressAI-style JSON per codec, rd.png and the BD-rate table.

    Needs the eval extra: pip install 'diveq-codec[eval]'.

    Safe to interrupt: run the same command again to resume.
    """
    from diveq_codec.codec.evaluation.dependencies import missing_eval_packages, missing_message

    missing = missing_eval_packages()
    if missing:  # before any work: not after an hour of measuring, at the plot
        fail(EXIT_USAGE, missing_message("eval", missing))

    def run() -> None:
        from diveq_codec.codec.evaluation.anchors import resolve_anchors
        from diveq_codec.codec.evaluation.report import bd_markdown
        from diveq_codec.codec.evaluation.runner import OURS_NAME, EvalOptions, parse_qualities, run_eval
        from diveq_codec.codec.pipeline import effort_settings

        effort_settings(effort)  # an unknown effort is refused before the results folder is made
        console = _EvalConsole(quiet)
        chosen, notes = resolve_anchors(anchors)
        for text in notes:
            console.note(text)
        opts = EvalOptions(data_dir=directory, out_dir=output, qualities=parse_qualities(quality), anchors=chosen,
                           published_dir=published, device=device.value, limit=limit, effort=effort)
        started = time.monotonic()
        result = run_eval(opts, note=console.note, say=console.say, progress=console.progress)
        typer.echo(bd_markdown(OURS_NAME, result.bd_rows), nl=False)
        for check in result.anchor_checks:
            say(f"{PROG}: check: {check['local']} measured here vs published {check['published']}: "
                f"{check['mean_gap_db']:+.2f} dB mean, {check['max_abs_gap_db']:.2f} dB largest gap over "
                f"{check['points']} points at matched bpp")
        say(f"{PROG}: {result.measured} measurements made, {result.skipped} reused, "
            f"{time.monotonic() - started:.1f} s; wrote {', '.join(str(f) for f in result.files)}")

    guarded(run)


def _median_times(encode: Callable[[], bytes], decode: Callable[[bytes], Any], runs: int) -> tuple[bytes, Any, float, float]:
    data = encode()  # warm-up, not timed
    out = decode(data)
    enc, dec = [], []
    for _ in range(runs):
        start = time.perf_counter()
        data = encode()
        enc.append(time.perf_counter() - start)
        start = time.perf_counter()
        out = decode(data)
        dec.append(time.perf_counter() - start)
    return data, out, statistics.median(enc), statistics.median(dec)


def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def bench_command(
    image: Path = typer.Argument(..., help="image to time"),
    quality: Optional[int] = typer.Option(None, "-q", "--quality", help="our rate point (default: the middle one)"),
    runs: int = typer.Option(5, "--runs", min=1, help="timed runs per codec (after one warm-up run)"),
    device: Device = typer.Option(Device.auto, "--device", help="where our model runs"),
    effort: Optional[int] = typer.Option(None, "--effort", help=EFFORT_HELP),
    json_flag: bool = typer.Option(False, "--json", help="print the results as JSON on stdout"),
) -> None:
    """Median encode/decode time of our codec next to Pillow JPEG and WebP (quality 75)."""

    def run() -> None:
        import numpy as np
        import torch
        from PIL import Image

        from diveq_codec.codec.cards import resolve_quality
        from diveq_codec.codec.evaluation.anchors import ANCHORS, decode_bytes
        from diveq_codec.codec.file_io import read_input
        from diveq_codec.codec.image_io import read_image
        from diveq_codec.codec.metrics import bits_per_pixel, psnr
        from diveq_codec.codec.pipeline import (
            decode_detailed,
            effort_settings,
            encode_source,
            resolve_device,
        )

        dev = resolve_device(device.value)
        point = resolve_quality(quality)
        source = read_image(read_input(str(image)), str(image))
        rgb = source.rgb
        height, width = rgb.shape[:2]
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()

        rows: list[dict[str, Any]] = []

        def record(name: str, q: int, data: bytes, decoded: Image.Image, enc: float, dec: float) -> None:
            rows.append({"codec": name, "quality": q, "bytes": len(data), "bpp": bits_per_pixel(len(data), width, height),
                         "psnr": psnr(rgb, np.asarray(decoded.convert("RGB"))), "encode_s": enc, "decode_s": dec})

        effort_settings(effort)  # an unknown effort is refused before any timing
        data, out, enc, dec = _median_times(lambda: encode_source(source, point.quality, dev, effort),
                                            lambda d: decode_detailed(d, dev).image, runs)
        record("DiVeQ", point.quality, data, out, enc, dec)
        pil_image = Image.fromarray(rgb, "RGB")
        for key in ("jpeg", "webp"):
            anchor = ANCHORS[key]
            if not anchor.available():
                say(f"diveq-codec: note: {anchor.name} skipped: this Pillow has no {anchor.feature} support")
                continue
            data, out, enc, dec = _median_times(lambda a=anchor: a.encode(pil_image, 75),
                                                lambda d: decode_bytes(d).convert("RGB"), runs)
            record(anchor.name, 75, data, out, enc, dec)

        memory: dict[str, Any] = {"max_rss_mib": _max_rss_mib()}
        if dev == "cuda":
            memory["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / (1 << 20)
        report = {"image": str(image), "width": width, "height": height, "device": dev, "runs": runs,
                  "torch_threads": torch.get_num_threads(), "codecs": rows, "peak_memory": memory}
        if json_flag:
            json_out(report)
            return
        typer.echo(f"{image}: {width}×{height}, device {dev}, {torch.get_num_threads()} torch threads, "
                   f"median of {runs} runs after 1 warm-up")
        typer.echo(f"{'codec':<8} {'q':>3} {'bytes':>9} {'bpp':>7} {'PSNR dB':>8} {'encode s':>9} {'decode s':>9}")
        for r in rows:
            typer.echo(f"{r['codec']:<8} {r['quality']:>3} {r['bytes']:>9,} {r['bpp']:>7.4f} {r['psnr']:>8.2f} "
                       f"{r['encode_s']:>9.4f} {r['decode_s']:>9.4f}")
        mem = f"peak memory: process max RSS {memory['max_rss_mib']:.1f} MiB"
        if "cuda_max_allocated_mib" in memory:
            mem += f", CUDA max allocated {memory['cuda_max_allocated_mib']:.1f} MiB"
        typer.echo(mem)

    guarded(run)
