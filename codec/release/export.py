"""Turn a training checkpoint into a shipped model: safetensors + card + entropy tables.

``python -m diveq_codec.codec.release.export CHECKPOINT --name NAME --model-id N --data TRAIN_DIR``

The entropy tables are measured here, on the training images (never on Kodak), by running
the real coding path (nearest-codeword search on every stage) over whole images.
CHECKPOINT may also be a shipped ``.safetensors`` with its ``--base-card``: the same network
then ships again under a new id with freshly measured tables (a new entropy coder's, say).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diveq_codec.codec.card_schema import save_card_data
from diveq_codec.codec.rate_tables import code_lengths, context_counts, smoothed_counts, table_entropy_bits
from diveq_codec.codec.zoo import (
    ENTROPY_TENSOR,
    card_rate_points,
    file_sha256,
    read_card,
    read_weights_file,
)
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.choices import Points, choices_at_points
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.data import list_images, load_rgb


def measure_tables(model: VQAutoencoder, folder: Path, max_images: int, max_side: int,
                   points: Points | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Raw counts (stages, alphabet + 1, alphabet) in their contexts (codec/rate_tables.py), over
    up to ``max_images`` training images: of the nearest codewords at all stages, or, given
    rate points (stages, λ), of the encoder's choices at each, λ weighing the code lengths of
    the nearest codewords' tables (measured first)."""
    stages, alphabet = model.num_stages, model.quantizer.alphabet_sizes[0]
    paths = list_images(folder)
    rng = np.random.default_rng(0)
    if len(paths) > max_images:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), max_images, replace=False))]

    def count(choose: Callable[[torch.Tensor], list[torch.Tensor]]) -> np.ndarray:
        counts = np.zeros((stages, alphabet + 1, alphabet), dtype=np.int64)
        for path in paths:
            for indices in choose(load_rgb(path, max_side).unsqueeze(0).float() / 255.0):
                flat = indices.reshape(indices.shape[0], -1).numpy()
                counts[: flat.shape[0]] += context_counts(flat, indices.shape[-1], alphabet)
        return counts

    def nearest(x: torch.Tensor) -> list[torch.Tensor]:
        """All stages' nearest codewords, exactly as the coding path picks them."""
        indices, grid = model.encode_indices(x)
        return [indices.reshape(stages, *grid)]

    counts = count(nearest)
    if points is not None:
        lengths = code_lengths(smoothed_counts(counts))
        counts = count(lambda x: choices_at_points(model, x, points, lengths))
    return counts, len(paths)


def copied_tables(card_path: Path, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, dict]:
    """(tables, card record) of the model of ``card_path``, which must have the
    same analysis transform and codebooks as ``state``: tables describe one encoder's choices."""
    source = json.loads(card_path.read_text())
    _, source_state, tables, _ = read_weights_file(card_path.parent / source["file"])
    encoder = [name for name in source_state if not name.startswith("synthesis.")]
    if any(not torch.equal(source_state[name], state[name].float()) for name in encoder):
        raise SystemExit(f"--tables-from {card_path}: its analysis transform or codebooks differ from the "
                         f"checkpoint's, so its tables do not fit")
    record = {key: value for key, value in source["entropy_tables"].items()
              if key not in ("bits_per_symbol", "tensor")}
    record["copied_from"] = {"name": source["name"], "sha256": source["sha256"]}
    return tables.astype(np.int32), record


def training_record(checkpoint: dict, run_dir: Path, base_card: dict | None = None,
                    via: Sequence[tuple[Path, str]] = ()) -> dict:
    """This run's record; a fine-tuning run nests the record of what it started from.

    ``via`` lists (model.pt, command) of the unshipped runs between this one and
    ``base_card``'s model, nearest first: a chain of lent-GPU calls, say.
    """
    record = {
        "steps": int(checkpoint["step"]),
        "wall_time_s": round(float(checkpoint["elapsed_s"]), 1),
        "device": checkpoint.get("device", "unknown"),
        "images_seen": int(checkpoint["images_seen"]),
        "images_per_s": round(checkpoint["images_seen"] / max(float(checkpoint["elapsed_s"]), 1e-9), 1),
    }
    if "init_from" in checkpoint:
        # A fine-tuning run: steps and time above are this run's; the start is named here.
        start = dict(checkpoint["init_from"])
        if via:
            parent_path, parent_command = via[0]
            parent = torch.load(parent_path, map_location="cpu", weights_only=True)
            _check_started_from(start, parent_path, parent)
            start["training"] = {"command": parent_command,
                                 **training_record(parent, parent_path.parent, base_card, via[1:])}
        elif base_card is not None:
            # The shipped model it started from, with that model's own training record.
            if start.get("sha256") != base_card["sha256"]:
                raise SystemExit(f"--base-card is {base_card['name']} (sha256 {base_card['sha256'][:16]}…), but the "
                                 f"run started from {start['path']} (sha256 {str(start.get('sha256'))[:16]}…)")
            start.update(name=base_card["name"], training=base_card["training"])
        record["initialised_from"] = start
    log = run_dir / "train_log.jsonl"
    if log.exists():
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if lines:
            record["final_train_psnr_db"] = round(lines[-1]["psnr"], 2)
            record["final_perplexity"] = lines[-1].get("perplexity")
    return record


