"""The ``diveq-codec`` command line: thin wrappers over :mod:`codec.pipeline`.

Data (and ``--json``) go to stdout, messages to stderr. Every user-caused failure is one
line on stderr and a documented exit code (see README, "Exit codes").
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from diveq_codec.codec import container
from diveq_codec.codec.cli.allocator import keep_freed_memory
from diveq_codec.codec.cli.options import EFFORT_HELP, Device
from diveq_codec.codec.errors import CodecError, InputError
from diveq_codec.codec.file_io import check_output, read_input, write_output
from diveq_codec.codec.image_io import encode_image_file, read_image
from diveq_codec.codec.metrics import bits_per_pixel, psnr

EXIT_USAGE = 2
EXIT_INTERNAL = 1

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DiVeQ neural image codec: encode images to .dvq files and back.",
)



def _say(message: str) -> None:
    typer.echo(message, err=True)


def _fail(code: int, message: str) -> typer.Exit:
    _say(f"diveq-codec: error: {message}")
    return typer.Exit(code)


def _guarded(action: Callable[[], None]) -> None:
    """Run a command body, mapping every failure to one line and an exit code."""
    try:
        action()
    except typer.Exit:
        raise
    except CodecError as exc:
        raise _fail(exc.exit_code, str(exc)) from None
    except ValueError as exc:  # bad option values detected below typer (device, quality)
        raise _fail(EXIT_USAGE, str(exc)) from None
    except KeyboardInterrupt:
        raise _fail(130, "interrupted") from None
    except MemoryError:
        raise _fail(EXIT_INTERNAL, "out of memory") from None
    except Exception as exc:  # a bug: still no traceback for the user, but say so
        raise _fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}") from None


def _json_out(obj: Any) -> None:
    # inf PSNR (identical images) is not valid JSON: report it as null.
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    sys.stdout.write(json.dumps(clean(obj)) + "\n")
    sys.stdout.flush()


def _check_json_target(json_flag: bool, output: str) -> None:
    if json_flag and output == "-":
        raise _fail(EXIT_USAGE, "--json and OUTPUT '-' both need stdout; write the output to a file")


@app.command()
def encode(
    input: str = typer.Argument(..., help="image file (any format Pillow reads), or - for stdin"),
    output: str = typer.Argument(..., help=".dvq file to write, or - for stdout"),
    quality: Optional[int] = typer.Option(None, "-q", "--quality", help="rate point (see `diveq-codec models`)"),
    device: Device = typer.Option(Device.auto, "--device", help="where the model runs"),
    effort: Optional[int] = typer.Option(None, "--effort", help=EFFORT_HELP),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite OUTPUT if it exists"),
    json_flag: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
) -> None:
    """Compress an image; report size, bpp and the PSNR the file decodes to."""
    from diveq_codec.codec.pipeline import encode_with_report

    _check_json_target(json_flag, output)

    def run() -> None:
        check_output(output, force, [input])
        source = read_image(read_input(input), input)
        for notice in source.notices:
            _say(f"diveq-codec: note: {notice}")
        report = encode_with_report(source, quality, device.value, effort)
        write_output(output, report.data, force)
        summary = {
            "input": input, "output": output, "quality": report.quality, "width": report.width,
            "height": report.height, "bytes": len(report.data), "bpp": report.bpp, "psnr": report.psnr,
            "notices": report.notices,
        }
        if json_flag:
            _json_out(summary)
        else:
            _say(f"{output}: {len(report.data):,} bytes, {report.bpp:.4f} bpp, PSNR {report.psnr:.2f} dB "
                 f"(quality {report.quality}, {report.width}×{report.height})")

    _guarded(run)


@app.command()
def decode(
    input: str = typer.Argument(..., help=".dvq file, or - for stdin"),
    output: str = typer.Argument(..., help="image to write (format from the extension; PNG for -)"),
    device: Device = typer.Option(Device.auto, "--device", help="where the model runs"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="original image: report PSNR against it"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite OUTPUT if it exists"),
    json_flag: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
) -> None:
    """Decompress a .dvq file to an image of the original size and mode."""
    from diveq_codec.codec.pipeline import color_planes, decode_detailed, source_planes

    _check_json_target(json_flag, output)

    def run() -> None:
        check_output(output, force, [input])
        data = read_input(input)
        decoded = decode_detailed(data, device.value)
        header = decoded.header
        summary: dict[str, Any] = {
            "input": input, "output": output, "width": header.width, "height": header.height,
            "mode": decoded.image.mode, "quality": header.quality, "bytes": len(data),
            "bpp": bits_per_pixel(len(data), header.width, header.height),
        }
        if reference is not None:
            ref = read_image(read_input(str(reference)), str(reference))
            if ref.rgb.shape[:2] != (header.height, header.width):
                raise InputError(f"reference {reference} is {ref.rgb.shape[1]}×{ref.rgb.shape[0]}, "
                                 f"the decoded image is {header.width}×{header.height}")
            summary["psnr"] = psnr(source_planes(ref), color_planes(decoded.image))
        write_output(output, encode_image_file(decoded.image, output), force)
        if json_flag:
            _json_out(summary)
        else:
            psnr_text = f", PSNR {summary['psnr']:.2f} dB" if "psnr" in summary else ""
            _say(f"{output}: {header.width}×{header.height} {decoded.image.mode}, {summary['bpp']:.4f} bpp{psnr_text}")

    _guarded(run)


@app.command()
def info(
    input: str = typer.Argument(..., help=".dvq file, or - for stdin"),
    json_flag: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Show a .dvq file's header (no model needed)."""

    def run() -> None:
        data = read_input(input)
        parsed = container.unpack(data)
        h = parsed.header
        fields = {
            "format_version": parsed.version, "model_id": h.model_id, "quality": h.quality,
            "weights_id": h.weights_id.hex(), "coder_id": h.coder_id, "table_precision": h.table_precision,
            "width": h.width, "height": h.height, "channels": h.channels, "bit_depth": h.bit_depth,
            "flags": h.flags, "alpha": bool(h.flags & container.FLAG_ALPHA), "latent_h": h.latent_h,
            "latent_w": h.latent_w, "stages": h.stages, "payload_bytes": len(parsed.payload),
            "alpha_bytes": len(parsed.alpha), "layer_bytes": len(parsed.layer), "bytes": len(data),
            "bpp": bits_per_pixel(len(data), h.width, h.height),
        }
        if json_flag:
            _json_out(fields)
        else:
            for key, value in fields.items():
                typer.echo(f"{key:16} {value:.4f}" if isinstance(value, float) else f"{key:16} {value}")

    _guarded(run)


