"""codec.file_io: bounded reads, preflight refusals, and writes that are atomic even under SIGKILL."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from diveq_codec.codec import file_io
from diveq_codec.codec.errors import InputError, OutputError
from diveq_codec.codec.file_io import check_output, read_input, write_output

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0  # root bypasses permission bits, so those refusals cannot be provoked


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _debris(directory: Path, keep: str) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if entry.name != keep)


def _one_line(exc: pytest.ExceptionInfo[BaseException], *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# --- read_input --------------------------------------------------------------------------------


def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(b"\x00\x01payload")
    assert read_input(str(path)) == b"\x00\x01payload"


def test_read_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(b"from a pipe")))
    assert read_input("-") == b"from a pipe"


def test_read_stdin_over_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_io, "MAX_FILE_BYTES", 10)
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(bytes(11))))
    with pytest.raises(InputError) as caught:
        read_input("-")
    _one_line(caught, "standard input")


def test_read_file_over_limit_is_refused_from_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(11))
    monkeypatch.setattr(file_io, "MAX_FILE_BYTES", 10)
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: pytest.fail("opened despite its size"))
    with pytest.raises(InputError) as caught:
        read_input(str(path))
    _one_line(caught, str(path), "11 bytes")


def test_read_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        read_input(str(tmp_path / "nope.png"))
    _one_line(caught, "nope.png", "no such file")


def test_read_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        read_input(str(tmp_path))
    _one_line(caught, str(tmp_path), "directory")


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_read_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(InputError) as caught:
        read_input(str(path))
    _one_line(caught, "secret.png", "permission denied")


# --- check_output -------------------------------------------------------------------------------


def test_check_stdout_is_always_fine() -> None:
    check_output("-", force=False, inputs=["-"])


def test_check_new_file_is_fine(tmp_path: Path) -> None:
    check_output(str(tmp_path / "new.dvq"), force=False, inputs=[str(tmp_path / "in.png")])


def test_check_existing_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "out.dvq"
    path.write_bytes(b"old")
    with pytest.raises(OutputError) as caught:
        check_output(str(path), force=False)
    _one_line(caught, f"{path} exists; use --force to overwrite")
    check_output(str(path), force=True)


@pytest.mark.parametrize("alias", ["same", "relative", "symlink", "hardlink"])
def test_check_refuses_the_input_even_with_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alias: str) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(b"precious")
    monkeypatch.chdir(tmp_path)
    output = {"same": str(source), "relative": "./sub/../photo.png", "symlink": "link.png", "hardlink": "hard.png"}[alias]
    (tmp_path / "sub").mkdir()
    if alias == "symlink":
        os.symlink(source, output)
    elif alias == "hardlink":
        os.link(source, output)
    with pytest.raises(OutputError) as caught:
        check_output(output, force=True, inputs=[str(source)])
    _one_line(caught, "refusing to overwrite the input")


def test_check_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as caught:
        check_output(str(tmp_path), force=True)
    _one_line(caught, "directory")


def test_check_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as caught:
        check_output(str(tmp_path / "no" / "such" / "out.png"), force=True)
    _one_line(caught, "does not exist")


def test_check_non_regular_file() -> None:
    with pytest.raises(OutputError) as caught:
        check_output(os.devnull, force=True)
    _one_line(caught, "not a regular file")


@pytest.mark.skipif(IS_ROOT, reason="root writes anywhere whatever the permissions")
def test_check_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError) as caught:
            check_output(str(locked / "out.png"), force=True)
        _one_line(caught, "permission denied")
    finally:
        locked.chmod(0o755)


# --- write_output -------------------------------------------------------------------------------


def test_write_new_file(tmp_path: Path) -> None:
    path = tmp_path / "out.dvq"
    write_output(str(path), b"new content", force=False)
    assert path.read_bytes() == b"new content"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert _debris(tmp_path, "out.dvq") == []


def test_write_refuses_existing_without_force(tmp_path: Path) -> None:
    path = tmp_path / "out.dvq"
    path.write_bytes(b"old")
    with pytest.raises(OutputError) as caught:
        write_output(str(path), b"new", force=False)
    _one_line(caught, "exists; use --force")
    assert path.read_bytes() == b"old"
    assert _debris(tmp_path, "out.dvq") == []


def test_write_force_overwrites_and_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.dvq"
    path.write_bytes(b"old content, longer than the new")
    path.chmod(0o640)
    write_output(str(path), b"new", force=True)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o640
    assert _debris(tmp_path, "out.dvq") == []


def test_write_does_not_clobber_a_file_that_appeared_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.dvq"
    real_fsync = os.fsync

    def fsync_then_race(fd: int) -> None:
        real_fsync(fd)
        if not path.exists():
            path.write_bytes(b"someone else's")

    monkeypatch.setattr(os, "fsync", fsync_then_race)
    with pytest.raises(OutputError) as caught:
        write_output(str(path), b"ours", force=False)
    _one_line(caught, "exists")
    assert path.read_bytes() == b"someone else's"
    assert _debris(tmp_path, "out.dvq") == []


@pytest.mark.parametrize(("code", "fragment"), [
    (errno.ENOSPC, "disk full while writing"),
    (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only"),
])
def test_write_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   code: int, fragment: str) -> None:
    path = tmp_path / "out.dvq"
    path.write_bytes(b"old")
    calls = []

    def failing_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OutputError) as caught:
        write_output(str(path), b"x" * 100_000, force=True)
    monkeypatch.undo()
    assert calls, "the failure was not provoked"
    _one_line(caught, fragment, str(path))
    assert path.read_bytes() == b"old"
    assert _debris(tmp_path, "out.dvq") == []


def test_write_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as caught:
        write_output(str(tmp_path / "missing" / "out.png"), b"x", force=True)
    _one_line(caught, "out.png")


def test_write_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    write_output("-", b"\x89PNG binary\x00data", force=False)
    assert capsysbinary.readouterr().out == b"\x89PNG binary\x00data"


_WRITER = """
import sys
from diveq_codec.codec.file_io import write_output
target, size = sys.argv[1], int(sys.argv[2])
payloads = [bytes([k]) * (size + k) for k in (1, 2)]
print("ready", flush=True)
turn = 0
while True:
    write_output(target, payloads[turn % 2], force=True)
    turn += 1
"""


def test_sigkill_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """Kill a writer of 200 MB payloads at random moments: the target is always whole.

    Each payload is one repeated byte k with length SIZE + k (k = 0 for the original), so the
    first byte says which payload it must be and any partial or mixed file fails the check.
    The one kind of debris a kill may leave is the hidden temporary file, which is allowed.
    """
    size = 200 << 20
    target = tmp_path / "target.bin"
    target.write_bytes(bytes(size))
    chooser = random.Random(20240611)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(size)],
                                  stdout=subprocess.PIPE, env=env)
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        time.sleep(chooser.uniform(0.05, 0.8))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        content = target.read_bytes()
        kind = content[0]
        assert kind in (0, 1, 2)
        assert len(content) == size + kind
        assert content.count(bytes([kind])) == len(content)
        del content
        debris = _debris(tmp_path, "target.bin")
        assert all(name.startswith(".target.bin.") and name.endswith(".tmp") for name in debris), debris
        for name in debris:
            (tmp_path / name).unlink()
