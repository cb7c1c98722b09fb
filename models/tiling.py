"""Tiled analysis and synthesis: large images in bounded memory, without visible seams.

A convolutional transform's output at one position depends only on the inputs within its
receptive field. Cutting the input into tiles whose *margin* covers that field, running the
transform on each tile and keeping only each tile's *core* therefore gives the same numbers
as one pass over the whole image: every kept output saw exactly the inputs (and the same
zero padding at the true image border) it would have seen untiled. The only possible
difference is floating-point summation order inside the convolution kernels, which may
depend on the tile's shape; tests measure it (indices identical, PSNR within 0.01 dB).

The receptive field is computed from the modules themselves (:func:`reach`), so a change
of architecture changes the margins with it; an unknown layer is refused, not guessed.

Memory is what tiling is for: the untiled analysis of a 4000×3000 image holds several
128-channel feature maps of 2000×1500 floats (1.5 GB each); a 768×768 tile's map, margins
included, is about 1/16 of one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from diveq_codec.models import progress

# Pixels per side of a tile's core (128×128 latents at stride 8). The margins (6 analysis,
# 8 synthesis cells a side) made 768-pixel tiles recompute 27 % / 36 % of the work; at 1024
# 20 % / 27 %: on the 2-core CPU a 4000×3000 analysis took 5.2 s instead of 5.9 and its
# synthesis 8.2 s instead of 8.6. 1536 saved another 0.7 s but its synthesis tile holds two
# 354 MB maps at once (1024: two of 170 MB), too much beside a 48 MP image's own arrays
# within 3 GB. Any size gives the same numbers (tests/test_tiling.py).
DEFAULT_TILE_SIZE = 1024

# Layers that act on each position independently (no spatial extent), by class name, so that
# this module needs no import of the model's own layer classes.
_POINTWISE = {
    "SimplifiedGDN", "GDN", "Identity", "ReLU", "LeakyReLU", "PReLU", "GELU", "SiLU", "Sigmoid", "Tanh",
    "Hardtanh", "ELU", "Dropout", "Dropout2d",
}


def reach(module: nn.Module) -> tuple[float, float, float]:
    """(left, right, jump) of a feed-forward stack of layers, in units of its input grid.

    An output at index ``o`` (anchored at ``o·jump`` input units) depends on inputs no further
    than ``left`` before and ``right`` after its anchor. Containers are walked through their
    children in registration order, which must be their forward order (true of nn.Sequential
    and of the codec's Upsample). Works for Conv2d (any kernel, stride, padding, dilation),
    PixelShuffle and pointwise layers; anything else raises ValueError.
    """
    left = right = 0.0
    jump = 1.0

    def walk(m: nn.Module) -> None:
        nonlocal left, right, jump
        if isinstance(m, nn.Conv2d):
            if m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1] \
                    or m.dilation[0] != m.dilation[1] or not isinstance(m.padding, tuple) \
                    or m.padding[0] != m.padding[1]:
                raise ValueError(f"tiling needs square convolutions, got {m}")
            k, s, p, d = m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0]
            # Output o reads inputs o·s − p + t·d for t in 0..k−1.
            left += max(p, 0) * jump
            right += max((k - 1) * d - p, 0) * jump
            jump *= s
        elif isinstance(m, nn.PixelShuffle):
            r = m.upscale_factor
            jump /= r
            # Output q reads input cell ⌊q/r⌋, up to (r−1) output steps before q's anchor.
            left += (r - 1) * jump
        elif type(m).__name__ in _POINTWISE:
            pass
        elif isinstance(m, nn.Module) and any(True for _ in m.children()):
            for child in m.children():
                walk(child)
        else:
            raise ValueError(f"cannot tile over a {type(m).__name__} layer (unknown receptive field)")

    walk(module)
    return left, right, jump


def analysis_margin(analysis: nn.Module, stride: int) -> int:
    """Margin of an analysis tile, in latent cells: covers the receptive field in pixels."""
    left, right, jump = reach(analysis)
    if jump != stride:
        raise ValueError(f"analysis transform has stride {jump}, the model says {stride}")
    return math.ceil(max(left, right) / stride)


def synthesis_margin(synthesis: nn.Module) -> int:
    """Margin of a synthesis tile, in latent cells.

    Pixel q (anchored at q·jump ∈ [c, c + 1) in latent cell c) depends on latents in
    [q·jump − left, q·jump + right], i.e. on cells c − ⌈left⌉ … c + ⌈right⌉.
    """
    left, right, _ = reach(synthesis)
    return math.ceil(max(left, right))


def spans(length: int, core: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis of ``length`` cells: (core_start, core_end, tile_start, tile_end).

    Cores partition 0..length into near-equal parts of at most ``core`` cells (no sliver at the
    end); each tile adds ``margin`` cells on both sides, clipped to the axis.
    """
    if length < 1 or core < 1 or margin < 0:
        raise ValueError(f"bad tiling: length {length}, core {core}, margin {margin}")
    count = math.ceil(length / core)
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [(a, b, max(0, a - margin), min(length, b + margin)) for a, b in zip(bounds[:-1], bounds[1:])]


Span = tuple[int, int, int, int]


def grid_tiles(grid_h: int, grid_w: int, core: int, margin: int,
               stage: str | None = None) -> Iterator[tuple[Span, Span]]:
    """(row span, column span) of every tile in raster order. With a ``stage`` name, progress is
    reported (models/progress.py) as each tile is handed out, unless there is only one."""
    tiles = [(row, column) for row in spans(grid_h, core, margin) for column in spans(grid_w, core, margin)]
    shown = stage is not None and len(tiles) > 1
    for done, tile in enumerate(tiles):
        if shown:
            progress.report(stage, done, len(tiles))
        yield tile
    if shown:
        progress.report(stage, len(tiles), len(tiles))


def needs_tiling(height: int, width: int, tile_size: int) -> bool:
    """Whether an image (padded size, pixels) is larger than one tile in either direction."""
    return height > tile_size or width > tile_size


def _cells(tile_size: int, stride: int) -> int:
    if tile_size < stride:
        raise ValueError(f"tile size {tile_size} is smaller than the stride {stride}")
    return tile_size // stride


def _pixel_tile(x: torch.Tensor, stride: int, ty0: int, ty1: int, tx0: int, tx1: int) -> torch.Tensor:
    """The pixels under latent cells [ty0, ty1) × [tx0, tx1) of the unpadded image x,
    replicate-padded on the bottom/right where the cells reach past the image (the same
    values as padding the whole image to a multiple of the stride first)."""
    height, width = x.shape[-2:]
    y1, x1 = min(ty1 * stride, height), min(tx1 * stride, width)
    tile = x[..., ty0 * stride:y1, tx0 * stride:x1]
    pad_h, pad_w = ty1 * stride - y1, tx1 * stride - x1
    if pad_h or pad_w:
        tile = F.pad(tile, (0, pad_w, 0, pad_h), mode="replicate")
    return tile


def tiled_analysis(analysis: nn.Module, x: torch.Tensor, stride: int, tile_size: int = DEFAULT_TILE_SIZE,
                   margin: int | None = None) -> torch.Tensor:
    """analysis(pad(x)) computed tile by tile: x (1, C, H, W) unpadded → latent (1, D, ⌈H/s⌉, ⌈W/s⌉).

    The image is replicate-padded to a multiple of the stride on its bottom/right edges,
    per tile (the same values as padding the whole image first, without the full copy).
    ``margin`` (latent cells) defaults to the transform's receptive field.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {tuple(x.shape)}")
    margin = analysis_margin(analysis, stride) if margin is None else margin
    dtype = next(analysis.parameters()).dtype  # tiles are cast one by one, not the whole image
    height, width = x.shape[-2:]
    grid_h, grid_w = math.ceil(height / stride), math.ceil(width / stride)
    cells = _cells(tile_size, stride)
    layers, suffix_reach = _cone_plan(analysis)
    out: torch.Tensor | None = None
    for (cy0, cy1, ty0, ty1), (cx0, cx1, tx0, tx1) in grid_tiles(grid_h, grid_w, cells, margin, "analysis"):
        tile = _same_layout(_pixel_tile(x, stride, ty0, ty1, tx0, tx1).to(dtype))
        core = _cone_forward(layers, suffix_reach, tile, (cy0 - ty0, cy1 - ty0), (cx0 - tx0, cx1 - tx0))
        if out is None:
            out = core.new_empty((1, core.shape[1], grid_h, grid_w))
        out[..., cy0:cy1, cx0:cx1] = core
        del core, tile
    assert out is not None
    return out


def analysis_at(analysis: nn.Module, x: torch.Tensor, stride: int, cells: torch.Tensor,
                margin: int | None = None) -> torch.Tensor:
    """The latent vectors (len(cells), D) at latent cells (rows of (y, x)) of analysis(pad(x)).

    Nearby cells share one tile (``cell_groups``): each group is computed from the pixels
    under its bounding box plus ``margin`` cells around it, clipped to the image as
    ``tiled_analysis`` clips, so every cell sees exactly the inputs and border padding it
    sees in the whole image. Where the groups' tiles would cover more of the grid than a
    tiled pass over the whole image does (many cells asked for), that pass runs instead.
    """
    margin = analysis_margin(analysis, stride) if margin is None else margin
    dtype = next(analysis.parameters()).dtype  # tiles are cast one by one, not the whole image
    grid_h, grid_w = math.ceil(x.shape[-2] / stride), math.ceil(x.shape[-1] / stride)
    listed = [(int(cy), int(cx)) for cy, cx in cells.tolist()]
    if not listed:
        raise ValueError("no cells given")
    groups = cell_groups(listed, margin, grid_h, grid_w)
    core = _cells(DEFAULT_TILE_SIZE, stride)
    whole_cost = sum(t1 - t0 for _, _, t0, t1 in spans(grid_h, core, margin)) \
        * sum(t1 - t0 for _, _, t0, t1 in spans(grid_w, core, margin))
    if sum(tile_cells(group, margin, grid_h, grid_w) for group in groups) > whole_cost:
        latent = tiled_analysis(analysis, x, stride, DEFAULT_TILE_SIZE, margin)
        ys, xs = zip(*listed)
        return latent[0][:, list(ys), list(xs)].t()
    layers, suffix_reach = _cone_plan(analysis)
    vectors: dict[tuple[int, int], torch.Tensor] = {}
    for group in groups:
        (y0, y1), (x0, x1) = _bounds(group)
        (ty0, ty1), (tx0, tx1) = _tile_box(group, margin, grid_h, grid_w)
        tile = _pixel_tile(x, stride, ty0, ty1, tx0, tx1).to(dtype)
        latent = _cone_forward(layers, suffix_reach, tile, (y0 - ty0, y1 - ty0), (x0 - tx0, x1 - tx0))
        for cy, cx in group:
            vectors[(cy, cx)] = latent[0, :, cy - y0, cx - x0]
    return torch.stack([vectors[cell] for cell in listed])


# Cells are grouped within blocks of this many latent cells per side (twice the shipped model's margin of 6):
# a greedy merge over all cells would cost a cubic time in their number.
GROUP_BLOCK = 24
# A block holding more cells than this is one group (a tile over all of them covers fewer
# cells than separate tiles would), which keeps the greedy merge below cheap.
GREEDY_LIMIT = 12


def cell_groups(cells: list[tuple[int, int]], margin: int, grid_h: int, grid_w: int) -> list[list[tuple[int, int]]]:
    """Cells grouped so that one tile over each group's bounding box costs fewer cells than
    separate tiles: within each GROUP_BLOCK-sided block, pairs of groups are merged, the
    largest saving first, while a merge saves anything.

    On the 24 Kodak images at 12 stages this covers 23 % fewer cells than one tile per cell,
    and one tile at a time (not batches of same-shaped tiles, which run slower per tile on a
    CPU) took the float64 re-analysis from about 0.32 to 0.21 s per image.
    """
    blocks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for cell in dict.fromkeys(cells):  # each cell once, in order
        blocks.setdefault((cell[0] // GROUP_BLOCK, cell[1] // GROUP_BLOCK), []).append(cell)
    groups: list[list[tuple[int, int]]] = []
    for members in blocks.values():
        if len(members) > GREEDY_LIMIT:
            groups.append(members)
            continue
        block_groups = [[cell] for cell in members]
        costs = [tile_cells(g, margin, grid_h, grid_w) for g in block_groups]
        while True:
            best: tuple[int, int, int] | None = None
            for i in range(len(block_groups)):
                for j in range(i + 1, len(block_groups)):
                    saving = costs[i] + costs[j] - tile_cells(block_groups[i] + block_groups[j], margin,
                                                               grid_h, grid_w)
                    if saving > 0 and (best is None or saving > best[0]):
                        best = (saving, i, j)
            if best is None:
                break
            _, i, j = best
            block_groups[i] += block_groups.pop(j)
            costs.pop(j)
            costs[i] = tile_cells(block_groups[i], margin, grid_h, grid_w)
        groups += block_groups
    return groups


def _bounds(group: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open bounding box ((y0, y1), (x0, x1)) of a group of cells."""
    ys, xs = [cy for cy, _ in group], [cx for _, cx in group]
    return (min(ys), max(ys) + 1), (min(xs), max(xs) + 1)


def _tile_box(group: list[tuple[int, int]], margin: int, grid_h: int,
              grid_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The tile of a group, in latent cells: its bounding box plus the margin, clipped to the grid."""
    (y0, y1), (x0, x1) = _bounds(group)
    return (max(0, y0 - margin), min(grid_h, y1 + margin)), (max(0, x0 - margin), min(grid_w, x1 + margin))


def tile_cells(group: list[tuple[int, int]], margin: int, grid_h: int, grid_w: int) -> int:
    """Latent cells under the tile of a group."""
    (ty0, ty1), (tx0, tx1) = _tile_box(group, margin, grid_h, grid_w)
    return (ty1 - ty0) * (tx1 - tx0)


def _layers(stack: nn.Module) -> list[nn.Module]:
    """A stack's layers in forward order, nested nn.Sequential opened (any other module, such
    as a residual block, stays one layer)."""
    if isinstance(stack, nn.Sequential):
        return [layer for child in stack for layer in _layers(child)]
    return [stack]


def _cone_plan(stack: nn.Module) -> tuple[list[nn.Module], list[tuple[float, float, float]]]:
    """A stack's layers (_layers) and, after each but the last, the reach of the layers that
    follow it: what _cone_forward needs."""
    layers = _layers(stack)
    return layers, [reach(nn.Sequential(*layers[k + 1:])) for k in range(len(layers) - 1)]


def _same_layout(x: torch.Tensor) -> torch.Tensor:
    """x contiguous in the memory layout it has (channels-last or not), so that a cut-out
    view reaches the next convolution in the layout of the CPU's channels-last weights."""
    channels_last = x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# A cut copies what it keeps: one that keeps more than this share of a map costs more than
# the layers after it save. On an interior 1024-pixel tile (10 runs each, fastest): the
# synthesis took 0.535 s cutting where at most 97 % is kept (all but the cut before its last,
# cheap convolution), 0.548 s cutting everywhere, 0.626 s without cuts; the analysis (cut
# after its residual blocks only) 0.290 / 0.305 / 0.289 s.
CUT_KEEPS_AT_MOST = 0.97


def _cone_forward(layers: list[nn.Module], suffix_reach: list[tuple[float, float, float]], x: torch.Tensor,
                  rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """Outputs [rows) × [cols) of the stack ``layers`` on x, as (B, D, h, w).

    A tile holds the whole receptive field of its outputs, but after each layer only part of
    the feature map still feeds them: the rest is cut away (``suffix_reach[k]`` is the reach
    of the layers after layer k). With model 6 this took a fifth off the float64
    re-analysis of single cells (six Kodak images at 12 stages: 2.3 s instead of 2.9 s); in
    a tiled synthesis the costliest layers, at 2 and 4 times the latent resolution, then
    compute their tile's core and a few cells more instead of its whole 8-cell margins.
    Each cut keeps the output grid's phase (_cone_window); the cut edges' zero padding only
    touches outputs that the kept ones do not depend on. A cut that would keep nearly all
    of a map is skipped (CUT_KEEPS_AT_MOST).
    """
    for k, layer in enumerate(layers):
        x = layer(x)
        if k == len(suffix_reach):
            break
        left, right, jump = suffix_reach[k]
        (y0, y1), cut_rows = _cone_window(rows, left, right, jump, x.shape[-2])
        (x0, x1), cut_cols = _cone_window(cols, left, right, jump, x.shape[-1])
        if (y1 - y0) * (x1 - x0) <= CUT_KEEPS_AT_MOST * x.shape[-2] * x.shape[-1]:
            x, rows, cols = _same_layout(x[..., y0:y1, x0:x1]), cut_rows, cut_cols
    return x[:, :, rows[0]:rows[1], cols[0]:cols[1]]


def _cone_window(outputs: tuple[int, int], left: float, right: float, jump: float,
                 length: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """([start, stop) of the inputs that outputs [o0, o1) read, their indices after the cut).

    Cutting ``start`` inputs moves every output by start / jump steps, which must be whole:
    where the layers after the cut shrink the grid (jump ≥ 1), the cut starts on a multiple
    of jump; where they enlarge it by a whole factor (jump = 1/r), anywhere.
    """
    o0, o1 = outputs
    unit = jump if jump >= 1 else 1.0
    start = int(max(0, math.floor((o0 * jump - left) / unit)) * unit)
    stop = min(length, math.floor((o1 - 1) * jump + right) + 1)
    moved = round(start / jump)
    return (start, stop), (o0 - moved, o1 - moved)


def tiled_synthesis(synthesis: nn.Module, latent: torch.Tensor, stride: int, tile_size: int = DEFAULT_TILE_SIZE,
                    margin: int | None = None, clamp: bool = True) -> torch.Tensor:
    """synthesis(latent) computed tile by tile: (1, D, h, w) → (1, C, h·s, w·s).

    ``clamp`` clamps each tile to [0, 1] as it is written (elementwise, so identical to
    clamping afterwards, without a second full-size copy).
    """
    if latent.dim() != 4 or latent.shape[0] != 1:
        raise ValueError(f"expected one latent (1, D, h, w), got {tuple(latent.shape)}")
    margin = synthesis_margin(synthesis) if margin is None else margin
    jump = reach(synthesis)[2]
    if jump * stride != 1:
        raise ValueError(f"synthesis transform enlarges by {1 / jump}, the model's stride is {stride}")
    grid_h, grid_w = latent.shape[-2:]
    cells = _cells(tile_size, stride)
    layers, suffix_reach = _cone_plan(synthesis)
    out: torch.Tensor | None = None
    for (cy0, cy1, ty0, ty1), (cx0, cx1, tx0, tx1) in grid_tiles(grid_h, grid_w, cells, margin, "synthesis"):
        core = _cone_forward(layers, suffix_reach, _same_layout(latent[..., ty0:ty1, tx0:tx1]),
                             ((cy0 - ty0) * stride, (cy1 - ty0) * stride), ((cx0 - tx0) * stride, (cx1 - tx0) * stride))
        if out is None:
            out = core.new_empty((1, core.shape[1], grid_h * stride, grid_w * stride))
        if clamp:
            core = core.clamp(0.0, 1.0)
        out[..., cy0 * stride:cy1 * stride, cx0 * stride:cx1 * stride] = core
        del core
    assert out is not None
    return out
