"""The least time the shipped transforms can take on this machine, layer by layer.

    python experiments/speed_floor/speed_floor.py [-q QUALITY] [--megapixels 12,48] [--bf16]

Runs the shipped model's analysis and synthesis on one interior tile (1040 pixels a side, as
the tiled coding path runs them), layer by layer, the command line's allocator settings on,
and prints each layer's multiply-adds per image pixel, its time per megapixel (fastest of
``--runs``) and its float32 rate. From those: the transforms' seconds for an image of each
``--megapixels`` size, measured and if every layer ran as fast as the fastest one. Everything
else an encode or decode does (the search, the index coder, the DCT layer, reading and
writing the image, start-up) comes on top.

``--channels N`` times an untrained model of the shipped configuration with N channels
instead (what a smaller network, trained on a GPU, would cost).
``--bf16`` also times the largest layer in bfloat16, in child processes with oneDNN's
instruction set capped (ONEDNN_MAX_CPU_ISA): ALL (this CPU's bfloat16 instructions, if any)
and AVX512_CORE (an AVX-512 CPU without them), to show what a bfloat16 decoder would give.
``--bf16-photos DIR`` compares the synthesis with bfloat16 convolutions (the GDN and the last
convolution's sums in float32) with the shipped one on photos there (training photos, never
Kodak): pixel differences and the base's PSNR.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diveq_codec.codec.cli.allocator import keep_freed_memory
from diveq_codec.codec.image_io import read_image
from diveq_codec.codec.metrics import psnr
from diveq_codec.codec.pipeline import choose_indices, image_to_tensor, tensor_to_pixels
from diveq_codec.codec.zoo import load_model, resolve_quality
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.data import list_images

TILE = 1040
# The child of --bf16: the rate (GFLOP/s) of one convolution shape, in float32 and bfloat16.
_BF16_CHILD = """
import sys, time, torch
import torch.nn.functional as F
cin, cout, side = map(int, sys.argv[1:4])
x, w = torch.randn(1, cin, side, side), torch.randn(cout, cin, 3, 3)
flop = 2 * side * side * cin * cout * 9
for dtype in (torch.float32, torch.bfloat16):
    a, b = x.to(dtype), w.to(dtype)
    F.conv2d(a, b, padding=1)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        F.conv2d(a, b, padding=1)
        times.append(time.perf_counter() - start)
    print(f"{dtype}: {flop / min(times) / 1e9:.0f} GFLOP/s", flush=True)
"""


def multiply_adds(layer: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one layer's output (convolutions and the GDN's channel mix; the
    elementwise steps are not counted)."""
    if isinstance(layer, nn.Conv2d):
        return output.numel() * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] // layer.groups
    if hasattr(layer, "conv"):  # Upsample: the convolution before the pixel shuffle
        return output.numel() * layer.conv.in_channels * 9
    if type(layer).__name__ == "SimplifiedGDN":
        return output.numel() * output.shape[1]
    if type(layer).__name__ == "ResidualBlock":
        return 2 * output.numel() * output.shape[1] * 9
    return 0


def timed_layers(transform: nn.Sequential, x: torch.Tensor, runs: int, prefix: str,
                 rows: list[tuple[str, float, int]]) -> torch.Tensor:
    """Append (name, fastest seconds, multiply-adds) of each layer of ``transform`` run on ``x``."""
    for index, layer in enumerate(transform):
        name = f"{prefix}{index} {type(layer).__name__}"
        if isinstance(layer, nn.Sequential) and type(layer[0]).__name__ == "ResidualBlock":
            x = timed_layers(layer, x, runs, f"{prefix}{index}.", rows)
            continue
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            y = layer(x)
            best = min(best, time.perf_counter() - start)
        rows.append((name, best, multiply_adds(layer, y)))
        x = y
    return x


def bf16_synthesis(transform: nn.Sequential, latent: torch.Tensor) -> torch.Tensor:
    """``transform`` with every convolution's operands rounded to bfloat16 (the last one's sums
    and everything else in float32)."""

    def conv(layer: nn.Conv2d, x: torch.Tensor, last: bool) -> torch.Tensor:
        if last:
            return F.conv2d(x.bfloat16().float(), layer.weight.bfloat16().float(), layer.bias, padding=layer.padding)
        return F.conv2d(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16(), padding=layer.padding).float()

    def run(layer: nn.Module, x: torch.Tensor, last: bool) -> torch.Tensor:
        kind = type(layer).__name__
        if isinstance(layer, nn.Sequential):
            for inner in layer:
                x = run(inner, x, False)
            return x
        if kind == "ResidualBlock":
            return x + conv(layer.conv2, torch.relu(conv(layer.conv1, x, False)), False)
        if kind == "Upsample":
            return layer.shuffle(conv(layer.conv, x, last))
        if isinstance(layer, nn.Conv2d):
            return conv(layer, x, last)
        return layer(x)

    for index, layer in enumerate(transform):
        latent = run(layer, latent, index == len(transform) - 1)
    return latent


