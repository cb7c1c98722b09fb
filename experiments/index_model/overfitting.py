"""Does the index model overfit? Bits per symbol of the float model, per configuration and
stage, on photos it trained on against the photos its training held out.

    python experiments/index_model/overfitting.py MAPS.npz CHECKPOINT [CHECKPOINT ...] [--every 7]

MAPS.npz is the trainpack's maps (``.data/index_maps.npz``); ``--every`` thins the training
maps to about as many as the held-out ones. A gap that widens as training goes on (or as
the model grows) is overfitting: the reason for more maps and ``--keep-best``
(models/train_index_prior.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diveq_codec.models.index_prior import load_checkpoint
from diveq_codec.models.train_index_prior import holdout_bits, load_maps, padded_codebooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", type=Path)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--weights", type=Path, default=None, help="the codebooks' weights file (default: the shipped one)")
    parser.add_argument("--every", type=int, default=7)
    args = parser.parse_args()
    if args.weights is None:
        from diveq_codec.codec.zoo import weights_dir
        args.weights = next(iter(sorted(weights_dir().glob("*.safetensors"))))
    train, held_out, _ = load_maps([args.maps])
    books = padded_codebooks(args.weights, 4)
    print("| checkpoint | steps | configuration | trained-on photos | held-out photos |\n|---|---|---|---|---|")
    for path in args.checkpoints:
        prior, state = load_checkpoint(path)
        seen, unseen = holdout_bits(prior, train[:: args.every], books), holdout_bits(prior, held_out, books)
        for config in sorted(unseen):
            print(f"| {path} | {state['step']} | {config} | " + " / ".join(f"{v:.3f}" for v in seen[config])
                  + " | " + " / ".join(f"{v:.3f}" for v in unseen[config]) + " |")


if __name__ == "__main__":
    main()
