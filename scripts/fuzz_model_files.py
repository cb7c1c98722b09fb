"""Fuzz the model files: cards and weights are untrusted input, so every mutation must end in
a loaded model or one line with exit 4, never an internal error.

``python scripts/fuzz_model_files.py [--cases 10000] [--seed 1]``

A tiny model (a few KB, the shipped format: config in the safetensors metadata, the rate
term's static tables and the index coder's integer index model beside the network) and its
card are written to a temporary folder; each case mutates the card (a field's type or range,
a missing key, deep nesting, junk) or the weights file (flipped bytes, truncation, a tensor of
another shape or name, a wrong config, a broken index model) and loads the result through the
codec's own loader (the cards, then the weights and the index model the coder needs). The
counts of each outcome are printed; exit 1 if any case raised anything but a WeightsError.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file

from diveq_codec.codec import cards, zoo
from diveq_codec.codec.errors import WeightsError
from diveq_codec.codec.index_model import TENSOR_PREFIX
from diveq_codec.models.autoencoder import VQAutoencoder
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.weights_file import file_sha256

NAME = "fuzz-tiny"
CONFIG = ModelConfig(channels=8, latent_dim=4, downsamplings=2, num_stages=2, num_codes=8)
JUNK = [None, True, -1, 0, 1 << 70, 1.5, float("nan"), "", "x" * 300, [], {}, [[[]]], {"a": {"b": []}}]
INDEX_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1))  # rows above, or odd columns beside
INDEX_HIDDEN, INDEX_PROJECTED = 4, 2


def tiny_index_model() -> dict[str, torch.Tensor]:
    """The ``index_model.*`` int32 tensors of a small random integer index model
    (codec/index_model.py) for CONFIG's stages and codewords."""
    rng = np.random.default_rng(0)
    codes, dim, hidden, projected = CONFIG.num_codes, CONFIG.latent_dim, INDEX_HIDDEN, INDEX_PROJECTED

    def ints(*shape: int, bound: int = 1000) -> torch.Tensor:
        return torch.from_numpy(rng.integers(-bound, bound + 1, size=shape).astype(np.int32))

    def one(value: int) -> torch.Tensor:
        return torch.tensor([value], dtype=torch.int32)

    table = np.maximum(1, np.round(2.0**16 * 2.0 ** (-np.arange(16 * 16 + 1) / 16))).astype(np.int32)
    out = {"codebooks": ints(CONFIG.num_stages, codes, dim), "cap": one(512),
           "output_table": torch.from_numpy(table),
           "neighbour_offsets": torch.tensor(INDEX_OFFSETS, dtype=torch.int32)}
    for m in range(CONFIG.num_stages):
        p = f"stage{m + 1}."
        out.update({p + "neighbours": ints(len(INDEX_OFFSETS), codes + 2, hidden), p + "bias": ints(hidden),
                    p + "first_shift": one(4), p + "hidden_w": ints(hidden, hidden), p + "hidden_b": ints(hidden),
                    p + "hidden_shift": one(10), p + "out_w": ints(hidden, codes), p + "out_b": ints(codes),
                    p + "logit_shift": one(12)})
        if m:
            out.update({p + "project_w": ints(dim, projected), p + "project_b": ints(projected),
                        p + "project_shift": one(12), p + "context_w": ints(9 * projected, hidden),
                        p + "previous": ints(codes, hidden)})
    return {TENSOR_PREFIX + k: v for k, v in out.items()}


