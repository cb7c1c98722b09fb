"""What every command shares: one-line messages, exit codes, the error guard, JSON output.

Every failure a user can cause is one line ``diveq-codec: error: …`` on stderr and an exit
code from README's table; data and ``--json`` go to stdout.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

PROG = "diveq-codec"
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def say(message: str) -> None:
    """A message for the user (stderr, so that stdout stays data); dropped if stderr is closed."""
    if sys.stderr is None:
        return
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or vanished stderr must not turn into a traceback
        pass


def note(message: str) -> None:
    say(f"{PROG}: note: {message}")


def fail(code: int, message: str) -> NoReturn:
    say(f"{PROG}: error: {message}")
    raise typer.Exit(code)


def exit_code_of(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that ends a command or a batch item."""
    from diveq_codec.codec.errors import CodecError

    if isinstance(exc, CodecError):
        return exc.exit_code, str(exc)
    if isinstance(exc, ValueError):  # bad option values found below the parser (device, quality)
        return EXIT_USAGE, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, MemoryError):
        return EXIT_INTERNAL, "out of memory"
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def guarded(action: Callable[[], None]) -> None:
    """Run a command body, mapping every failure to one line and an exit code."""
    try:
        action()
    except typer.Exit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line, never a traceback
        if isinstance(exc, SystemExit):
            raise
        code, message = exit_code_of(exc)
        fail(code, message)


def _json_safe(value: Any) -> Any:
    # inf PSNR (identical images) is not valid JSON: report it as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def json_out(obj: Any) -> None:
    """One JSON document on one line of stdout."""
    if sys.stdout is None:
        from diveq_codec.codec.errors import OutputError

        raise OutputError("cannot write to standard output: it is closed")
    sys.stdout.write(json.dumps(_json_safe(obj)) + "\n")
    sys.stdout.flush()


def check_json_target(json_flag: bool, output: str) -> None:
    if json_flag and output == "-":
        fail(EXIT_USAGE, "--json and OUTPUT '-' both need stdout; write the output to a file")
