"""The command line's contract before any work: one-line errors with exit 2, --version and -h,
and start-up without PyTorch for everything that needs no network."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diveq_codec.codec.cli.app import run_app


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diveq-codec: error: "), err
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["frobnicate"], "No such command"),
    (["encode", "a.png", "b.dvq", "--speed", "3"], "No such option: --speed"),
    (["info", "--json"], "Missing argument"),
    (["encode"], "Missing argument"),
    (["encode", "a.png", "b.dvq", "-q", "0"], "--quality"),
    (["encode", "a.png", "b.dvq", "--effort", "4"], "--effort"),
    (["encode", "a.png", "b.dvq", "--device", "tpu"], "--device"),
    (["encode", "a.png", "b.dvq", "--jobs", "0"], "--jobs"),
    (["decode", "a.dvq", "b.png", "--jpeg-quality", "101"], "--jpeg-quality"),
    (["encode", "a.png", "b.png", "c.dvq"], "--out-dir"),
    (["decode", "a.dvq", "out.gif"], "'.gif' is not an image format"),
    (["decode", "a.dvq", "out"], "no extension"),
    (["decode", "a.dvq", "--out-dir", ".", "--format", "gif"], "unknown output format"),
    (["decode", "a.dvq", "--out-dir", ".", "--reference", "a.png"], "--reference"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(args) == 2
    assert words in one_error_line(capsys)


def test_an_unknown_quality_is_a_usage_error(parrots_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(["encode", str(parrots_path), str(tmp_path / "a.dvq"), "-q", "99"]) == 2
    assert "quality 99 is not available" in one_error_line(capsys)
    assert not (tmp_path / "a.dvq").exists()


def test_version_and_short_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(["--version"]) == 0
    assert capsys.readouterr().out.startswith("diveq-codec ")
    for args in (["-h"], ["encode", "-h"], ["decode", "--help"], []):
        assert run_app(args) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage: diveq-codec") and "<bool>" not in out


def test_batch_needs_a_folder_and_distinct_outputs(tmp_path: Path, parrots_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(["encode", str(parrots_path), "--out-dir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in one_error_line(capsys)
    twin = tmp_path / "parrots.jpg"
    twin.write_bytes(b"x")
    assert run_app(["encode", str(parrots_path), str(twin), "--out-dir", str(tmp_path)]) == 2
    assert "both be written" in one_error_line(capsys)


@pytest.fixture(scope="module")
def golden_dvq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diveq_codec import codec

    path = tmp_path_factory.mktemp("dvq") / "parrots.dvq"
    path.write_bytes(codec.encode(Path(__file__).parents[1] / "samples" / "parrots.png", quality=1, device="cpu"))
    return path


# Each case runs in a fresh interpreter, which then must not have loaded numpy or PyTorch.
LIGHT_CASES = {
    "help": ["--help"],
    "version": ["--version"],
    "encode help": ["encode", "--help"],
    "models": ["models"],
    "missing input": ["encode", "{missing}", "{out}"],
    "bad quality": ["encode", "{image}", "{out}", "-q", "99"],
    "existing output": ["encode", "{image}", "{image}"],
    "unknown extension": ["decode", "{dvq}", "{out}.gif"],
    "damaged header": ["decode", "{junk}", "{out}.png"],
    "damaged payload": ["decode", "{flipped}", "{out}.png"],
    "info": ["info", "{dvq}"],
}


def test_answers_that_need_no_network_do_not_import_numpy_or_torch(tmp_path: Path, parrots_path: Path,
                                                                     golden_dvq: Path) -> None:
    junk = tmp_path / "junk.dvq"
    junk.write_bytes(golden_dvq.read_bytes()[:20])
    flipped = tmp_path / "flipped.dvq"  # a bit flipped in the payload: the CRC tells
    damaged = bytearray(golden_dvq.read_bytes())
    damaged[50] ^= 1
    flipped.write_bytes(bytes(damaged))
    names = {"missing": str(tmp_path / "nope.png"), "out": str(tmp_path / "out"), "image": str(parrots_path),
             "dvq": str(golden_dvq), "junk": str(junk), "flipped": str(flipped)}
    cases = {name: [arg.format(**names) for arg in args] for name, args in LIGHT_CASES.items()}
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        from diveq_codec.codec.cli.app import run_app
        results = {}
        for name, args in json.loads(sys.argv[1]).items():
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results[name] = run_app(args)
        heavy = sorted(m for m in ("torch", "numpy", "PIL", "constriction", "rich") if m in sys.modules)
        print(json.dumps({"codes": results, "heavy": heavy}))
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, check=True)
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    assert report["codes"] == {"help": 0, "version": 0, "encode help": 0, "models": 0, "missing input": 5,
                               "bad quality": 2, "existing output": 6, "unknown extension": 2,
                               "damaged header": 3, "damaged payload": 3, "info": 0}
