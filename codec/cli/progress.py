"""Progress on stderr for work that can pass a couple of seconds.

A bar redrawn in place when stderr is a terminal; nothing at all when it is not (a log, a
pipe) or with ``--quiet``, so that scripts see only the one-line results.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from diveq_codec.codec.file_io import is_terminal


def stderr_is_terminal() -> bool:
    return is_terminal(sys.stderr)


class Progress:
    """``with Progress(total, "encode") as bar: ... bar.advance()``; silent unless shown."""

    WIDTH = 24
    MIN_INTERVAL_S = 0.1  # redraws are throttled so a fast loop does not spend its time drawing

    def __init__(self, total: int, label: str, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.shown = not quiet and (stream is not None or stderr_is_terminal())
        self._start = time.monotonic()
        self._last_draw = 0.0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def advance(self, steps: int = 1, detail: str = "") -> None:
        self.done = min(self.done + steps, self.total)
        self._draw(detail=detail, force=self.done == self.total)

    def print_line(self, message: str) -> None:
        """A line of its own on stderr, with the bar (if shown) redrawn below it."""
        if self.shown:
            self.stream.write("\r" + " " * 80 + "\r")
        self.stream.write(message + "\n")
        self.stream.flush()
        self._draw(force=True)

    def _draw(self, detail: str = "", force: bool = False) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.MIN_INTERVAL_S:
            return
        self._last_draw = now
        filled = self.WIDTH * self.done // self.total
        elapsed = now - self._start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} "
                f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left {detail}")
        self.stream.write(line[:200].ljust(80))
        self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 80 + "\r")  # leave the terminal clean for the result lines
            self.stream.flush()


class StageProgress:
    """One file's long work as it goes: ``label stage [###...] done/total``, redrawn in place.

    Called by the network's loops (diveq_codec.models.progress) with (stage, done, total);
    silent unless stderr is a terminal and not ``--quiet``.
    """

    WIDTH = 24
    MIN_INTERVAL_S = 0.2

    def __init__(self, label: str, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.shown = not quiet and (stream is not None or stderr_is_terminal())
        self.drawn = False
        self._last_draw = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.shown or (done < total and now - self._last_draw < self.MIN_INTERVAL_S):
            return
        self._last_draw = now
        filled = self.WIDTH * done // max(total, 1)
        line = f"\r{self.label}: {stage} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}"
        self.stream.write(line[:200].ljust(80))
        self.stream.flush()
        self.drawn = True

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()
