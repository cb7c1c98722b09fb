"""Bytes in and out, with the refusals a command-line tool owes its user.

Reading is bounded (MAX_FILE_BYTES) so a huge or endless input cannot exhaust memory.
Writing is atomic: the data goes to a temporary file in the target's directory, is fsynced,
and only then renamed over the target, so a crash, a kill or a full disk leaves either the old
file or the complete new one, never a partial one. The only possible debris of a kill is the
hidden temporary file ".NAME.XXXXXXXX.tmp" beside the target (NAME cut to 24 characters).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Sequence

from diveq_codec.codec.errors import InputError, OutputError
from diveq_codec.codec.limits import MAX_FILE_BYTES

STDIO = "-"
_LIMIT_TEXT = f"{MAX_FILE_BYTES:,}-byte input limit"


def read_input(path: str) -> bytes:
    """The bytes of path ("-": standard input), or InputError naming the path.

    The size is checked from os.stat before reading, and the read itself is capped at
    MAX_FILE_BYTES + 1 so that pipes, devices and files growing meanwhile are bounded too.
    """
    if path == STDIO:
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # started with stdin closed (`<&-`)
            raise InputError("cannot read standard input: it is closed")
        if is_terminal(stream):
            raise InputError("standard input is a terminal; pipe an image in or give a file name")
        try:
            data = stream.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read standard input: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise InputError(f"standard input exceeds the {_LIMIT_TEXT}")
        return data
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"cannot read {path}: it is a directory")
        if info.st_size > MAX_FILE_BYTES:
            raise InputError(f"cannot read {path}: {info.st_size:,} bytes exceeds the {_LIMIT_TEXT}")
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: it is a directory") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"cannot read {path}: it exceeds the {_LIMIT_TEXT}")
    return data


def is_terminal(stream: object) -> bool:
    """Whether a stream is a terminal; False for a closed, replaced or missing one."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


def _is_same_file(a: str, b: str) -> bool:
    """Whether a and b name one file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, force: bool, inputs: Sequence[str] = ()) -> None:
    """Refuse, before any heavy work, an output that write_output would refuse or regret.

    Overwriting an input is refused even with force: the input would be gone before the user
    could compare. An existing non-regular file (a device, a FIFO) is refused because the
    atomic rename would replace the node itself rather than write into it; use "-" instead.
    """
    if path == STDIO:
        return
    for source in inputs:
        if source != STDIO and os.path.lexists(path) and _is_same_file(path, source):
            raise OutputError(f"{path} is the input {source}; refusing to overwrite the input")
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: it is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    if os.path.lexists(path):
        if not force:
            raise OutputError(f"{path} exists; use --force to overwrite")
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise OutputError(f"cannot write {path}: not a regular file (write to - and redirect instead)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"permission denied: cannot create files in {parent}")


def _output_error(path: str, exc: OSError) -> OutputError:
    """A one-line OutputError for an OSError met while writing path."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"disk full while writing {path}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"permission denied: {path}")
    if exc.errno == errno.EROFS:
        return OutputError(f"cannot write {path}: read-only file system")
    if exc.errno == errno.EISDIR:
        return OutputError(f"cannot write {path}: it is a directory")
    if exc.errno == errno.ENOENT:
        return OutputError(f"cannot write {path}: its directory does not exist")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def _new_file_mode(target: str) -> int:
    """Permissions for the written file: the replaced file's, else 0o666 minus the umask.

    mkstemp creates 0o600; without this, a replaced or new output would lose its permissions.
    The umask can only be read by setting it, so it is set and restored at once.
    """
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(os.stat(target).st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _commit(temp: str, target: str, force: bool) -> None:
    """Move the finished temp file into place, without clobbering a file that appeared meanwhile.

    Without force, os.link fails atomically if the target exists; on file systems without hard
    links, existence is re-checked right before os.replace (a far smaller window).
    """
    if force:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)
    except FileExistsError:
        raise OutputError(f"{target} exists; use --force to overwrite") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
            raise
        if os.path.lexists(target):
            raise OutputError(f"{target} exists; use --force to overwrite") from None
        os.replace(temp, target)
        return
    os.unlink(temp)


def write_output(path: str, data: bytes, force: bool) -> None:
    """Write data to path ("-": standard output) atomically, or raise OutputError.

    On any failure the temporary file is removed and an existing target is left untouched.
    """
    if path == STDIO:
        stream = getattr(sys.stdout, "buffer", None)
        if stream is None:  # started with stdout closed (`>&-`)
            raise OutputError("cannot write to standard output: it is closed")
        try:
            stream.write(data)
            stream.flush()
        except OSError as exc:
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None
        return
    if not force and os.path.lexists(path):
        raise OutputError(f"{path} exists; use --force to overwrite")
    target = os.path.abspath(path)
    directory, name = os.path.split(target)
    try:
        # A short temporary name: the target's own may already be at the file system's limit.
        fd, temp = tempfile.mkstemp(prefix=f".{name[:24]}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        try:
            os.fchmod(fd, _new_file_mode(target))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(temp, target, force)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _output_error(path, exc) from None
        raise
    # Make the rename itself durable; the data is already in place, so failure here is moot.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
