"""Bjøntegaard delta rate (VCEG-M33): how many more or fewer bits a codec needs for the same PSNR.

The classic method: fit log(rate) as a cubic polynomial of PSNR for each curve, integrate
both fits over the PSNR interval the two curves share, and turn the mean log-rate
difference into a percentage. Negative means the test codec needs fewer bits.

The fit and integral come from the ``bjontegaard`` package (``method="cubic"``), which is
exactly that formula (``np.polyfit(psnr, log10(rate), 3)`` + ``np.polyint``). With the
published Kodak curves it gives WebP vs JPEG −36.6 % and BPG 4:4:4 vs JPEG −59.1 %, the
values this project's anchors quote (its ``pchip``/``akima`` methods give −36.2 % / −58.9 %,
so the method matters at the half-point level; we use ``cubic``, the one papers quote).

This module only adds the guards the package leaves to its caller: points that cannot be
used (non-finite PSNR such as lossless ``inf``, rates ≤ 0) are dropped, points are sorted
by PSNR, a curve needs four points for a cubic, and curves that share no PSNR interval
give NaN instead of a warning and an extrapolated number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

MIN_POINTS = 4  # a cubic through fewer points is not determined


def _clean(rate: Sequence[float], psnr: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64).ravel()
    p = np.asarray(psnr, dtype=np.float64).ravel()
    if r.shape != p.shape:
        raise ValueError(f"{r.size} rates but {p.size} PSNR values")
    keep = np.isfinite(r) & np.isfinite(p) & (r > 0)
    r, p = r[keep], p[keep]
    order = np.argsort(p, kind="stable")
    return r[order], p[order]


def why_not(rate_ref: Sequence[float], psnr_ref: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> str | None:
    """Why a BD-rate cannot be computed for these curves, or None when it can."""
    _, p0 = _clean(rate_ref, psnr_ref)
    _, p1 = _clean(rate_test, psnr_test)
    for label, p in (("reference", p0), ("test", p1)):
        if np.unique(p).size < MIN_POINTS:
            return f"{label} curve has {np.unique(p).size} usable points (a cubic fit needs {MIN_POINTS})"
    low, high = max(p0[0], p1[0]), min(p0[-1], p1[-1])
    if not high > low:
        return (f"PSNR ranges do not overlap ({p0[0]:.2f}–{p0[-1]:.2f} dB vs "
                f"{p1[0]:.2f}–{p1[-1]:.2f} dB)")
    return None


def psnr_overlap(psnr_ref: Sequence[float], psnr_test: Sequence[float]) -> tuple[float, float] | None:
    """The PSNR interval both curves cover (the integration interval), or None."""
    p0 = np.asarray(psnr_ref, dtype=np.float64)
    p1 = np.asarray(psnr_test, dtype=np.float64)
    p0, p1 = p0[np.isfinite(p0)], p1[np.isfinite(p1)]
    if p0.size == 0 or p1.size == 0:
        return None
    low, high = max(p0.min(), p1.min()), min(p0.max(), p1.max())
    return (float(low), float(high)) if high > low else None


def bd_rate(rate_ref: Sequence[float], psnr_ref: Sequence[float],
            rate_test: Sequence[float], psnr_test: Sequence[float]) -> float:
    """BD-rate of the test curve against the reference, in percent (negative = fewer bits).

    Rates in any unit (bpp, bytes) as long as both curves use the same one; PSNR in dB.
    Returns NaN when the curves cannot be compared (see :func:`why_not`).
    """
    if why_not(rate_ref, psnr_ref, rate_test, psnr_test) is not None:
        return math.nan
    r0, p0 = _clean(rate_ref, psnr_ref)
    r1, p1 = _clean(rate_test, psnr_test)
    import bjontegaard  # the eval extra's; imported late: it pulls in scipy and matplotlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partial-overlap and polyfit conditioning notes
        value = bjontegaard.bd_rate(r0, p0, r1, p1, method="cubic", require_matching_points=False,
                                    min_overlap=0)
    return float(value)
