"""Peak memory and time of encoding and decoding one large image, each in a fresh process.

    python scripts/bench_large.py                       # 4000×3000, tiled (the default tile size)
    python scripts/bench_large.py --tile-size 0         # untiled, for comparison
    python scripts/bench_large.py --width 1024 --height 768 --max-rss-gb 3
    python scripts/bench_large.py --method mosaic --source <training-dir>   # photo content

The image is built by tiling (or upscaling) a sample, or from crops of many photos. Each
phase runs the real command line (``diveq-codec encode`` and ``diveq-codec decode``) in a
child process; its peak RSS is the child's own ru_maxrss, read with os.wait4.
``--tile-size`` overrides diveq_codec.models.tiling.DEFAULT_TILE_SIZE (a public constant) in
the child before the model loads (0: no tiling).
Exit status 1 when a phase fails or exceeds --max-rss-gb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The child: optionally override the tile size, then run the CLI exactly as a user would.
_CHILD = """
import sys
tile = int(sys.argv[1])  # > 0: tile size, 0: untiled, < 0: the codec's default
if tile >= 0:
    import diveq_codec.models.tiling
    diveq_codec.models.tiling.DEFAULT_TILE_SIZE = tile if tile > 0 else 1 << 30
if len(sys.argv) > 2 and sys.argv[2] == "--threads":
    import torch
    torch.set_num_threads(int(sys.argv[3]))
    del sys.argv[2:4]
from diveq_codec.codec.cli.app import main
sys.argv = ["diveq-codec"] + sys.argv[2:]
main()
"""


def build_image(width: int, height: int, source: Path, method: str) -> Image.Image:
    if method == "mosaic":
        return mosaic(width, height, source)
    sample = Image.open(source).convert("RGB")
    if method == "upscale":
        return sample.resize((width, height), Image.Resampling.BICUBIC)
    tile = np.asarray(sample)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return Image.fromarray(np.ascontiguousarray(np.tile(tile, reps)[:height, :width]))


def mosaic(width: int, height: int, folder: Path, cell: tuple[int, int] = (480, 320)) -> Image.Image:
    """Crops of the photos under ``folder`` (sorted by path, repeated when they run out) side
    by side: content as varied as a photo's, which the tiled sample is not (its PNG is 12
    times smaller at 12 MP, so reading and writing it cost less)."""
    cell_w, cell_h = cell
    rows, cols = -(-height // cell_h), -(-width // cell_w)
    crops = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg") and len(crops) < rows * cols:
            with Image.open(path) as photo:
                if photo.width >= cell_w and photo.height >= cell_h:
                    crops.append(np.asarray(photo.convert("RGB").crop((0, 0, cell_w, cell_h))))
    if not crops:
        raise SystemExit(f"{folder}: no photo of at least {cell_w}×{cell_h}")
    grid = [np.concatenate([crops[(r * cols + c) % len(crops)] for c in range(cols)], axis=1) for r in range(rows)]
    return Image.fromarray(np.ascontiguousarray(np.concatenate(grid, axis=0)[:height, :width]))


def run_child(args: list[str], env: dict[str, str]) -> tuple[int, float, int, str, str]:
    """(exit code, wall seconds, peak RSS bytes, stdout, stderr) of one child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return proc.returncode, wall, usage.ru_maxrss * 1024, out.read().decode(), err.read().decode()


def run_phase(command: list[str], env: dict[str, str], limit: int) -> dict[str, object]:
    """One phase's exit code, wall time, peak RSS against ``limit`` bytes, and the size and
    quality from the command line's own JSON report."""
    code, wall, peak, out, err = run_child(command, env)
    report = {}
    if code == 0:
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass
    entry: dict[str, object] = {"exit": code, "wall_s": round(wall, 2), "peak_rss_mib": round(peak / (1 << 20), 1),
                                "within_limit": peak <= limit}
    for key in ("bytes", "bpp", "psnr"):
        if key in report:
            entry[key] = report[key]
    if code != 0:
        entry["stderr"] = err.strip()[-500:]
    return entry


def print_report(args: argparse.Namespace, results: dict[str, object], phases: list[str]) -> None:
    print(f"{args.width}×{args.height} ({args.method} of {args.source.name}), tile size "
          f"{'default' if args.tile_size < 0 else ('untiled' if args.tile_size == 0 else args.tile_size)}, "
          f"threads {results['threads']}; limit {args.max_rss_gb} GB")
    for name in phases:
        e = results[name]
        assert isinstance(e, dict)
        extra = "".join(f", {k} {e[k]:.4g}" if isinstance(e[k], float) else f", {k} {e[k]}"
                        for k in ("bytes", "bpp", "psnr") if k in e)
        print(f"{name:7} exit {e['exit']}  wall {e['wall_s']:7.2f} s  peak RSS {e['peak_rss_mib']:8.1f} MiB"
              f"{'' if e['within_limit'] else '  OVER LIMIT'}{extra}")
        if "stderr" in e:
            print(f"        {e['stderr']}")
    print("OK" if results["ok"] else "FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--source", type=Path, default=REPO / "samples" / "parrots.png")
    parser.add_argument("--method", choices=["tile", "upscale", "mosaic"], default="tile",
                        help="tile or upscale the --source image, or a mosaic of the photos in the --source folder")
    parser.add_argument("--tile-size", type=int, default=-1,
                        help="pixels per tile core in the child; 0 = untiled; default: the codec's own")
    parser.add_argument("--quality", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: torch's default)")
    parser.add_argument("--max-rss-gb", type=float, default=3.0)
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the image and files in")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_large.")) if args.keep is None else args.keep
    workdir.mkdir(parents=True, exist_ok=True)
    image_path, coded, decoded = workdir / "large.png", workdir / "large.dvq", workdir / "large.decoded.png"
    t0 = time.perf_counter()
    build_image(args.width, args.height, args.source, args.method).save(image_path, compress_level=1)
    build_s = time.perf_counter() - t0

    env = dict(os.environ)
    child = [sys.executable, "-c", _CHILD, str(args.tile_size if args.tile_size >= 0 else -1)]
    if args.threads:
        child += ["--threads", str(args.threads)]
    quality = ["-q", str(args.quality)] if args.quality is not None else []
    phases = {
        "encode": child + ["encode", str(image_path), str(coded), "--force", "--json", *quality],
        "decode": child + ["decode", str(coded), str(decoded), "--force", "--json"],
    }
    limit = int(args.max_rss_gb * (1 << 30))
    results: dict[str, object] = {"width": args.width, "height": args.height, "method": args.method,
                                  "tile_size": args.tile_size, "threads": args.threads or "default",
                                  "build_image_s": round(build_s, 2)}
    ok = True
    for name, command in phases.items():
        entry = run_phase(command, env, limit)
        ok = ok and entry["exit"] == 0 and entry["within_limit"]
        results[name] = entry
    if entry["exit"] == 0:
        with Image.open(decoded) as img:
            results["decoded_size"] = list(img.size)
            ok = ok and img.size == (args.width, args.height)
    results["ok"] = ok

    if args.json:
        print(json.dumps(results))
    else:
        print_report(args, results, list(phases))
    if args.keep is None:
        for path in (image_path, coded, decoded):
            path.unlink(missing_ok=True)
        workdir.rmdir()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