def _check_started_from(start: dict, path: Path, checkpoint: dict) -> None:
    """Refuse a --via checkpoint that is not the one the run started from."""
    if "sha256" in start:
        same = start["sha256"] == file_sha256(path)
    else:  # runs before train recorded a checkpoint's sha256: its step and image counts
        recorded = (start.get("steps"), start.get("images_seen"))
        same = recorded == (int(checkpoint["step"]), int(checkpoint["images_seen"]))
    if not same:
        raise SystemExit(f"--via {path} is not the checkpoint the run started from ({start['path']})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diveq_codec.codec.release.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--model-id", type=int, required=True)
    p.add_argument("--data", type=Path, required=True, help="training images for the entropy tables")
    p.add_argument("--table-images", type=int, default=300)
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--first-quality", type=int, default=1, help="quality number of the first stage prefix")
    p.add_argument("--train-command", default="", help="the command that trained it, for the card")
    p.add_argument("--train-data", default="", help="what it was trained on, for the card")
    p.add_argument("--base-card", type=Path, default=None,
                   help="card of the shipped model a fine-tuning run started from (its training is recorded)")
    p.add_argument("--via", type=Path, action="append", default=[],
                   help="model.pt of an unshipped run between the checkpoint and --base-card's model, "
                        "nearest first (repeat); each needs a --via-command")
    p.add_argument("--via-command", action="append", default=[], help="the command of the matching --via run")
    p.add_argument("--rate-points-from", type=Path, default=None,
                   help="card whose rate points (quality, stages, rate_weight) to keep, as after a decoder-only "
                        "fine-tune (models.decoder_finetune); default: one point per stage prefix")
    p.add_argument("--tables-at-rate-points", action="store_true",
                   help="measure the entropy tables on the encoder's choices at --rate-points-from's points "
                        "(each at its rate_weight), not on the nearest codewords at all stages")
    p.add_argument("--tables-from", type=Path, default=None,
                   help="card of a model with the same analysis transform and codebooks whose entropy tables to "
                        "copy, not measure: after a decoder-only fine-tune, the encoder it was trained against")
    p.add_argument("--out", type=Path, default=Path("weights"))
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``p``'s flags, refusing the combinations that cannot work."""
    args = p.parse_args(argv)
    if args.tables_at_rate_points and args.rate_points_from is None:
        p.error("--tables-at-rate-points needs --rate-points-from")
    if args.tables_at_rate_points and args.tables_from is not None:
        p.error("--tables-from copies the tables; --tables-at-rate-points measures them: give one")
    if len(args.via) != len(args.via_command):
        p.error("give one --via-command for each --via")
    return args


