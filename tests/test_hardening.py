"""Hardening (issue 5): fuzzed bitstreams, hostile images, output safety, determinism, concurrency.

What the other test files already cover is not repeated here: the container's own refusals
(test_bitstream), the image reader called directly (test_image_io), and through the CLI a text
file as input, a missing output directory and encoding onto the input's own path (test_cli).
The 100,000-case fuzz run is scripts/fuzz_bitstream.py; tiling and the 4000×3000 benchmark are
in test_tiling.py.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import fuzzing
from diveq_codec.codec import container, file_io
from diveq_codec.codec.cli.app import app
from diveq_codec.codec.limits import MAX_PIXELS, MAX_SIDE
from diveq_codec.codec.pipeline import decode, decode_detailed, encode

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args: str, input: bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def png_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def noise(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def assert_refused(result, code: int, folder: Path, expected_files: set[str], fragment: str = "") -> None:
    """The documented exit code, exactly one line on stderr, no traceback, nothing written."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("diveq-codec: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert {p.name for p in folder.iterdir()} == expected_files  # no output, no temp debris


# --- 1. bitstream fuzzing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bases() -> dict[str, bytes]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fuzzing.make_bases("cpu")
    finally:
        torch.set_num_threads(before)


def test_fuzz_300_cases(bases: dict[str, bytes]) -> None:
    """A seeded short version of scripts/fuzz_bitstream.py: every outcome a CodecError or a right image."""
    summary = fuzzing.fuzz(300, seed=20240517, bases=bases, device="cpu")
    report = "\n".join(summary.lines())
    assert summary.ok, report
    assert summary.cases == 300 and summary.max_time_s < fuzzing.TIME_LIMIT_S, report
    # The damage reached the deep paths, not only the CRC: some files decode, several error kinds occur.
    assert summary.outcomes["decoded"] > 0 and summary.outcomes["CorruptBitstreamError"] > 0, report
    assert len(summary.outcomes) >= 4, report


def test_bases_at_every_rate_point_for_the_long_runs() -> None:
    """scripts/fuzz_bitstream.py --every-quality starts from each small image at every rate point."""
    from diveq_codec.codec.zoo import rate_points

    every = fuzzing.make_bases("cpu", every_quality=True)
    qualities = [p.quality for p in rate_points()]
    assert sorted(every) == sorted(f"{name}@q{q}" for name in fuzzing.base_images() for q in qualities)
    assert all(fuzzing.get_field(data, "quality") == int(name.rsplit("@q", 1)[1]) for name, data in every.items())
    summary = fuzzing.fuzz(40, seed=7, bases=every, device="cpu", trace_memory=False)
    assert summary.ok, "\n".join(summary.lines())


def test_every_strategy_changes_the_file(bases: dict[str, bytes]) -> None:
    seen = set()
    for index in range(400):
        name, data = fuzzing.make_case(3, index, bases)
        base, strategy, _ = name.split("/")
        assert data != bases[base], name
        seen.add(strategy)
    assert seen == set(fuzzing.STRATEGIES)


def test_cases_are_reproducible(bases: dict[str, bytes]) -> None:
    assert [fuzzing.make_case(9, i, bases) for i in range(50)] == [fuzzing.make_case(9, i, bases) for i in range(50)]


