"""What the curves say: BD-rate against each reference, quality at matched bpp, and how
far the anchors measured here are from their published curves; as data and as markdown."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from diveq_codec.codec.evaluation.bdrate import bd_rate, psnr_overlap, why_not
from diveq_codec.codec.evaluation.curves import Curve

BD_METHOD = "Bjøntegaard (VCEG-M33) cubic fit of log rate vs PSNR over the shared PSNR range"


def bd_table(ours: Curve, references: Sequence[Curve]) -> list[dict[str, Any]]:
    """BD-rate of ``ours`` against each reference, with why not where it cannot be had."""
    rows = []
    for ref in references:
        reason = why_not(ref.bpp, ref.psnr, ours.bpp, ours.psnr)
        value = None if reason else bd_rate(ref.bpp, ref.psnr, ours.bpp, ours.psnr)
        if value is not None and not math.isfinite(value):
            value, reason = None, "fit failed"
        overlap = psnr_overlap(ref.psnr, ours.psnr)
        rows.append({"reference": ref.name, "key": ref.key, "kind": ref.kind, "source": ref.source,
                     "bd_rate_percent": value, "psnr_overlap_db": list(overlap) if overlap else None,
                     "note": reason})
    return rows


def bd_document(test_name: str, rows: list[dict[str, Any]], anchor_checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of bd_rate.json."""
    return {"test": test_name, "metric": "psnr-rgb", "rate": "bpp", "method": BD_METHOD,
            "rows": rows, "anchor_checks": anchor_checks}


def bd_markdown(test_name: str, rows: Sequence[dict[str, Any]]) -> str:
    lines = [(f"BD-rate of {test_name} against each reference (PSNR-RGB; Bjøntegaard cubic fit over the "
              "shared PSNR range; negative = fewer bits for the same PSNR)"), "",
             "| reference | source | BD-rate | PSNR overlap (dB) |", "| --- | --- | ---: | --- |"]
    for r in rows:
        value = f"{r['bd_rate_percent']:+.1f} %" if r["bd_rate_percent"] is not None else "n/a"
        overlap = (f"{r['psnr_overlap_db'][0]:.2f}–{r['psnr_overlap_db'][1]:.2f}"
                   if r["psnr_overlap_db"] else "none")
        source = "measured here" if r["kind"] == "local" else f"published ({r['source']})"
        lines.append(f"| {r['reference']} | {source} | {value} | {overlap} |")
    return "\n".join(lines) + "\n"


def _interpolator(bpp: Sequence[float], values: Sequence[float] | None) -> Callable[[float], float | None]:
    """``values`` at a given bpp, interpolated linearly in log bpp; None outside the curve's
    bpp range (no extrapolation) or where the curve has no such values."""
    if values is None:
        return lambda _: None
    b = np.asarray(bpp, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(b) & np.isfinite(v) & (b > 0)
    order = np.argsort(b[keep])
    b, v = b[keep][order], v[keep][order]

    def at(rate: float) -> float | None:
        if b.size < 2 or not b[0] <= rate <= b[-1]:
            return None
        return float(np.interp(np.log(rate), np.log(b), v))
    return at


def psnr_gap(local: Curve, published: Curve) -> dict[str, Any] | None:
    """Local minus published PSNR at the local points' bpp (published curve interpolated
    linearly in log bpp, only inside its bpp range): mean and largest absolute gap."""
    published_at = _interpolator(published.bpp, published.psnr)
    gaps = []
    for b, p in zip(local.bpp, local.psnr):
        there = published_at(b)
        if there is not None and math.isfinite(p):
            gaps.append(p - there)
    if not gaps:
        return None
    return {"local": local.name, "published": published.source, "points": len(gaps),
            "mean_gap_db": float(np.mean(gaps)), "max_abs_gap_db": float(np.max(np.abs(gaps)))}


def anchor_checks(local: Sequence[Curve], published: Sequence[Curve]) -> list[dict[str, Any]]:
    """:func:`psnr_gap` of each anchor measured here against each published curve of the
    same name: a large gap means the anchor was not run the way the paper ran it."""
    checks = []
    for mine in local:
        for theirs in published:
            if theirs.name.lower() == mine.name.lower():
                gap = psnr_gap(mine, theirs)
                if gap:
                    checks.append(gap)
    return checks


def _ms_ssim_db(value: float | None) -> float | None:
    return None if value is None or not value < 1 else -10 * math.log10(1 - value)


def matched_rate_rows(ours: Curve, reference: Curve) -> list[dict[str, Any]]:
    """At each of our rate points inside the reference's bpp range: both PSNRs and both
    MS-SSIMs (in dB), the reference's interpolated linearly in log bpp."""
    psnr_at = _interpolator(reference.bpp, reference.psnr)
    ms_ssim_at = _interpolator(reference.bpp, reference.ms_ssim)
    rows = []
    for i, rate in enumerate(ours.bpp):
        their_psnr = psnr_at(rate)
        if their_psnr is None:
            continue
        our_ms = _ms_ssim_db(ours.ms_ssim[i]) if ours.ms_ssim else None
        rows.append({"bpp": rate, "psnr": ours.psnr[i], "reference_psnr": their_psnr,
                     "ms_ssim_db": our_ms, "reference_ms_ssim_db": _ms_ssim_db(ms_ssim_at(rate))})
    return rows


def matched_markdown(test_name: str, ours: Curve, references: Sequence[Curve]) -> str:
    """One table per reference: where, rate point by rate point, ours is ahead or behind."""
    def cell(value: float | None, signed: bool = False) -> str:
        return "n/a" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")

    lines = [(f"{test_name} against each codec measured here, at {test_name}'s own rate points (the other "
              "curve interpolated linearly in log bpp, never extrapolated); MS-SSIM as -10·log10(1 − MS-SSIM)")]
    for ref in references:
        lines += ["", f"### {ref.name}", "",
                  (f"| bpp | PSNR {test_name} | PSNR {ref.name} | Δ dB | MS-SSIM dB {test_name} | "
                   f"MS-SSIM dB {ref.name} | Δ dB |"), "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows = matched_rate_rows(ours, ref)
        if not rows:
            lines.append("| no rate point of ours inside its bpp range | | | | | | |")
        for r in rows:
            ms_delta = (None if r["ms_ssim_db"] is None or r["reference_ms_ssim_db"] is None
                        else r["ms_ssim_db"] - r["reference_ms_ssim_db"])
            lines.append(f"| {r['bpp']:.4f} | {cell(r['psnr'])} | {cell(r['reference_psnr'])} | "
                         f"{cell(r['psnr'] - r['reference_psnr'], True)} | {cell(r['ms_ssim_db'])} | "
                         f"{cell(r['reference_ms_ssim_db'])} | {cell(ms_delta, True)} |")
    return "\n".join(lines) + "\n"
