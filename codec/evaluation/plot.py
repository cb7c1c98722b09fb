"""The rate–distortion plot of an eval folder (``rd.png``): PSNR-RGB and MS-SSIM (dB)
against bpp, ours in black over the anchors and the published curves.

matplotlib is an optional dependency (the ``eval`` extra): imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diveq_codec.codec.evaluation.curves import Curve
from diveq_codec.codec.evaluation.msssim import ms_ssim_db
from diveq_codec.codec.evaluation.output_files import write_file

_TAGS = {"ours": "", "local": " (measured here)", "published": " (published)"}


def _one_per_name(curves: Sequence[Curve]) -> list[Curve]:
    """One curve per name: ours, then those measured here, then one with MS-SSIM (a
    CompressAI file) before a copy without it in another file."""
    seen: set[str] = set()
    unique = []
    for c in sorted(curves, key=lambda c: (c.kind != "ours", c.kind != "local", c.ms_ssim is None)):
        if c.name.lower() not in seen:
            seen.add(c.name.lower())
            unique.append(c)
    return unique


def _style(kind: str, index: int, palette: Any) -> dict[str, Any]:
    if kind == "ours":
        return {"color": "black", "linewidth": 2.5, "marker": "o", "markersize": 5, "zorder": 10}
    if kind == "local":
        return {"color": palette(index % 20), "linewidth": 1.6, "marker": ".", "markersize": 6}
    return {"color": palette(index % 20), "linewidth": 1.0, "alpha": 0.8,
            "linestyle": ("--", ":", "-.")[(index // 20) % 3]}


def _panel(ax: Any, curves: list[Curve], metric: str, label: str, xmax: float, palette: Any) -> None:
    """One axis: every curve's ``metric`` against bpp, the y range fitted to what is visible."""
    lows, highs = [], []
    for i, c in enumerate(curves):
        ys = c.psnr if metric == "psnr" else ([ms_ssim_db(v) for v in c.ms_ssim] if c.ms_ssim else None)
        if ys is None:
            continue
        pts = sorted((b, y) for b, y in zip(c.bpp, ys) if math.isfinite(b) and math.isfinite(y))
        if not pts:
            continue
        xs, vs = zip(*pts)
        ax.plot(xs, vs, label=f"{c.name}{_TAGS[c.kind]}", **_style(c.kind, i, palette))
        visible = [v for x, v in pts if x <= xmax]
        if visible:
            lows.append(min(visible))
            highs.append(max(visible))
    ax.set_xlim(0, xmax)
    if lows:
        ax.set_ylim(min(lows) - 0.5, max(highs) + 0.5)
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)


def plot_rd(path: Path, curves: Sequence[Curve], title: str) -> None:
    """Write the two-panel RD plot of ``curves`` to ``path`` (PNG); the bpp axis reaches
    1.6× our highest rate (at least 1 bpp), so that far-off published points do not squash ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unique = _one_per_name(curves)
    top = max((max(c.bpp) for c in unique if c.kind == "ours"), default=1.0)
    xmax = max(1.0, 1.6 * top)
    palette = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(16, 7))
    for ax, (metric, label) in zip(axes, (("psnr", "PSNR-RGB (dB)"), ("ms_ssim", "MS-SSIM-RGB (dB)"))):
        _panel(ax, unique, metric, label, xmax, palette)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=6.5, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.8, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_file(path, buf.getvalue())