def tiny_model(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the weights file's tensors, its card) for a freshly initialised tiny model."""
    torch.manual_seed(0)
    tensors = {k: v.contiguous() for k, v in VQAutoencoder(CONFIG).state_dict().items()}
    alphabet = CONFIG.num_codes
    counts = torch.ones((CONFIG.num_stages, alphabet + 1, alphabet), dtype=torch.int32)
    tensors[zoo.ENTROPY_TENSOR] = counts
    tensors.update(tiny_index_model())
    card = {"name": NAME, "model_id": 900, "file": f"{NAME}.safetensors", "sha256": "",
            "config": CONFIG.to_dict(), "default_quality": 1,
            "rate_points": [{"quality": 1, "stages": 1}, {"quality": 2, "stages": 2, "layer_step": 8}]}
    return tensors, card


def write(folder: Path, tensors: dict[str, torch.Tensor], card: Any, config: Any = None,
          fix_sha: bool = True) -> None:
    path = folder / f"{NAME}.safetensors"
    save_file(tensors, str(path), metadata={"config": json.dumps(CONFIG.to_dict() if config is None else config)})
    if fix_sha and isinstance(card, dict):
        card = {**card, "sha256": file_sha256(path)}
    (folder / f"{NAME}.json").write_text(card if isinstance(card, str) else json.dumps(card))


def card_case(rng: random.Random, card: dict[str, Any]) -> tuple[str, Any]:
    card = json.loads(json.dumps(card))
    kind = rng.choice(["type", "missing", "point", "nesting", "junk"])
    if kind == "type":
        key = rng.choice(list(card))
        card[key] = rng.choice(JUNK)
    elif kind == "missing":
        del card[rng.choice(list(card))]
    elif kind == "point":
        point = rng.choice(card["rate_points"])
        key = rng.choice(["quality", "stages", "rate_weight", "layer_step", "kodak_bpp", "extra"])
        point[key] = rng.choice(JUNK + [-5, 256, 1e300, 0.3, 3])
    elif kind == "nesting":
        depth = rng.choice([30, 100, 5000, 200000])
        return kind, card and ('{"name": ' + "[" * depth + "]" * depth + "}")
    else:
        return kind, "".join(rng.choice("{}[]\":,0aé\x00 ") for _ in range(rng.randrange(1, 200)))
    return kind, card


def weights_case(rng: random.Random, folder: Path, tensors: dict[str, torch.Tensor], card: dict[str, Any]) -> str:
    kind = rng.choice(["flip", "truncate", "shape", "name", "dtype", "config", "tables", "index_model"])
    if kind in ("flip", "truncate"):
        write(folder, tensors, card)
        path = folder / f"{NAME}.safetensors"
        data = bytearray(path.read_bytes())
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            del data[rng.randrange(len(data)):]
        path.write_bytes(bytes(data))
        (folder / f"{NAME}.json").write_text(json.dumps({**card, "sha256": file_sha256(path)}))
        return kind
    changed = dict(tensors)
    key = rng.choice(sorted(changed))
    config: Any = None
    if kind == "shape":
        changed[key] = torch.zeros(tuple(s + rng.randint(1, 3) for s in changed[key].shape) or (2,))
    elif kind == "name":
        changed[f"{key}.extra" if rng.random() < 0.5 else key] = torch.zeros(3)
        if rng.random() < 0.5:
            del changed[key]
    elif kind == "dtype":
        changed[key] = changed[key].to(torch.float64 if changed[key].is_floating_point() else torch.float32)
    elif kind == "config":
        config = CONFIG.to_dict()
        config[rng.choice(sorted(config))] = rng.choice(JUNK + [10**6, 64, 3, "sf-diveq"])
        if rng.random() < 0.2:
            config = rng.choice(JUNK)
    elif kind == "tables":
        changed[zoo.ENTROPY_TENSOR] = torch.zeros(rng.choice([(2, 9, 8), (3, 9, 8), (2, 8, 8)]), dtype=torch.int32)
    else:
        index_model_case(rng, changed)
    write(folder, changed, card, config)
    return kind


def index_model_case(rng: random.Random, tensors: dict[str, torch.Tensor]) -> None:
    """One of the index model's tensors (in place) of another shape or out of its range, or
    gone: some stages', or all of them."""
    names = sorted(name for name in tensors if name.startswith(TENSOR_PREFIX))
    name = rng.choice(names)
    kind = rng.choice(["shape", "missing", "scalar", "values", "table", "offsets", "stage", "none"])
    if kind == "shape":
        shape = list(tensors[name].shape)
        axis = rng.randrange(len(shape))
        shape[axis] = max(0, shape[axis] + rng.choice([-1, 1, 2]))
        tensors[name] = torch.zeros(shape, dtype=torch.int32)
    elif kind == "missing":
        del tensors[name]
    elif kind == "scalar":  # a shift or the cap out of its range, or of no length
        name = rng.choice([n for n in names if n.endswith(("_shift", ".cap"))])
        value = rng.choice([-1, 0, 61, 1 << 17, (1 << 31) - 1])
        tensors[name] = torch.tensor([value] if rng.random() < 0.8 else [], dtype=torch.int32)
    elif kind == "values":  # weights whose sums leave float64's exact integers
        tensors[name] = torch.full_like(tensors[name], rng.choice([(1 << 31) - 1, -(1 << 31)]))
    elif kind == "table":
        table = tensors[TENSOR_PREFIX + "output_table"].clone()
        choice = rng.choice(["rising", "zero", "too_high", "short"])
        if choice == "rising":
            table = table.flip(0)
        elif choice == "zero":
            table[-1] = 0
        elif choice == "too_high":
            table[0] = (1 << 16) + 1
        else:
            table = table[:1]
        tensors[TENSOR_PREFIX + "output_table"] = table.contiguous()
    elif kind == "offsets":
        tensors[TENSOR_PREFIX + "neighbour_offsets"] = torch.tensor(
            rng.choice([[(0, 0)], [(1, 0)], [(0, -2)], [(-9, 0)], [(-1, 9)], [], [(-1, 0, 0)]]), dtype=torch.int32)
    elif kind == "stage":  # a stage more than the network has, or a later stage without its context
        if rng.random() < 0.5:
            for key in [n for n in names if n.startswith(TENSOR_PREFIX + "stage2.")]:
                tensors[key.replace("stage2.", f"stage{CONFIG.num_stages + 1}.")] = tensors[key].clone()
        else:
            del tensors[TENSOR_PREFIX + "stage2.previous"]
    else:
        for key in names:
            del tensors[key]


def load(folder: Path) -> None:
    """What the codec does with a model folder: list the rate points, then load the weights."""
    zoo.clear_model_cache()
    points = cards.rate_points()
    zoo.load_model(points[0].model_id, "cpu").require_index_model()


def run(cases: int, seed: int, say: Callable[[str], None] = print) -> Counter:
    outcomes: Counter = Counter()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-model-"))
    previous = os.environ.get(cards.WEIGHTS_DIR_ENV)
    os.environ[cards.WEIGHTS_DIR_ENV] = str(folder)
    try:
        tensors, card = tiny_model(folder)
        rng = random.Random(seed)
        slowest = 0.0
        for case in range(cases):
            if rng.random() < 0.5:
                kind, mutated = card_case(rng, card)
                write(folder, tensors, mutated, fix_sha=False)
                if isinstance(mutated, dict):  # keep the sha right, so the card's own fields are what fail
                    mutated["sha256"] = file_sha256(folder / f"{NAME}.safetensors")
                    (folder / f"{NAME}.json").write_text(json.dumps(mutated))
                kind = f"card {kind}"
            else:
                kind = f"weights {weights_case(rng, folder, tensors, card)}"
            start = time.perf_counter()
            try:
                load(folder)
                outcomes[(kind, "loaded")] += 1
            except WeightsError as exc:
                outcomes[(kind, "exit 4")] += 1
                if "\n" in str(exc):
                    outcomes[(kind, "MULTI-LINE MESSAGE")] += 1
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
                outcomes[(kind, f"INTERNAL {type(exc).__name__}")] += 1
                say(f"case {case} ({kind}): {type(exc).__name__}: {str(exc)[:200]}")
            slowest = max(slowest, time.perf_counter() - start)
        say(f"slowest case {slowest * 1000:.0f} ms")
    finally:
        if previous is None:
            os.environ.pop(cards.WEIGHTS_DIR_ENV, None)
        else:
            os.environ[cards.WEIGHTS_DIR_ENV] = previous
        zoo.clear_model_cache()
        shutil.rmtree(folder, ignore_errors=True)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/fuzz_model_files.py", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    np.random.seed(args.seed)
    torch.set_num_threads(1)
    outcomes = run(args.cases, args.seed)
    for (kind, outcome), n in sorted(outcomes.items()):
        print(f"{kind:22} {outcome:28} {n:6}")
    bad = sum(n for (_, outcome), n in outcomes.items() if outcome.startswith(("INTERNAL", "MULTI")))
    print(f"{args.cases} cases, {bad} internal errors or multi-line messages")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
