"""Standard streams that are closed, a terminal, or gone: one line and a documented exit code,
never an internal error; long output names; an input (the --reference too) never overwritten."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from diveq_codec.codec.cli.app import run_app

CLI = [sys.executable, "-m", "diveq_codec.codec.cli.app"]


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CLI": " ".join(CLI)})


@pytest.fixture(scope="module")
def dvq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diveq_codec import codec

    path = tmp_path_factory.mktemp("streams") / "p.dvq"
    path.write_bytes(codec.encode(Path(__file__).parents[1] / "samples" / "parrots.png", quality=1, device="cpu"))
    return path


@pytest.mark.parametrize("command, code, words", [
    ("$CLI encode - out.dvq <&-", 5, "standard input: it is closed"),
    ("$CLI info - <&-", 5, "standard input: it is closed"),
    ("$CLI decode p.dvq - >&-", 6, "standard output: it is closed"),
])
def test_closed_streams(dvq: Path, command: str, code: int, words: str) -> None:
    done = run_shell(command, dvq.parent)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [f"diveq-codec: error: {words}"] or words in done.stderr


def test_a_reader_that_goes_away_ends_quietly(dvq: Path) -> None:
    done = run_shell("$CLI decode p.dvq - | head -c 10 > /dev/null; echo ${PIPESTATUS[0]}", dvq.parent)
    assert done.stdout.strip() in ("0", "141")  # finished first, or killed by SIGPIPE as documented
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


def test_a_terminal_on_stdin_is_refused_rather_than_waited_on(tmp_path: Path) -> None:
    parent, child = pty.openpty()
    try:
        done = subprocess.run([*CLI, "encode", "-", str(tmp_path / "o.dvq")], stdin=child, capture_output=True,
                              text=True, timeout=120)
    finally:
        os.close(parent)
        os.close(child)
    assert done.returncode == 5 and "terminal" in done.stderr


def test_a_name_at_the_file_system_limit(dvq: Path, tmp_path: Path) -> None:
    name = "a" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 4) + ".png"
    assert run_app(["decode", str(dvq), str(tmp_path / name)]) == 0
    assert (tmp_path / name).stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_the_reference_is_never_the_output_even_with_force(dvq: Path, tmp_path: Path, parrots_path: Path,
                                                           alias: str) -> None:
    original = tmp_path / "original.png"
    original.write_bytes(parrots_path.read_bytes())
    target = {"same": original, "symlink": tmp_path / "link.png", "hardlink": tmp_path / "hard.png"}[alias]
    if alias == "symlink":
        target.symlink_to(original)
    elif alias == "hardlink":
        os.link(original, target)
    assert run_app(["decode", str(dvq), str(target), "--reference", str(original), "--force"]) == 6
    assert original.read_bytes() == parrots_path.read_bytes()
