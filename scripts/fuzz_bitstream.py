"""Fuzz the .dvq decoder: N mutated files through codec.pipeline.decode, with time and memory checks.

    python scripts/fuzz_bitstream.py --cases 100000 --seed 1

Mutations (tests/fuzzing.py): bit flips, byte overwrites, truncations, extensions, header fields
set to boundary/random values, consistent giant sizes, replaced payloads and alpha planes (zip
bombs included), spliced files; each raw and with the CRC recomputed. Expected outcomes are a
decoded image of the declared size and mode, or a codec.errors.CodecError subclass. Failures:
any other exception, a case over --time-limit seconds, or a case using more memory than
64 B × declared pixels + 64 MiB (tracemalloc peak, and how far it raised ru_maxrss).
Exit status 0 when no case failed, 1 otherwise. Reproduce one case with --start I --cases 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzzing  # noqa: E402  (tests/fuzzing.py)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="index of the first case (to reproduce one)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the cases are tiny)")
    parser.add_argument("--time-limit", type=float, default=fuzzing.TIME_LIMIT_S)
    parser.add_argument("--no-tracemalloc", action="store_true", help="RSS check only (faster)")
    parser.add_argument("--every-quality", action="store_true",
                        help="start from each small image at every rate point (90 files) rather than at three")
    parser.add_argument("--by-strategy", action="store_true", help="also print outcomes per strategy")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    last = [time.perf_counter()]

    def progress(index: int, summary: fuzzing.Summary) -> None:
        now = time.perf_counter()
        if now - last[0] > 30:
            last[0] = now
            print(f"... {summary.cases} cases, {len(summary.failures)} failures, "
                  f"max {summary.max_time_s * 1000:.0f} ms", file=sys.stderr, flush=True)

    bases = fuzzing.make_bases(args.device, every_quality=args.every_quality)

    summary = fuzzing.fuzz(args.cases, args.seed, bases, device=args.device, trace_memory=not args.no_tracemalloc,
                           time_limit_s=args.time_limit, start=args.start, progress=progress)
    print(f"fuzz_bitstream: seed {args.seed}, cases {args.start}..{args.start + args.cases - 1}, "
          + (f"bases {', '.join(f'{k} ({len(v)} B)' for k, v in bases.items())}" if len(bases) <= 8 else
             f"{len(bases)} bases ({min(map(len, bases.values()))}-{max(map(len, bases.values()))} B)"))
    for line in summary.lines():
        print(line)
    if args.by_strategy:
        print("by strategy:")
        for key, count in sorted(summary.by_strategy.items()):
            print(f"  {count:8d}  {key}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