def load_network(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, weights, training record) of the checkpoint, or of a shipped .safetensors that is
    exported again under its own --base-card."""
    base_card = json.loads(args.base_card.read_text()) if args.base_card is not None else None
    if args.checkpoint.suffix == ".safetensors":
        if base_card is None or base_card["sha256"] != file_sha256(args.checkpoint):
            p.error(f"re-exporting {args.checkpoint} needs its own card as --base-card")
        config, state, _, _ = read_weights_file(args.checkpoint)
        training = {**base_card["training"], "reexported_from": {"name": base_card["name"],
                                                                 "sha256": base_card["sha256"]}}
        return config, state, training
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    config, state = ModelConfig.from_dict(checkpoint["config"]), checkpoint["model"]
    training = {"data": args.train_data, "command": args.train_command,
                **training_record(checkpoint, args.checkpoint.parent, base_card, list(zip(args.via, args.via_command)))}
    return config, state, training


def rate_points_for(p: argparse.ArgumentParser, args: argparse.Namespace,
                    num_stages: int) -> tuple[list[dict], Points | None]:
    """The card's rate points (one per stage prefix, or --rate-points-from's) and, under
    --tables-at-rate-points, the points (stages, λ) to measure the tables at."""
    rate_points = [{"quality": args.first_quality + s - 1, "stages": s, "kodak_bpp": None, "kodak_psnr": None}
                   for s in range(1, num_stages + 1)]
    if args.rate_points_from is None:
        return rate_points, None
    kept = card_rate_points(read_card(args.rate_points_from))
    if any(point.stages > num_stages for point in kept):
        p.error(f"{args.rate_points_from} has rate points with more stages than the model's {num_stages}")
    # Kodak figures are the other model's: measured again by eval + record_rd.
    rate_points = [{"quality": point.quality, "stages": point.stages, "rate_weight": point.rate_weight,
                    "kodak_bpp": None, "kodak_psnr": None} for point in kept]
    return rate_points, [(point.stages, point.rate_weight) for point in kept] if args.tables_at_rate_points else None


def measured_tables(model: VQAutoencoder, data: Path, max_images: int, max_side: int,
                    points: Points | None) -> tuple[np.ndarray, dict]:
    """(tables, card record) measured on the training images (see measure_tables)."""
    with torch.no_grad():
        raw, images = measure_tables(model, data, max_images, max_side, points)
    # int32 holds any count here (millions of symbols at most) in half of int64's bytes.
    if raw.max() >= np.iinfo(np.int32).max:
        raise SystemExit("a table count does not fit int32: measure the tables on fewer images")
    tables = smoothed_counts(raw).astype(np.int32)
    record = {
        "measured_on": f"{images} images of {data} (long side ≤ {max_side}), " + (
            "the encoder's choices at every rate point (each at its rate_weight; λ weighing the code lengths "
            "of tables measured first on the nearest codewords at all stages), summed"
            if points is not None else "coding path, all stages"),
        "contexts": "stage 1: the index above (row 'alphabet' for the top row); stage m > 1: stage m-1's index at the same position",
        "smoothing": "+1 on every count",
    }
    return tables, record


def write_release(args: argparse.Namespace, model: VQAutoencoder, training: dict, rate_points: list[dict],
                  tables: np.ndarray, table_record: dict) -> None:
    """Write OUT/NAME.safetensors (the network and its static tables) and its card, OUT/NAME.json.
    The coder also needs an index model, trained on this model's own choices and added by
    codec/release/index_model_export.py (docs/training.md)."""
    config = model.config
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    tensors[ENTROPY_TENSOR] = torch.from_numpy(tables)
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / f"{args.name}.safetensors"
    save_file(tensors, str(weights_path), metadata={"config": json.dumps(config.to_dict()),
                                                   "model_id": str(args.model_id)})
    sha = file_sha256(weights_path)
    bits = table_entropy_bits(tables)
    card = {
        "name": args.name,
        "model_id": args.model_id,
        "file": weights_path.name,
        "sha256": sha,
        "bytes": weights_path.stat().st_size,
        "config": config.to_dict(),
        "quantizer": config.quantizer,
        "training": training,
        "exported_with": {"torch": torch.__version__, "python": platform.python_version()},
        "entropy_tables": {
            **table_record,
            "bits_per_symbol": [round(float(b), 4) for b in bits],
            "tensor": f"{ENTROPY_TENSOR} in the weights file, int32, shape {list(tables.shape)}",
        },
        "rate_points": rate_points,
    }
    save_card_data(args.out / f"{args.name}.json", card)
    print(f"wrote {weights_path} ({weights_path.stat().st_size:,} bytes, sha256 {sha[:16]}…); "
          f"table bits/symbol {np.round(bits, 2).tolist()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = parse_args(p, argv)
    config, state, training = load_network(p, args)
    model = VQAutoencoder(config)
    model.load_state_dict(state)
    model.eval()
    rate_points, points = rate_points_for(p, args, model.num_stages)
    if args.tables_from is not None:
        tables, table_record = copied_tables(args.tables_from, state)
    else:
        tables, table_record = measured_tables(model, args.data, args.table_images, args.max_side, points)
    write_release(args, model, training, rate_points, tables, table_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
