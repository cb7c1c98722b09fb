"""The command line's allocator settings (codec/allocator.py)."""

from __future__ import annotations

import platform

import pytest

from codec import cli
from codec.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's mallopt")
def test_glibc_takes_the_settings() -> None:
    assert keep_freed_memory() is True


def test_the_command_line_applies_them(monkeypatch: pytest.MonkeyPatch) -> None:
    applied = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: applied.append(True))
    monkeypatch.setattr(cli, "app", lambda: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *_: None)  # leave the test process's SIGPIPE alone
    cli.main()
    assert applied == [True]
