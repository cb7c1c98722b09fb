"""How long Pillow takes to write decoded images as PNG, and how large, at each zlib level.

    python experiments/png_level/png_level.py <training-dir> [-q 7,18] [--levels 1,3,6,9] [--every 70] [--count 8]
    python experiments/png_level/png_level.py <folder of .dvq files>

Each image in the folder is encoded at every quality of ``-q`` and decoded (a ``.dvq`` file
is decoded as it is), then written to memory as PNG at every level; per quality, the summed
seconds (fastest of ``--runs``) and bytes of each level, and both against Pillow's default, 6.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image

from diveq_codec.codec import pipeline
from diveq_codec.models.data import list_images

DEFAULT_LEVEL = 6  # Pillow's (zlib's) default


def written(image: Image.Image, level: int, runs: int) -> tuple[float, int]:
    """(fastest seconds, bytes) of writing ``image`` as PNG at zlib ``level``."""
    best, size = float("inf"), 0
    for _ in range(runs):
        buffer = io.BytesIO()
        start = time.perf_counter()
        image.save(buffer, "PNG", compress_level=level)
        best, size = min(best, time.perf_counter() - start), len(buffer.getvalue())
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-q", "--qualities", default="7,18")
    parser.add_argument("--levels", default="1,3,6,9")
    parser.add_argument("--every", type=int, default=70)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    levels = sorted({int(level) for level in args.levels.split(",")} | {DEFAULT_LEVEL})
    files = sorted(args.folder.glob("*.dvq"))
    groups: dict[str, list[Image.Image]] = {}
    if files:
        groups["files"] = [pipeline.decode(path.read_bytes(), "cpu") for path in files]
    else:
        photos = list_images(args.folder)[5::args.every][:args.count]
        for quality in (int(q) for q in args.qualities.split(",")):
            groups[f"quality {quality}"] = [pipeline.decode(pipeline.encode(str(path), quality, "cpu"), "cpu")
                                            for path in photos]
    for name, images in groups.items():
        totals = {level: [0.0, 0] for level in levels}
        for image in images:
            for level in levels:
                seconds, size = written(image, level, args.runs)
                totals[level][0] += seconds
                totals[level][1] += size
        base_s, base_bytes = totals[DEFAULT_LEVEL]
        print(f"{name}, {len(images)} images:")
        for level, (seconds, size) in totals.items():
            print(f"  level {level}: {seconds:7.3f} s ({base_s / seconds:4.2f}× level {DEFAULT_LEVEL}'s speed), "
                  f"{size:,} bytes ({100 * (size / base_bytes - 1):+.1f} %)")


if __name__ == "__main__":
    main()
