"""Wall times of the command line as a user meets it: start-up included, one run after another.

``python scripts/bench_cli.py IMAGE_DIR [--runs 5] [--jobs 1,2] [--before CHECKOUT]``

Times, as medians over ``--runs`` (each a fresh process): ``--help``, ``--version``, ``info``,
``models``, a missing-file error and ``python -c "import torch"``; encode and decode of the
folder's first image; then the whole folder encoded by one process per file against one
batch process (``--out-dir``) with each ``--jobs`` value. ``--before`` times the same encode
and decode with an older checkout's command line (run from its folder with PYTHONPATH), so
that before and after come from one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SCRIPT = Path(sys.executable).parent / "diveq-codec"  # the installed command, as a user runs it
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "diveq_codec.codec.cli.app"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp"}


def wall(command: list[str], env: dict[str, str] | None = None, expect: int | None = 0,
         cwd: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if expect is not None and done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return elapsed


def median_wall(command: list[str], runs: int, env: dict[str, str] | None = None, expect: int | None = 0,
                cwd: Path | None = None) -> float:
    return statistics.median(wall(command, env, expect, cwd) for _ in range(runs))


def start_up(work: Path, image: Path, runs: int) -> None:
    dvq = work / "first.dvq"
    wall([*CLI, "encode", str(image), str(dvq), "-q", "1"])
    cases = {
        "--help": ([*CLI, "--help"], 0), "--version": ([*CLI, "--version"], 0), "info": ([*CLI, "info", str(dvq)], 0),
        "models": ([*CLI, "models"], 0), "missing file": ([*CLI, "encode", "nope.png", str(work / "n.dvq")], 5),
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
    }
    for name, (command, code) in cases.items():
        print(f"{name:26} {median_wall(command, runs, expect=code):6.3f} s")


def coding(work: Path, image: Path, runs: int, before: Path | None) -> None:
    lines: list[tuple[str, list[str], dict[str, str] | None, Path | None]] = [("now", CLI, None, None)]
    if before is not None:  # run from the old checkout, so that its top-level `codec` is the one found
        env = {**os.environ, "PYTHONPATH": str(before)}
        old = [sys.executable, "-c", "import sys; from codec.cli import main; sys.argv[0] = 'diveq-codec'; main()"]
        lines.append(("before", old, env, before))
    for label, cli, env, cwd in lines:
        out, png = work / f"{label}.dvq", work / f"{label}.png"
        enc = median_wall([*cli, "encode", str(image), str(out), "--force"], runs, env, cwd=cwd)
        dec = median_wall([*cli, "decode", str(out), str(png), "--force"], runs, env, cwd=cwd)
        print(f"{label:6} encode {enc:6.2f} s   decode {dec:6.2f} s   ({image.name}, default quality, wall)")


def batches(work: Path, images: list[Path], jobs: list[int]) -> None:
    out = work / "batch"
    out.mkdir()
    start = time.perf_counter()
    for image in images:
        wall([*CLI, "encode", str(image), str(out / f"{image.stem}.dvq"), "--force"])
    separate = time.perf_counter() - start
    print(f"one process per file   {separate:7.1f} s  ({len(images) / separate:.2f} images/s)")
    for n in jobs:
        elapsed = wall([*CLI, "encode", *map(str, images), "--out-dir", str(out), "--force", "--jobs", str(n)])
        print(f"one batch, --jobs {n:<4} {elapsed:7.1f} s  ({len(images) / elapsed:.2f} images/s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench_cli.py", description=__doc__.splitlines()[0])
    p.add_argument("images", type=Path, help="folder of images (the first one is timed alone)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--jobs", default="1,2", help="batch worker counts to time, comma-separated")
    p.add_argument("--before", type=Path, help="an older checkout whose command line to time beside")
    p.add_argument("--skip-batches", action="store_true")
    args = p.parse_args(argv)
    images = sorted(path for path in args.images.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no images in {args.images}")
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        start_up(work, images[0], args.runs)
        coding(work, images[0], max(args.runs // 2, 1), args.before)
        if not args.skip_batches:
            batches(work, images, [int(n) for n in args.jobs.split(",")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