@app.command()
def models(json_flag: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the shipped rate points with their measured Kodak bpp and PSNR."""
    from diveq_codec.codec.zoo import rate_points

    def run() -> None:
        points = rate_points()
        rows = [{"quality": p.quality, "model": p.model_name, "model_id": p.model_id, "stages": p.stages,
                 "bpp": p.kodak_bpp, "psnr": p.kodak_psnr, "rate_weight": p.rate_weight,
                 "layer_step": p.layer_step} for p in points]
        if json_flag:
            _json_out(rows)
            return
        name_width = max([len("model")] + [len(r["model"]) for r in rows])  # the columns fit any name
        typer.echo(f"{'quality':>7}  {'model':<{name_width}}  {'stages':>6}  {'residual':>8}  "
                   f"{'Kodak bpp':>9}  {'PSNR dB':>7}")
        for r in rows:
            bpp = f"{r['bpp']:.4f}" if r["bpp"] is not None else "-"
            ps = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
            # The DCT layer's quantiser step, for the points that add one.
            step = f"step {r['layer_step']:g}" if r["layer_step"] is not None else "-"
            typer.echo(f"{r['quality']:>7}  {r['model']:<{name_width}}  {r['stages']:>6}  {step:>8}  "
                       f"{bpp:>9}  {ps:>7}")

    _guarded(run)


def _register_evaluation_commands() -> None:
    from diveq_codec.codec.cli.evaluation_commands import bench_command, eval_command

    app.command("eval")(eval_command)
    app.command("bench")(bench_command)


_register_evaluation_commands()


def main() -> None:
    # Like cat or head: when the reader of stdout goes away (``| head``), end quietly by
    # SIGPIPE instead of reporting a BrokenPipeError.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    keep_freed_memory()
    app()


if __name__ == "__main__":
    main()