@pytest.mark.parametrize(("width", "height", "error"), [
    (MAX_SIDE + 1, 8, "side limit"),  # over the limits: refused by the header check
    (MAX_SIDE, MAX_SIDE, "pixel limit"),
    (10_000, 6_000, "pixel limit"),
    (7_071, 7_071, "entropy-coded payload"),  # legal size, 66-byte file: the payload runs out at once
    (4_000, 3_000, "entropy-coded payload"),
])
def test_giant_declared_image_behind_a_valid_crc(bases: dict[str, bytes], width: int, height: int, error: str) -> None:
    """A tiny file declaring a huge image, with a latent grid to match: refused without the allocation."""
    data = bases["rgb16x16"]
    for name, value in (("width", width), ("height", height), ("latent_h", -(-height // 8)),
                        ("latent_w", -(-width // 8))):
        data = fuzzing.set_field(data, name, value)
    data = fuzzing.fix_crc(data)
    tracemalloc.start()
    try:
        with pytest.raises(container.BitstreamError, match=error):
            decode(data, device="cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Far below the image (3 × width × height bytes): at most the index array of the declared grid.
    assert peak < 64 << 20 and peak < 3 * width * height / 4


def test_a_flat_image_pays_the_least_payload_for_its_size() -> None:
    """A flat image's stream is a few words: the encoder pads it to one byte per 1,024
    pixels, and the file decodes; the same stream without the padding is refused before any
    decoding, so no small file declares a large image's work."""
    from diveq_codec.codec import index_coder

    image = Image.new("RGB", (512, 384), (120, 130, 140))
    data = encode(image, quality=1, device="cpu")
    parsed = container.unpack(data)
    least = index_coder.min_payload_bytes(512 * 384)
    assert len(parsed.payload) == least == 192 and parsed.payload.endswith(bytes(64))
    decoded = np.asarray(decode(data, "cpu"), dtype=int)
    assert decoded.shape == (384, 512, 3) and np.abs(decoded - (120, 130, 140)).mean() < 16
    stream = parsed.payload.rstrip(b"\x00")
    stream += bytes(-len(stream) % 4)
    unpadded = container.pack(container.Container(parsed.header, stream, b""))
    with pytest.raises(container.BitstreamError, match="bytes the image's size requires"):
        decode(unpadded, "cpu")


# --- 2. hostile and unusual images through the CLI --------------------------------------------------------


def _png_declaring(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR (CRC fixed) declares width × height: a decompression bomb."""
    data = bytearray(png_bytes(Image.new("RGB", (8, 8))))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _truncated_jpeg() -> bytes:
    data = png_bytes(Image.fromarray(noise(64, 64)), "JPEG", quality=90)
    scan = data.index(b"\xff\xda")
    return data[:scan + (len(data) - scan) // 2]


REFUSED = {
    "bomb_over_our_limit": (lambda: _png_declaring(10_000, 6_000), f"{MAX_PIXELS:,}-pixel limit"),
    "bomb_over_pillows_limit": (lambda: _png_declaring(20_000, 20_000), "image too large"),
    "bomb_side": (lambda: _png_declaring(MAX_SIDE + 1, 2), "side limit"),
    "truncated_png": (lambda: png_bytes(Image.fromarray(noise(64, 64)))[:400], "truncated"),
    "truncated_jpeg": (_truncated_jpeg, "truncated"),
    "zero_bytes": (lambda: b"", "empty"),
    "random_bytes": (lambda: noise(64, 64).tobytes(), "not a recognised image"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unreadable_image_exit_5(tmp_path: Path, case: str) -> None:
    build, fragment = REFUSED[case]
    src = tmp_path / "input.img"
    src.write_bytes(build())
    result = cli("encode", str(src), str(tmp_path / "out.dvq"))
    assert_refused(result, 5, tmp_path, {"input.img"}, fragment)


def _frames(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 16), (v, v, v)) for v in (40, 120, 200)]
    return png_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, lossless=True)


def _exif_jpeg() -> bytes:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return png_bytes(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def _palette_with_transparency() -> tuple[bytes, np.ndarray]:
    indices = noise(20, 12, 1, seed=3) % 4
    img = Image.frombytes("P", (20, 12), indices.tobytes())
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250] + [0] * 756)
    return png_bytes(img, transparency=2), np.where(indices == 2, 0, 255).astype(np.uint8)


def _with_alpha(mode: str) -> tuple[bytes, np.ndarray]:
    alpha = noise(21, 13, 1, seed=5)
    colour = noise(21, 13, 1 if mode == "LA" else 3, seed=6)
    image = Image.fromarray(np.dstack([colour, alpha]))  # (H, W, 2) → LA, (H, W, 4) → RGBA
    assert image.mode == mode
    return png_bytes(image), alpha


# name -> (input bytes, expected decoded (width, height), expected mode, note on stderr or None, exact alpha)
def _accepted() -> dict[str, tuple[bytes, tuple[int, int], str, str | None, np.ndarray | None]]:
    pal, pal_alpha = _palette_with_transparency()
    la, la_alpha = _with_alpha("LA")
    rgba, rgba_alpha = _with_alpha("RGBA")
    sixteen = Image.fromarray(noise(19, 11, 1).astype(np.uint16) * 257)  # mode I;16
    cmyk = Image.frombytes("CMYK", (18, 14), noise(18, 14, 4).tobytes())
    return {
        "1x1": (png_bytes(Image.fromarray(noise(1, 1))), (1, 1), "RGB", None, None),
        "1xN": (png_bytes(Image.fromarray(noise(1, 37))), (1, 37), "RGB", None, None),
        "Nx1": (png_bytes(Image.fromarray(noise(37, 1))), (37, 1), "RGB", None, None),
        "16bit_gray_png": (png_bytes(sixteen), (19, 11), "L", "16-bit input reduced to 8 bits", None),
        "cmyk_jpeg": (png_bytes(cmyk, "JPEG", quality=95), (18, 14), "RGB",
                      "CMYK image converted to RGB (Pillow's conversion, no colour profile)", None),
        "palette_transparency": (pal, (20, 12), "RGBA", None, pal_alpha),
        "la": (la, (21, 13), "LA", None, la_alpha),
        "rgba": (rgba, (21, 13), "RGBA", None, rgba_alpha),
        "animated_gif": (_frames("GIF"), (24, 16), "RGB", "animated image: coding the first of 3 frames", None),
        "animated_webp": (_frames("WEBP"), (24, 16), None, "animated image: coding the first of 3 frames", None),
        "exif_rotated_jpeg": (_exif_jpeg(), (20, 30), "RGB", "EXIF orientation applied", None),
    }


ACCEPTED = _accepted()


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_unusual_image_round_trip(tmp_path: Path, case: str) -> None:
    data, size, mode, note, alpha = ACCEPTED[case]
    src, coded, out = tmp_path / "input.img", tmp_path / "coded.dvq", tmp_path / "out.png"
    src.write_bytes(data)
    result = cli("encode", str(src), str(coded))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("diveq-codec: note:")]
    assert notes == ([f"diveq-codec: note: {note}"] if note else [])
    result = cli("decode", str(coded), str(out))
    assert result.exit_code == 0, result.output
    decoded = Image.open(out)
    assert decoded.size == size
    if mode is not None:
        assert decoded.mode == mode
    else:  # animated WebP: Pillow may hand the frame over with an (opaque) alpha channel
        assert decoded.mode in ("RGB", "RGBA")
        if decoded.mode == "RGBA":
            assert np.asarray(decoded)[..., 3].min() == 255
    if alpha is not None:
        assert np.array_equal(np.asarray(decoded)[..., -1], alpha)
    if case.startswith("animated"):  # the first frame (gray 40), not the second (120)
        assert abs(np.asarray(decoded.convert("L")).astype(float).mean() - 40) < 25
    if case == "exif_rotated_jpeg":  # the bright band is on top after rotation
        gray = np.asarray(decoded.convert("L")).astype(float)
        assert gray[:8].mean() > gray[14:].mean() + 80


# --- 3. output safety -------------------------------------------------------------------------------------


def _is_temp(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
    except OSError:
        return False


@pytest.mark.parametrize("failing", ["write", "fsync"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_on_encode_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str,
                                                err: int) -> None:
    """os.write (after half the data) or os.fsync fails with ENOSPC: exit 6, old file intact, no debris."""
    out = tmp_path / "out.dvq"
    out.write_bytes(b"the previous, complete file")
    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data) -> int:
        if not _is_temp(fd):
            return real_write(fd, data)
        view = memoryview(data)
        if len(view) > 1:
            return real_write(fd, view[:len(view) // 2])  # a partial write, then the disk is full
        raise OSError(err, os.strerror(err))

    def fsync(fd: int) -> None:
        if _is_temp(fd):
            raise OSError(err, os.strerror(err))
        real_fsync(fd)

    monkeypatch.setattr(file_io.os, failing, write if failing == "write" else fsync)
    result = cli("encode", str(SAMPLES / "lighthouse.png"), str(out), "--force")
    monkeypatch.undo()
    assert_refused(result, 6, tmp_path, {"out.dvq"}, "disk full")
    assert out.read_bytes() == b"the previous, complete file"


def test_full_disk_on_decode_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coded = tmp_path / "in.dvq"
    coded.write_bytes(encode(SAMPLES / "lighthouse.png", device="cpu"))
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if _is_temp(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(file_io.os, "fsync", fsync)
    result = cli("decode", str(coded), str(tmp_path / "out.png"))
    monkeypatch.undo()
    assert_refused(result, 6, tmp_path, {"in.dvq"}, "disk full")


def test_read_only_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(file_io.tempfile, "mkstemp", mkstemp)
    result = cli("encode", str(SAMPLES / "lighthouse.png"), str(tmp_path / "out.dvq"))
    monkeypatch.undo()
    assert_refused(result, 6, tmp_path, set(), "read-only")


def test_unwritable_outputs(tmp_path: Path) -> None:
    src = SAMPLES / "lighthouse.png"
    (tmp_path / "plain").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    expected = {"plain", "folder"}
    # A path below a regular file; an existing directory (even with --force).
    assert_refused(cli("encode", str(src), str(tmp_path / "plain" / "out.dvq")), 6, tmp_path, expected)
    assert_refused(cli("encode", str(src), str(tmp_path / "folder"), "--force"), 6, tmp_path, expected, "directory")
    assert not any((tmp_path / "folder").iterdir())


def test_directory_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with privileges that ignore directory permissions (root)")
        result = cli("encode", str(SAMPLES / "lighthouse.png"), str(locked / "out.dvq"))
        assert_refused(result, 6, locked, set(), "permission denied")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_never_overwrites_the_input_through_a_link(tmp_path: Path, link: str) -> None:
    src = tmp_path / "in.png"
    src.write_bytes((SAMPLES / "lighthouse.png").read_bytes())
    alias = tmp_path / "alias.dvq"
    (os.symlink if link == "symlink" else os.link)(src, alias)
    assert_refused(cli("encode", str(src), str(alias), "--force"), 6, tmp_path, {"in.png", "alias.dvq"}, "input")
    assert src.read_bytes() == (SAMPLES / "lighthouse.png").read_bytes()
    coded = tmp_path / "c.dvq"
    coded.write_bytes(encode(src, device="cpu"))
    before = coded.read_bytes()
    image_alias = tmp_path / "c.png"  # an image name, so that only the link can refuse it
    (os.symlink if link == "symlink" else os.link)(coded, image_alias)
    assert_refused(cli("decode", str(coded), str(image_alias), "--force"), 6, tmp_path,
                   {"in.png", "alias.dvq", "c.dvq", "c.png"}, "input")
    assert coded.read_bytes() == before


# --- 4. determinism -----------------------------------------------------------------------------------------


def _cli_command() -> list[str]:
    script = Path(sys.executable).parent / "diveq-codec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "diveq_codec.codec.cli.app"]


def _env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


_ENCODE_IN_CHILD = """
import sys
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[1]))
from diveq_codec.codec.pipeline import decode, encode
folder = sys.argv[2]
for i, path in enumerate(sys.argv[3:]):
    data = encode(path, device="cpu")
    with open(f"{folder}/{i}.dvq", "wb") as fh:
        fh.write(data)
    np.save(f"{folder}/{i}.npy", np.asarray(decode(data, device="cpu")))
print(torch.get_num_threads())
"""


@pytest.fixture(scope="module")
def determinism_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("det")
    strip = Image.fromarray(np.tile(np.asarray(Image.open(SAMPLES / "parrots.png").convert("RGB")), (1, 3, 1))[:72])
    strip.save(folder / "strip.png")  # 768×72: wider than a tile, so the tiled path runs
    rgba = Image.fromarray(np.dstack([noise(40, 30, 3, seed=8), noise(40, 30, 1, seed=9)]))
    rgba.save(folder / "rgba.png")
    return [SAMPLES / "parrots.png", SAMPLES / "lighthouse.png", folder / "strip.png", folder / "rgba.png"]


@pytest.mark.slow  # over 10 s on the 2-core machine
def test_bytes_identical_across_threads_processes_and_cli(tmp_path: Path, determinism_inputs: list[Path]) -> None:
    outputs = {}
    for threads in (1, 2):
        folder = tmp_path / f"t{threads}"
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", _ENCODE_IN_CHILD, str(threads), str(folder),
                               *map(str, determinism_inputs)], env=_env(threads), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(threads)
        outputs[threads] = folder
    for i, path in enumerate(determinism_inputs):
        one, two = (outputs[t] / f"{i}.dvq" for t in (1, 2))
        api = encode(path, device="cpu")  # this process, its own thread count
        assert one.read_bytes() == two.read_bytes() == api, path.name
        # Decoded pixels: the same indices, synthesis on 1 vs 2 threads within ±1 (in practice identical).
        pixels_1, pixels_2 = (np.load(outputs[t] / f"{i}.npy").astype(int) for t in (1, 2))
        assert np.abs(pixels_1 - pixels_2).max() <= 1, path.name
        if path.name not in ("parrots.png", "rgba.png"):
            continue  # one CLI process per file: two of them (RGB, RGBA) are enough
        cli_out = tmp_path / f"cli{i}.dvq"
        done = subprocess.run([*_cli_command(), "encode", str(path), str(cli_out), "--device", "cpu"], env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert cli_out.read_bytes() == api, path.name


def test_cpu_choices_are_the_float64_ones(determinism_inputs: list[Path]) -> None:
    """An accelerator encodes in float64 (exact choices on any device), the CPU in float32
    with near-boundary latents re-decided in float64: both must give the same indices."""
    from diveq_codec.codec.pipeline import image_to_tensor
    from diveq_codec.codec.zoo import load_model, resolve_quality

    point = resolve_quality(None)
    model = load_model(point.model_id, "cpu").model
    for path in determinism_inputs:
        x = image_to_tensor(np.asarray(Image.open(path).convert("RGB")), "cpu")
        single, grid = model.encode_indices(x)
        double, grid64 = model.encode_indices(x, dtype=torch.float64)
        assert grid == grid64
        assert torch.equal(single, double), path.name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_encoded_files_decode_on_cpu(determinism_inputs: list[Path], capsys: pytest.CaptureFixture) -> None:
    """Encode on CUDA, decode on CPU: the very file a CPU writes (same indices), and a GPU
    decode of it within ±1 of the CPU decode."""
    large = Image.fromarray(np.tile(np.asarray(Image.open(SAMPLES / "parrots.png").convert("RGB")), (4, 4, 1)))
    images = [Image.open(p) for p in determinism_inputs] + [large]
    report = []
    for image in images:
        gpu_file, cpu_file = encode(image, device="cuda"), encode(image, device="cpu")
        from_gpu, from_cpu = decode_detailed(gpu_file, device="cpu"), decode_detailed(cpu_file, device="cpu")
        differing = int((from_gpu.indices != from_cpu.indices).sum())
        report.append(f"{image.size}: {differing} of {from_gpu.indices.size} indices differ")
        assert differing == 0, report[-1]
        assert gpu_file == cpu_file
        on_gpu = np.asarray(decode(gpu_file, device="cuda")).astype(int)
        assert np.abs(on_gpu - np.asarray(from_cpu.image).astype(int)).max() <= 1
    with capsys.disabled():
        print("\nGPU encode vs CPU encode:\n  " + "\n  ".join(report))


# --- 6. concurrency -----------------------------------------------------------------------------------------


def test_four_cli_processes_at_once(tmp_path: Path) -> None:
    """Two encodes of different images and two decodes of different files, all at the same time."""
    gray = Image.open(SAMPLES / "parrots.png").convert("L")
    rgba = Image.fromarray(np.dstack([noise(33, 17, 3, seed=1), noise(33, 17, 1, seed=2)]))
    (tmp_path / "c.dvq").write_bytes(encode(gray, device="cpu"))
    (tmp_path / "d.dvq").write_bytes(encode(rgba, device="cpu"))
    jobs = {
        "a.dvq": ["encode", str(SAMPLES / "parrots.png")],
        "b.dvq": ["encode", str(SAMPLES / "lighthouse.png")],
        "c.png": ["decode", str(tmp_path / "c.dvq")],
        "d.png": ["decode", str(tmp_path / "d.dvq")],
    }
    sequential = tmp_path / "sequential"
    sequential.mkdir()
    for out, args in jobs.items():
        assert cli(*args, str(sequential / out)).exit_code == 0
    concurrent = tmp_path / "concurrent"
    concurrent.mkdir()
    procs = {out: subprocess.Popen([*_cli_command(), *args, str(concurrent / out), "--device", "cpu"],
                                   env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for out, args in jobs.items()}
    for out, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (out, err.decode())
    for out in jobs:
        assert (concurrent / out).read_bytes() == (sequential / out).read_bytes(), out
    assert Image.open(concurrent / "c.png").size == gray.size
    d = Image.open(concurrent / "d.png")
    assert d.size == (33, 17) and d.mode == "RGBA"
    assert np.array_equal(np.asarray(d)[..., 3], np.asarray(rgba)[..., 3])
    assert decode((concurrent / "a.dvq").read_bytes(), device="cpu").size == (256, 192)
    assert sorted(p.name for p in concurrent.iterdir()) == sorted(jobs)  # no temp debris
    shutil.rmtree(concurrent)
