"""What a small file that declares a large image costs to decode: valid files whose payload
codes a constant index map (the cheapest a file of that size can be: the stream padded with
zero words to the least payload for the size, index_coder.min_payload_bytes) at large
declared sizes, decoded by the command line in a fresh process; the same payloads cut short;
and the stream without its padding (what a file could be without the floor).

    python scripts/declared_size_probe.py [--sizes 2000x1500,4000x3000,7071x7071] [--stages 1]

For each size it prints the file's bytes, the decode's wall time and peak RSS, and both per
byte of the file. A payload shorter than the least for the declared size is refused before
decoding (exit 3): the cut-short and unpadded lines show how fast.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diveq_codec.codec import container, index_coder
from diveq_codec.codec.index_model import IndexModel, frequencies, padded, previous_context, tokens_of
from diveq_codec.codec.zoo import load_model, network_rate_points


def cheapest_constant(model: IndexModel, stages: int) -> np.ndarray:
    """Per stage, the codeword the model finds likeliest where everything around is that codeword."""
    best = []
    for m in range(stages):
        scores = []
        for code in range(model.codes):
            stage_map = padded(np.full((4, 4), code), model)
            first = np.zeros((1, model.stages[m].bias.size))
            if m:
                first = previous_context(model, m, np.array([np.full((4, 4), c) for c in best]))[2:3, 2]
            freq = frequencies(model, m, first, tokens_of(stage_map, np.array([2]), np.array([3]), model))[0]
            scores.append(freq[code] / freq.sum())
        best.append(int(np.argmax(scores)))
    return np.array(best)


def bomb(width: int, height: int, stages: int, padded: bool = True) -> bytes:
    point = network_rate_points()[0]
    loaded = load_model(point.model_id)
    model = loaded.require_index_model()
    grid_h, grid_w = math.ceil(height / 8), math.ceil(width / 8)
    codes = cheapest_constant(model, stages)
    indices = np.repeat(codes[:, None], grid_h * grid_w, axis=1)
    payload = index_coder.encode_indices(indices, model, grid_w,
                                         index_coder.min_payload_bytes(width * height) if padded else 0)
    header = container.Header(
        model_id=loaded.card.model_id, quality=stages, weights_id=loaded.card.weights_id,
        coder_id=container.CODER_INDEX_MODEL, table_precision=index_coder.TABLE_PRECISION, width=width,
        height=height, channels=3, bit_depth=8, flags=0, latent_h=grid_h, latent_w=grid_w, stages=stages)
    return container.pack(container.Container(header, payload, b""))


def decode_cost(data: bytes) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in MB) of ``diveq-codec decode`` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.dvq"
        path.write_bytes(data)
        start = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "diveq_codec.codec.cli.app",
                               "decode", str(path), str(Path(tmp) / "out.png"), "--quiet", "--device", "cpu"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    rss_kb = int(done.stderr.strip().splitlines()[-1])  # GNU time's %M: the child's peak RSS in KB
    return done.returncode, wall, rss_kb / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000x1500,4000x3000,7071x7071")
    parser.add_argument("--stages", type=int, default=1)
    args = parser.parse_args(argv)
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        data = bomb(width, height, args.stages)
        payload_len = len(data) - container.HEADER_SIZE - container.TRAILER_SIZE
        cases = (("valid", data), ("cut short", _cut(data, payload_len // 2)),
                 ("unpadded", bomb(width, height, args.stages, padded=False)))
        for name, case in cases:
            code, wall, rss = decode_cost(case)
            print(f"{width}×{height} {args.stages} stage(s) {name}: {len(case):,} bytes, exit {code}, "
                  f"{wall:.2f} s, peak RSS {rss:.0f} MB; "
                  f"{wall / len(case) * 1000:.3f} ms and {rss * 1024 / len(case):.1f} KB per byte", flush=True)
    return 0


def _cut(data: bytes, payload_len: int) -> bytes:
    """The same file with its payload cut to ``payload_len`` bytes (a multiple of 4), sealed."""
    parsed = container.unpack(data)
    return container.pack(container.Container(parsed.header, parsed.payload[: payload_len // 4 * 4], b""))


if __name__ == "__main__":
    raise SystemExit(main())
