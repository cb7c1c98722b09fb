"""The CLI through typer's runner: outputs, refusals, JSON, stdin/stdout and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diveq_codec.codec.cli.app import app
from diveq_codec.codec.metrics import psnr

runner = CliRunner()


def run(*args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture
def encoded(tmp_path: Path, parrots_path: Path) -> Path:
    out = tmp_path / "p.dvq"
    assert run("encode", str(parrots_path), str(out)).exit_code == 0
    return out


def test_encode_json_reports_whole_file_bpp_and_true_psnr(tmp_path: Path, parrots_path: Path) -> None:
    out, png = tmp_path / "p.dvq", tmp_path / "p.png"
    result = run("encode", str(parrots_path), str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    w, h = Image.open(parrots_path).size
    assert report["bpp"] == pytest.approx(out.stat().st_size * 8 / (w * h), rel=1e-12)
    assert run("decode", str(out), str(png)).exit_code == 0
    decoded = np.asarray(Image.open(png))
    assert report["psnr"] == pytest.approx(psnr(np.asarray(Image.open(parrots_path).convert("RGB")), decoded), abs=0.01)


def test_decode_with_reference_reports_psnr(tmp_path: Path, encoded: Path, parrots_path: Path) -> None:
    result = run("decode", str(encoded), str(tmp_path / "o.png"), "--reference", str(parrots_path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["psnr"] > 15 and report["width"] == 256 and report["mode"] == "RGB"


def test_refuses_to_overwrite_without_force(tmp_path: Path, parrots_path: Path) -> None:
    out = tmp_path / "p.dvq"
    out.write_bytes(b"precious")
    result = run("encode", str(parrots_path), str(out))
    assert result.exit_code == 6
    assert out.read_bytes() == b"precious"
    assert run("encode", str(parrots_path), str(out), "--force").exit_code == 0
    assert out.read_bytes()[:4] == b"\x89DVQ"


def test_encode_never_overwrites_its_input(tmp_path: Path, parrots_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(parrots_path.read_bytes())
    assert run("encode", str(src), str(src), "--force").exit_code == 6
    assert src.read_bytes() == parrots_path.read_bytes()


def test_stdin_and_stdout(parrots_path: Path, tmp_path: Path) -> None:
    result = run("encode", "-", "-", input=parrots_path.read_bytes())
    assert result.exit_code == 0, result.stderr
    data = result.stdout_bytes
    assert data[:4] == b"\x89DVQ"
    decoded = run("decode", "-", "-", input=data)
    assert decoded.exit_code == 0
    png = tmp_path / "x.png"
    png.write_bytes(decoded.stdout_bytes)
    assert Image.open(png).size == (256, 192)


def test_json_with_stdout_output_is_a_usage_error(parrots_path: Path) -> None:
    assert run("encode", str(parrots_path), "-", "--json").exit_code == 2


def test_info_needs_no_model(encoded: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIVEQ_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    result = run("info", str(encoded), "--json")
    assert result.exit_code == 0, result.output
    header = json.loads(result.stdout)
    assert header["width"] == 256 and header["height"] == 192 and header["bytes"] == encoded.stat().st_size


def test_models_json_lists_rate_points() -> None:
    result = run("models", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows and all({"quality", "bpp", "psnr", "rate_weight"} <= set(r) for r in rows)


def test_models_table_columns_line_up_whatever_the_model_names() -> None:
    result = run("models")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) > 1
    stages_end = lines[0].index("stages") + len("stages")  # right-aligned under its heading
    assert all(line[stages_end - 1].isdigit() and line[stages_end] == " " for line in lines[1:])


@pytest.mark.parametrize("position", [0, 5, 20, 45, -40, -1])
def test_flipped_byte_is_a_bitstream_error(tmp_path: Path, encoded: Path, position: int) -> None:
    data = bytearray(encoded.read_bytes())
    data[position] ^= 0x5A
    bad = tmp_path / "bad.dvq"
    bad.write_bytes(bytes(data))
    result = run("decode", str(bad), str(tmp_path / "o.png"))
    assert result.exit_code == 3
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_truncated_file_is_a_bitstream_error(tmp_path: Path, encoded: Path) -> None:
    bad = tmp_path / "cut.dvq"
    bad.write_bytes(encoded.read_bytes()[:-10])
    assert run("decode", str(bad), str(tmp_path / "o.png")).exit_code == 3
    assert run("info", str(bad)).exit_code == 3


def test_unreadable_inputs(tmp_path: Path) -> None:
    assert run("encode", str(tmp_path / "missing.png"), str(tmp_path / "o.dvq")).exit_code == 5
    text = tmp_path / "t.png"
    text.write_text("not an image")
    result = run("encode", str(text), str(tmp_path / "o.dvq"))
    assert result.exit_code == 5 and "Traceback" not in result.output
    assert not (tmp_path / "o.dvq").exists()


def test_unwritable_output(tmp_path: Path, parrots_path: Path) -> None:
    assert run("encode", str(parrots_path), str(tmp_path / "no" / "such" / "dir.dvq")).exit_code == 6


def test_missing_weights_exit_code(tmp_path: Path, encoded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diveq_codec.codec import cards, zoo
    monkeypatch.setenv(cards.WEIGHTS_DIR_ENV, str(tmp_path / "empty"))
    zoo.clear_model_cache()
    assert run("decode", str(encoded), str(tmp_path / "o.png")).exit_code == 4
    zoo.clear_model_cache()


def test_bad_quality_and_usage(tmp_path: Path, parrots_path: Path) -> None:
    assert run("encode", str(parrots_path), str(tmp_path / "o.dvq"), "-q", "999").exit_code == 2
    assert run("encode").exit_code == 2
    assert run("encode", str(parrots_path), str(tmp_path / "o.dvq"), "--device", "tpu").exit_code == 2


def test_higher_efforts_write_other_files_that_any_decoder_reads(tmp_path: Path, parrots_path: Path) -> None:
    """The beam search chooses other indices (docs/results.md weighs them on Kodak), the
    refinement others again (a higher PSNR here), all in the same format; an unknown effort
    is a usage error."""
    files = [tmp_path / f"{effort}.dvq" for effort in (1, 2, 3)]
    reports = []
    for effort, out in enumerate(files, start=1):
        result = run("encode", str(parrots_path), str(out), "--effort", str(effort), "--json")
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    assert len({f.read_bytes() for f in files}) == 3
    assert reports[2]["psnr"] > reports[1]["psnr"]
    for out, report in zip(files[1:], reports[1:]):
        result = run("decode", str(out), str(tmp_path / "o.png"), "--reference", str(parrots_path), "--json", "--force")
        assert result.exit_code == 0 and json.loads(result.stdout)["psnr"] == pytest.approx(report["psnr"], abs=0.01)
    result = run("encode", str(parrots_path), str(tmp_path / "4.dvq"), "--effort", "4")
    assert result.exit_code == 2 and "effort" in result.output and not (tmp_path / "4.dvq").exists()


def test_reference_of_another_size_still_writes_the_image_and_warns(tmp_path: Path, encoded: Path,
                                                                    lighthouse_path: Path) -> None:
    out = tmp_path / "o.png"
    result = run("decode", str(encoded), str(out), "--reference", str(lighthouse_path))
    assert result.exit_code == 0
    assert out.exists() and "warning: reference" in result.stderr and "no PSNR" in result.stderr


@pytest.mark.parametrize("name", ["o.png", "o.webp", "o.tiff", "o.bmp"])
def test_decode_writes_the_format_its_extension_names_exactly(tmp_path: Path, encoded: Path, name: str) -> None:
    assert run("decode", str(encoded), str(tmp_path / "ref.png")).exit_code == 0
    result = run("decode", str(encoded), str(tmp_path / name))
    assert result.exit_code == 0, result.output
    written = Image.open(tmp_path / name)
    assert written.format == {"o.png": "PNG", "o.webp": "WEBP", "o.tiff": "TIFF", "o.bmp": "BMP"}[name]
    np.testing.assert_array_equal(np.asarray(written), np.asarray(Image.open(tmp_path / "ref.png")))


def test_jpeg_output_says_it_is_lossy_and_stdout_takes_format(tmp_path: Path, encoded: Path) -> None:
    result = run("decode", str(encoded), str(tmp_path / "o.jpg"), "--jpeg-quality", "80")
    assert result.exit_code == 0 and "JPEG is lossy" in result.stderr
    piped = run("decode", str(encoded), "-", "--format", "webp")
    assert piped.exit_code == 0 and piped.stdout_bytes[8:12] == b"WEBP"
    assert run("decode", str(encoded), "-").stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_reports_every_file_goes_on_past_a_failure_and_never_overwrites(
        tmp_path: Path, parrots_path: Path, lighthouse_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "lighthouse.dvq").write_bytes(b"precious")
    missing = tmp_path / "missing.png"
    result = run("encode", str(parrots_path), str(missing), str(lighthouse_path), "--out-dir", str(out),
                 "-q", "1", "--jobs", "2", "--json")
    assert result.exit_code == 5  # the first input that failed: missing.png
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(line["input"] for line in lines) == sorted([str(parrots_path), str(missing), str(lighthouse_path)])
    by_input = {line["input"]: line for line in lines}
    assert by_input[str(missing)]["exit_code"] == 5 and by_input[str(lighthouse_path)]["exit_code"] == 6
    assert (out / "lighthouse.dvq").read_bytes() == b"precious"
    assert by_input[str(parrots_path)]["bytes"] == (out / "parrots.dvq").stat().st_size
    decoded = run("decode", str(out / "parrots.dvq"), "--out-dir", str(out), "--format", "tiff")
    assert decoded.exit_code == 0 and Image.open(out / "parrots.tiff").size == (256, 192)


def test_pillow_opens_dvq_files_after_importing_the_plugin(encoded: Path, tmp_path: Path) -> None:
    import diveq_codec.codec.pillow_plugin  # noqa: F401  (registers the format)

    assert run("decode", str(encoded), str(tmp_path / "ref.png")).exit_code == 0
    with Image.open(encoded) as image:
        assert image.format == "DVQ" and image.size == (256, 192) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "ref.png")))
    with pytest.raises(OSError):
        Image.open(io.BytesIO(encoded.read_bytes()[:30])).load()
