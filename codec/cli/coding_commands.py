"""``diveq-codec encode`` and ``decode``: one file (IN OUT) or many (IN... --out-dir DIR).

Everything that can be checked from the arguments, the paths, the cards and a file's header
is checked before numpy or PyTorch is imported, so a mistake is answered at once.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from diveq_codec.codec.cli.batch import Job, Reporter, Work, jobs_into_folder, run_jobs
from diveq_codec.codec.cli.common import check_json_target, guarded, json_out, say
from diveq_codec.codec.cli.options import EFFORT_HELP, Device
from diveq_codec.codec.cli.progress import Progress, StageProgress
from diveq_codec.codec.errors import UsageError
from diveq_codec.codec.output_formats import DEFAULT_JPEG_QUALITY, OutputFormat

QUALITY_HELP = "rate point, from 1 (smallest) up: `diveq-codec models` lists them  [default: the model's default]"
# The arguments and options encode and decode share.
PATHS_ARGUMENT = typer.Argument(..., metavar="PATHS", show_default=False,
                                help="IN OUT for one file (- reads stdin / writes stdout), or IN... with --out-dir")
OUT_DIR_OPTION = typer.Option(None, "--out-dir", metavar="DIR",
                              help="write every output into this folder, named after its input")
DEVICE_OPTION = typer.Option(Device.auto, "--device", metavar="auto|cpu|cuda", help="where the network runs")
JOBS_OPTION = typer.Option(1, "--jobs", "-j", min=1, metavar="N",
                           help="files coded at once in a batch; each gets its share of the CPU cores")
FORCE_OPTION = typer.Option(False, "--force", "-f", help="overwrite outputs that exist")
JSON_OPTION = typer.Option(False, "--json", help="print the report as JSON on stdout (a line per file)")
QUIET_OPTION = typer.Option(False, "--quiet", help="no notes and no progress bar (errors are still printed)")


def _single_or_batch(paths: list[str], out_dir: Optional[str], extension: str) -> tuple[list[Job], bool]:
    """(jobs, whether this is a batch) from the positional paths and --out-dir."""
    if out_dir is not None:
        return jobs_into_folder(paths, out_dir, extension), True
    if len(paths) != 2:
        raise UsageError(f"expected IN OUT (got {len(paths)} path{'s' if len(paths) != 1 else ''}); "
                         f"for many inputs give --out-dir DIR")
    return [Job(paths[0], paths[1])], False


def _run(jobs: list[Job], batch: bool, work: Work, workers: int, label: str, json_flag: bool, quiet: bool) -> None:
    if batch:
        code = run_jobs(jobs, work, workers, label, json_flag, quiet)
        if code:
            raise typer.Exit(code)
        return
    check_json_target(json_flag, jobs[0].output)
    from diveq_codec.models.progress import listening

    # One file shows the network's own progress (tiles of a large image, effort 3's steps).
    with Progress(1, label, quiet=True) as hidden, StageProgress(f"{label} {jobs[0].input}", quiet) as stages:
        with listening(stages):
            line, summary = work(jobs[0], Reporter(hidden, json_flag, quiet))
    if json_flag:
        json_out(summary)
    else:
        say(line)


def encode(
    paths: list[str] = PATHS_ARGUMENT,
    out_dir: Optional[str] = OUT_DIR_OPTION,
    quality: Optional[int] = typer.Option(None, "-q", "--quality", min=1, metavar="N", help=QUALITY_HELP, show_default=False),
    effort: int = typer.Option(1, "--effort", min=1, max=3, metavar="1|2|3", help=EFFORT_HELP),
    device: Device = DEVICE_OPTION,
    workers: int = JOBS_OPTION,
    force: bool = FORCE_OPTION,
    json_flag: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Compress images to .dvq files; report size, bpp and PSNR of what each file decodes to.

    diveq-codec encode IN OUT   or   diveq-codec encode IN... --out-dir DIR
    """

    def run() -> None:
        from diveq_codec.codec.cards import resolve_quality

        jobs, batch = _single_or_batch(paths, out_dir, ".dvq")
        point = resolve_quality(quality)  # an unknown quality is exit 2 before any image is read

        def work(job: Job, reporter: Reporter) -> tuple[str, dict[str, Any]]:
            from diveq_codec.codec.file_io import check_output, read_input, write_output

            check_output(job.output, force, [job.input])
            data = read_input(job.input)
            from diveq_codec.codec.image_io import read_image

            source = read_image(data, job.input)
            for notice in source.notices:
                reporter.note(notice)
            from diveq_codec.codec.pipeline import encode_with_report

            report = encode_with_report(source, point.quality, device.value, effort)
            write_output(job.output, report.data, force)
            summary = {"input": job.input, "output": job.output, "quality": report.quality,
                       "width": report.width, "height": report.height, "bytes": len(report.data),
                       "bpp": report.bpp, "psnr": report.psnr, "notices": report.notices}
            line = (f"{job.output}: {len(report.data):,} bytes, {report.bpp:.4f} bpp, PSNR {report.psnr:.2f} dB "
                    f"(quality {report.quality}, {report.width}×{report.height})")
            return line, summary

        _run(jobs, batch, work, workers, "encode", json_flag, quiet)

    guarded(run)


