"""Every error a user can cause, each with the exit code the CLI documents.

Library code raises these; the CLI turns them into one line on stderr and the exit code.
Anything else reaching the CLI is a bug (exit code 1).
"""

from __future__ import annotations


class CodecError(Exception):
    """Base class: a one-line, user-facing message."""

    exit_code = 1


class UsageError(CodecError):
    """A bad option, argument or combination of them, found before any work is done."""

    exit_code = 2


class BitstreamError(CodecError):
    """The input is not a valid .dvq file (bad magic, version, CRC, lengths, payload)."""

    exit_code = 3


class UnsupportedVersionError(BitstreamError):
    """A .dvq file of a format version this build does not read."""


class CorruptBitstreamError(BitstreamError):
    """Checksum, length or payload inconsistency: the file is damaged or truncated."""


class WeightsError(CodecError):
    """Model weights missing, failing their sha256, or not the ones a file was made with."""

    exit_code = 4


class InputError(CodecError):
    """An input file that cannot be read or is not a supported image (incl. too large)."""

    exit_code = 5


class OutputError(CodecError):
    """The output cannot be written: exists without --force, permission, disk full."""

    exit_code = 6
