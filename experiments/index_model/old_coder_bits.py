"""Bits per symbol, by stage, of the static-table coder (coder 3) on saved index maps.

Coder 3 is no longer in the tree, so this runs against a checkout of the last commit that
had it, importing the package from there instead of the installed one:

    git worktree add /tmp/coder3 8d4b778
    python experiments/index_model/old_coder_bits.py /tmp/coder3 .data/index_maps.npz --holdout
    python experiments/index_model/old_coder_bits.py /tmp/coder3 .data/kodak_maps.npz

The maps come from ``python -m diveq_codec.codec.release.index_maps`` (the encoder's own
choices; the network and the choices are the same in both versions). ``--holdout`` keeps the
images the index model's training held out (every 8th of the sorted names from the first).
Prints one JSON object: configuration (stages|λ) → bits per symbol of each stage.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def import_from(checkout: Path) -> None:
    """Make ``diveq_codec`` the package of ``checkout`` (its codec/, models/, weights/)."""
    root = Path(tempfile.mkdtemp()) / "diveq_codec"
    root.mkdir()
    for part in ("codec", "models", "weights"):
        (root / part).symlink_to(checkout / part)
    sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in type(f).__name__]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
    sys.path_importer_cache.clear()
    sys.path.insert(0, str(root.parent))
    assert all(not isinstance(f, importlib.abc.MetaPathFinder) or "Editable" not in type(f).__name__
               for f in sys.meta_path)


def main() -> None:
    checkout, maps_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    import_from(checkout)
    from diveq_codec.codec import index_coder
    from diveq_codec.codec.zoo import load_model

    assert str(checkout) in str(Path(index_coder.__file__).resolve()), index_coder.__file__
    loaded = load_model(8)
    data = np.load(maps_path)
    names = sorted(str(n) for n in data["names"])
    keep = {n for i, n in enumerate(names) if i % 8 == 0} if "--holdout" in sys.argv else set(names)
    totals: dict[str, list[list[int]]] = {}
    for key in data.files:
        name, config = key.split("|", 1) if key != "names" else ("", "")
        if name not in keep:
            continue
        maps = data[key].astype(np.int64)
        stages, h, w = maps.shape
        entry = totals.setdefault(config, [[0, 0] for _ in range(stages)])
        before = 0
        for s in range(stages):
            coded = len(index_coder.encode_indices(maps[: s + 1].reshape(s + 1, -1), loaded.tables, w,
                                                   second=loaded.second_tables)) * 8
            entry[s][0] += coded - before
            entry[s][1] += h * w
            before = coded
    print(json.dumps({c: [round(b / n, 4) for b, n in v] for c, v in totals.items()}))


if __name__ == "__main__":
    main()
