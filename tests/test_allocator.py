"""The command line's allocator settings (codec/cli/allocator.py)."""

from __future__ import annotations

import platform

import pytest

from diveq_codec.codec.cli.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's mallopt")
def test_glibc_takes_the_settings() -> None:
    assert keep_freed_memory() is True
