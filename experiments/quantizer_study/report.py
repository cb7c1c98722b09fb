"""The study's summary: mean ± std over seeds per (quantizer, coding), the Markdown table,
and the figure (Kodak PSNR against fixed and entropy-coded bpp).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.quantizer_study.training import LABELS, QUANTIZERS

REFERENCE = "diveq"  # paired differences in the summary are taken against this quantizer


def row_key(name: str, variant: str) -> str:
    return name if not variant else f"{name} ({variant})"


def row_label(name: str, variant: str) -> str:
    label = LABELS[name]
    if variant == "c":
        return f"{label} (c) nearest codeword"
    if variant == "a":
        return f"{label} (a) segment + 2-bit t"
    return label


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and sample std over seeds, one row per (quantizer, coding variant)."""
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for run in runs:
        for variant, metrics in run["codings"].items():
            groups.setdefault((run["quantizer"], variant), []).append((run, metrics))
    rows = []
    for (name, variant), items in groups.items():
        def stat(values: list[float]) -> tuple[float, float]:
            arr = np.asarray(values, dtype=np.float64)
            return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        row = {"key": row_key(name, variant), "label": row_label(name, variant), "quantizer": name,
               "variant": variant, "seeds": len(items)}
        for field in ("psnr", "ms_ssim", "bpp_fixed", "bpp_entropy", "kodak_dead_symbols"):
            row[field] = stat([m[field] for _, m in items])
        row["kodak_perplexity"] = stat([float(np.mean(m["kodak_perplexity"])) for _, m in items])
        row["seconds_per_step"] = stat([r["seconds_per_step"] for r, _ in items])
        row["final_train_psnr"] = stat([r["final_train_psnr"] for r, _ in items])
        row["alphabet_total"] = items[0][1]["alphabet_total"]
        row["bits_per_vector_fixed"] = items[0][1]["bits_per_vector_fixed"]
        row["codewords_replaced"] = stat([r["codewords_replaced"] for r, _ in items])
        row["nan_runs"] = sum(1 for r, m in items if r["nan_step"] is not None or r["nonfinite_params"]
                              or m["nonfinite_kodak_values"])
        # Paired with DiVeQ on the same seed (same transform init, same crops): the seed's
        # own spread cancels, which is what the small differences here need.
        reference = {r["seed"]: r["codings"][""] for r in runs if r["quantizer"] == REFERENCE}
        paired = [(m, reference[r["seed"]]) for r, m in items if r["seed"] in reference]
        if paired:
            row["vs_diveq_same_seed"] = {
                field: stat([m[field] - ref[field] for m, ref in paired])
                for field in ("psnr", "ms_ssim", "bpp_entropy")
            }
            row["vs_diveq_same_seed"]["psnr_higher_seeds"] = sum(1 for m, ref in paired if m["psnr"] > ref["psnr"])
            row["vs_diveq_same_seed"]["seeds"] = len(paired)
        rows.append(row)
    order = {q: i for i, q in enumerate(QUANTIZERS)}
    rows.sort(key=lambda r: (order[r["quantizer"]], r["variant"] != "c"))
    return rows


def fmt(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table_markdown(rows: list[dict]) -> str:
    head = ("| quantizer | bits/vector (fixed) | bpp fixed | bpp entropy-coded | PSNR-RGB (dB) "
            "| ΔPSNR vs DiVeQ, same seed (dB) | MS-SSIM "
            "| Kodak perplexity | dead symbols on Kodak | train PSNR, last steps (dB) | s/step | NaN runs |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        delta = r.get("vs_diveq_same_seed")
        delta_cell = (f"{fmt(delta['psnr'], 2)} ({delta['psnr_higher_seeds']}/{delta['seeds']} higher)"
                      if delta and r["key"] != REFERENCE else "—")
        lines.append(
            f"| {r['label']} | {r['bits_per_vector_fixed']:.2f} | {r['bpp_fixed'][0]:.4f} "
            f"| {fmt(r['bpp_entropy'], 4)} | {fmt(r['psnr'], 2)} | {delta_cell} | {fmt(r['ms_ssim'], 4)} "
            f"| {fmt(r['kodak_perplexity'], 1)} | {fmt(r['kodak_dead_symbols'], 1)} / {r['alphabet_total']} "
            f"| {fmt(r['final_train_psnr'], 2)} | {fmt(r['seconds_per_step'], 3)} | {r['nan_runs']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against fixed and entropy-coded bpp, one marker per row, error bars = std over seeds.

    On the fixed-rate panel most rows share one rate (log₂K bits per vector), so they are
    spread sideways by a small offset (stated on the axis) to keep them visible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), sharey=True)
    markers = "osD^v<>phX*Pd"
    cmap = plt.get_cmap("tab10")
    spread = 0.004
    for i, r in enumerate(rows):
        style = dict(fmt=markers[i % len(markers)], color=cmap(i % 10), capsize=3, markersize=7, label=r["label"])
        offset = (i - (len(rows) - 1) / 2) * spread
        axes[0].errorbar(r["bpp_fixed"][0] + offset, r["psnr"][0], yerr=r["psnr"][1], **style)
        axes[1].errorbar(r["bpp_entropy"][0], r["psnr"][0], xerr=r["bpp_entropy"][1], yerr=r["psnr"][1], **style)
    axes[0].set_xlabel(f"bpp, fixed rate: log₂(alphabet) bits per latent vector / stride²\n"
                       f"(markers spread sideways by {spread} bpp per row for visibility)")
    axes[1].set_xlabel("bpp, entropy-coded payload (static table from training crops)")
    axes[0].set_ylabel("Kodak PSNR-RGB (dB), mean ± std over seeds")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_title(args: dict) -> str:
    return (f"VQ-VAE (channels {args['channels']}, D = {args['latent_dim']}, stride {2 ** args['downsamplings']}), "
            f"{args['steps']} steps ({args['warmup_steps']} without quantizer) × batch {args['batch']} × "
            f"{args['crop']}² crops, {args['seeds']} seeds; evaluated on Kodak")


def replot(json_path: Path) -> None:
    """Redraw the figure from a JSON the study wrote (no training, no evaluation)."""
    report = json.loads(json_path.read_text())
    plot(report["summary"], json_path.with_suffix(".png"), plot_title(report["args"]))