def _reference_psnr(reference: str, decoded: Any, reporter: Reporter) -> float | None:
    """PSNR of the decoded image against the original, or None (with a warning) when they differ in size or kind."""
    from diveq_codec.codec.file_io import read_input
    from diveq_codec.codec.image_io import read_image
    from diveq_codec.codec.metrics import psnr
    from diveq_codec.codec.pipeline import color_planes, source_planes

    ref = read_image(read_input(reference), reference)
    width, height = decoded.size
    if ref.rgb.shape[:2] != (height, width):
        reporter.warn(f"reference {reference} is {ref.rgb.shape[1]}×{ref.rgb.shape[0]}, the decoded image "
                      f"{width}×{height}: no PSNR")
        return None
    mine, theirs = color_planes(decoded), source_planes(ref)
    if mine.shape != theirs.shape:
        reporter.warn(f"reference {reference} is {ref.mode}, the decoded image {decoded.mode}: no PSNR")
        return None
    return psnr(theirs, mine)


def decode(
    paths: list[str] = PATHS_ARGUMENT,
    out_dir: Optional[str] = OUT_DIR_OPTION,
    output_format: Optional[str] = typer.Option(
        None, "--format", metavar="FMT",
        help="png, webp (lossless), tiff, bmp or jpeg (lossy); default: OUT's extension, png for - and --out-dir"),
    jpeg_quality: int = typer.Option(DEFAULT_JPEG_QUALITY, "--jpeg-quality", min=1, max=100, metavar="Q",
                                     help="quality of a JPEG output (JPEG is lossy)"),
    reference: Optional[str] = typer.Option(None, "--reference", metavar="ORIGINAL",
                                            help="original image: report PSNR against it (one file only)"),
    device: Device = DEVICE_OPTION,
    workers: int = JOBS_OPTION,
    force: bool = FORCE_OPTION,
    json_flag: bool = JSON_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Decompress .dvq files to images of the original size and mode.

    diveq-codec decode IN OUT   or   diveq-codec decode IN... --out-dir DIR [--format png]

    The format follows OUT's extension: .png, .webp (lossless), .tif/.tiff and .bmp hold the
    decoded pixels exactly; .jpg/.jpeg is lossy (see --jpeg-quality).
    """

    def run() -> None:
        from diveq_codec.codec.output_formats import format_for, format_named

        if out_dir is not None:
            if reference is not None:
                raise UsageError("--reference compares one file; it cannot be used with --out-dir")
            fmt = format_named(output_format or "png")
        else:
            fmt = format_for(paths[-1], output_format) if len(paths) == 2 else None
        jobs, batch = _single_or_batch(paths, out_dir, fmt.extension if fmt else "")
        assert fmt is not None
        extra_inputs = [reference] if reference is not None else []

        def work(job: Job, reporter: Reporter) -> tuple[str, dict[str, Any]]:
            return _decode_one(job, reporter, fmt, jpeg_quality, reference, extra_inputs, device.value, force)

        _run(jobs, batch, work, workers, "decode", json_flag, quiet)

    guarded(run)


def _decode_one(job: Job, reporter: Reporter, fmt: OutputFormat, jpeg_quality: int, reference: Optional[str],
                extra_inputs: list[str], device: str, force: bool) -> tuple[str, dict[str, Any]]:
    from diveq_codec.codec import container
    from diveq_codec.codec.file_io import check_output, read_input, write_output
    from diveq_codec.codec.metrics import bits_per_pixel
    from diveq_codec.codec.output_formats import check_alpha_fits

    check_output(job.output, force, [job.input, *extra_inputs])
    data = read_input(job.input)
    header = container.unpack(data).header  # a damaged or foreign file is refused before PyTorch loads
    check_alpha_fits(fmt, bool(header.flags & container.FLAG_ALPHA), job.output)
    from diveq_codec.codec.image_io import encode_image_file
    from diveq_codec.codec.pipeline import decode_detailed

    image = decode_detailed(data, device).image
    summary: dict[str, Any] = {
        "input": job.input, "output": job.output, "format": fmt.name, "width": header.width,
        "height": header.height, "mode": image.mode, "quality": header.quality, "bytes": len(data),
        "bpp": bits_per_pixel(len(data), header.width, header.height),
    }
    if reference is not None:
        summary["psnr"] = _reference_psnr(reference, image, reporter)
    write_output(job.output, encode_image_file(image, fmt, jpeg_quality), force)
    if not fmt.exact:
        reporter.note(f"{job.output}: JPEG is lossy (quality {jpeg_quality}), so it is not exactly what the file "
                      f"decodes to; .png, .webp, .tiff and .bmp are")
    psnr_text = f", PSNR {summary['psnr']:.2f} dB" if summary.get("psnr") is not None else ""
    line = (f"{job.output}: {header.width}×{header.height} {image.mode}, {summary['bpp']:.4f} bpp{psnr_text}")
    return line, summary

