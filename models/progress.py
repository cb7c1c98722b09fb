"""Progress of long network work (tiles of a large image, refinement steps), for whoever listens.

The loops call ``report(stage, done, total)``; a caller that wants a progress bar wraps its
work in ``with listening(callback):``. A context variable carries the listener, so threads
coding different files each hear only their own work, and nothing is printed from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str, int, int], None]

_listener: ContextVar[Listener | None] = ContextVar("diveq_progress_listener", default=None)


@contextmanager
def listening(callback: Listener) -> Iterator[None]:
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


def report(stage: str, done: int, total: int) -> None:
    callback = _listener.get()
    if callback is not None:
        callback(stage, done, total)
