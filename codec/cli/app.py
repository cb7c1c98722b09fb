"""The ``diveq-codec`` command line: the application, its start-up and the light commands.

Start-up imports only typer and the standard library: parsing, ``--help``, ``--version``,
``info``, ``models`` and every argument, path or header error answer without numpy or
PyTorch, which the commands import only once a network has to run.
"""

from __future__ import annotations

import signal
import sys

import typer

from diveq_codec.codec.cli import coding_commands, evaluation_commands
from diveq_codec.codec.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, PROG, guarded, json_out, say

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no type tags like <bool>, and no rich import at start-up
    context_settings={"help_option_names": ["-h", "--help"]},
    help="DiVeQ learned image codec: encode images to .dvq files and decode them back.",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diveq-codec")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """DiVeQ learned image codec: encode images to .dvq files and decode them back."""


@app.command()
def info(
    input: str = typer.Argument(..., metavar="FILE", help=".dvq file, or - for stdin"),
    json_flag: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Show a .dvq file's header (no model needed)."""

    def run() -> None:
        from diveq_codec.codec import container
        from diveq_codec.codec.file_io import read_input
        from diveq_codec.codec.metrics import bits_per_pixel

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
            json_out(fields)
        else:
            for key, value in fields.items():
                typer.echo(f"{key:16} {value:.4f}" if isinstance(value, float) else f"{key:16} {value}")

    guarded(run)


@app.command()
def models(json_flag: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """List the rate points (-q) with their measured Kodak bpp and PSNR."""

    def run() -> None:
        from diveq_codec.codec.cards import rate_points

        rows = [{"quality": p.quality, "model": p.model_name, "model_id": p.model_id, "stages": p.stages,
                 "bpp": p.kodak_bpp, "psnr": p.kodak_psnr, "rate_weight": p.rate_weight,
                 "layer_step": p.layer_step} for p in rate_points()]
        if json_flag:
            json_out(rows)
            return
        name_width = max([len("model")] + [len(r["model"]) for r in rows])  # the columns fit any name
        typer.echo(f"{'quality':>7}  {'model':<{name_width}}  {'stages':>6}  {'DCT layer':>9}  "
                   f"{'Kodak bpp':>9}  {'PSNR dB':>7}")
        for r in rows:
            bpp = f"{r['bpp']:.4f}" if r["bpp"] is not None else "-"
            ps = f"{r['psnr']:.2f}" if r["psnr"] is not None else "-"
            step = f"step {r['layer_step']:g}" if r["layer_step"] is not None else "-"
            typer.echo(f"{r['quality']:>7}  {r['model']:<{name_width}}  {r['stages']:>6}  {step:>9}  "
                       f"{bpp:>9}  {ps:>7}")

    guarded(run)


app.command("encode")(coding_commands.encode)
app.command("decode")(coding_commands.decode)
app.command("eval")(evaluation_commands.eval_command)
app.command("bench")(evaluation_commands.bench_command)


def _is_parser_error(exc: BaseException) -> bool:
    # typer vendors click and exports none of its usage-error classes, so they are told by
    # what every one of them has: a message formatter and an exit code.
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


def run_app(args: list[str]) -> int:
    """Run the command line on ``args``; return the exit code. Usage errors are one line, exit 2."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args or ["--help"], prog_name=PROG, standalone_mode=False)
    except typer.Abort:
        say(f"{PROG}: error: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_parser_error(exc):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if exc.exit_code == EXIT_USAGE and ctx is not None else ""
        say(f"{PROG}: error: {exc.format_message()}{hint}")
        return exc.exit_code
    return result if isinstance(result, int) else 0


def main() -> None:
    # Like cat or head: when the reader of stdout goes away (``| head``), end quietly by
    # SIGPIPE instead of reporting a BrokenPipeError.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    from diveq_codec.codec.cli.allocator import keep_freed_memory

    keep_freed_memory()
    sys.exit(run_app(sys.argv[1:]))


if __name__ == "__main__":
    main()