def compare_bf16(folder: Path, quality: int | None, count: int, every: int) -> None:
    point = resolve_quality(quality)
    loaded = load_model(point.model_id, "cpu")
    model = loaded.model
    for path in list_images(folder)[::every][:count]:
        source = read_image(path.read_bytes(), str(path))
        x = image_to_tensor(source.rgb, "cpu")
        with torch.no_grad():
            indices, grid = choose_indices(loaded, point, None, x)
            latent = model.to_latent(model.quantizer.lookup(indices), 1, *grid)
            height, width = source.rgb.shape[:2]
            shipped = model.synthesis(latent)[..., :height, :width].clamp(0, 1)
            rounded = bf16_synthesis(model.synthesis, latent)[..., :height, :width].clamp(0, 1)
        levels = (shipped - rounded).mul(255)
        a, b = tensor_to_pixels(shipped), tensor_to_pixels(rounded)
        print(f"{path.name[:24]:24} {levels.pow(2).mean().sqrt():.3f} levels RMS, max {levels.abs().max():.2f}; "
              f"{(a != b).mean() * 100:4.1f} % of values differ; PSNR {psnr(source.rgb, a):.3f} → {psnr(source.rgb, b):.3f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quality", type=int, default=None)
    parser.add_argument("--megapixels", default="12,48")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels", type=int, default=None,
                        help="time an untrained model of the shipped config with this many channels instead")
    parser.add_argument("--bf16-photos", type=Path, default=None, metavar="DIR")
    parser.add_argument("--count", type=int, default=10, help="photos for --bf16-photos")
    parser.add_argument("--every", type=int, default=60, help="every Nth photo for --bf16-photos")
    args = parser.parse_args()
    keep_freed_memory()
    if args.bf16_photos is not None:
        compare_bf16(args.bf16_photos, args.quality, args.count, args.every)
        return
    model = load_model(resolve_quality(args.quality).model_id, "cpu").model
    if args.channels is not None:  # a candidate's speed: its values do not matter, only its shapes
        model = VQAutoencoder(replace(model.config, channels=args.channels)).eval()
        for transform in (model.analysis, model.synthesis):  # as load_model lays out a CPU model
            transform.to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    pixels = TILE * TILE
    parts: dict[str, list[tuple[str, float, int]]] = {"analysis": [], "synthesis": []}
    with torch.no_grad():
        # channels-last, as the coding path's image (a view of the pixels) and latent arrive
        image = torch.rand(1, TILE, TILE, 3).permute(0, 3, 1, 2)
        latent = timed_layers(model.analysis, image, args.runs, "A", parts["analysis"])
        timed_layers(model.synthesis, latent.contiguous(memory_format=torch.channels_last), args.runs, "S",
                     parts["synthesis"])
    rows = parts["analysis"] + parts["synthesis"]
    fastest = max(2 * macs / seconds for _, seconds, macs in rows if macs)
    print(f"{TILE}×{TILE} tile, {torch.get_num_threads()} threads; fastest layer {fastest / 1e9:.0f} GFLOP/s")
    print(f"{'layer':24} {'MAC/pixel':>10} {'s/MP':>7} {'GFLOP/s':>8}")
    for name, seconds, macs in rows:
        rate = f"{2 * macs / seconds / 1e9:8.0f}" if macs else f"{'-':>8}"
        print(f"{name:24} {macs / pixels:10,.0f} {seconds / pixels * 1e6:7.3f} {rate}")
    for megapixels in (float(m) for m in args.megapixels.split(",")):
        line = []
        for part, part_rows in parts.items():
            measured = sum(seconds for _, seconds, _ in part_rows) / pixels * megapixels * 1e6
            floor = sum(2 * macs for _, _, macs in part_rows) / fastest / pixels * megapixels * 1e6
            line.append(f"{part} {measured:.1f} s (at the fastest layer's rate {floor:.1f} s)")
        print(f"{megapixels:g} MP: " + "; ".join(line))
    if args.bf16:
        channels = model.config.channels
        for isa in ("ALL", "AVX512_CORE"):
            child = subprocess.run([sys.executable, "-c", _BF16_CHILD, str(channels), str(4 * channels), str(TILE // 4)],
                                   env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa}, capture_output=True, text=True,
                                   timeout=600)
            print(f"largest layer's convolution, ONEDNN_MAX_CPU_ISA={isa}: " + "; ".join(child.stdout.split("\n")[:2]))


if __name__ == "__main__":
    main()
