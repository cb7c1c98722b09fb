"""Write the golden .dvq files of tests/test_golden.py. Run by hand, from the repository root:

    python tests/golden/make_golden.py            # writes tests/golden/*.dvq, *.png, manifest.json
    python tests/golden/make_golden.py --check    # compares what it would write, writes nothing

Each case is a small crop of samples/ (parrots.png, lighthouse.png) encoded on the CPU with
one torch thread at one rate point: a network-only point, two DCT-layer points (the coarsest
and the finest step), a gray image and an RGBA one. Beside each file go its decoded pixels as
a PNG (the reference that another machine's float noise is measured against) and, in
manifest.json, the sha256 of the file, of its decoded pixels (np.asarray(image).tobytes())
and of its decoded indices.

When to run it: only together with a new format version. A change that alters what encode
writes bumps the version (codec/container.py FORMAT_VERSION); the files of every version a
tagged release wrote stay here, marked "current_encoder": false, so that the decoder keeps
being tested on them, and new files are added for the new version. Before the first
release no old version needs to be kept.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = Path(__file__).resolve().parent
SAMPLES = GOLDEN.parents[1] / "samples"
MANIFEST = GOLDEN / "manifest.json"

# name -> (sample, crop box (left, upper, right, lower), mode, quality); sizes not multiples
# of 8 so that the edge padding of the network and of the DCT layer is exercised.
CASES: dict[str, tuple[str, tuple[int, int, int, int], str, int]] = {
    "network_q2": ("parrots.png", (40, 30, 136, 102), "RGB", 2),
    "layer_q7": ("parrots.png", (100, 60, 211, 150), "RGB", 7),
    "layer_q18": ("parrots.png", (150, 100, 213, 149), "RGB", 18),
    "gray_q9": ("lighthouse.png", (20, 30, 101, 120), "L", 9),
    "rgba_q3": ("lighthouse.png", (50, 100, 127, 161), "RGBA", 3),
}


def source_image(name: str) -> Image.Image:
    """The image a case encodes: its crop in its mode (RGBA adds a fixed alpha pattern)."""
    sample, box, mode, _ = CASES[name]
    crop = Image.open(SAMPLES / sample).convert("RGB").crop(box)
    if mode != "RGBA":
        return crop.convert(mode)
    width, height = crop.size
    alpha = (np.add.outer(np.arange(height) * 5, np.arange(width) * 3) % 256).astype(np.uint8)
    return Image.merge("RGBA", (*crop.split(), Image.fromarray(alpha, "L")))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image: Image.Image) -> str:
    return sha256(np.asarray(image).tobytes())


def indices_sha256(indices: np.ndarray) -> str:
    return sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes())


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def build() -> tuple[dict[str, bytes], dict]:
    """Every golden file's bytes by name, and the manifest."""
    import torch

    from diveq_codec.codec.pipeline import decode_detailed, encode

    torch.set_num_threads(1)  # as tests/test_golden.py decodes them
    outputs: dict[str, bytes] = {}
    entries = []
    for name, (sample, box, mode, quality) in CASES.items():
        data = encode(source_image(name), quality=quality, device="cpu")
        decoded = decode_detailed(data, "cpu")
        outputs[f"{name}.dvq"] = data
        outputs[f"{name}.png"] = _png(decoded.image)
        entries.append({
            "name": name, "file": f"{name}.dvq", "reference": f"{name}.png", "sample": sample, "box": list(box),
            "mode": mode, "quality": quality, "size": list(decoded.image.size), "format_version": data[4],
            "current_encoder": True, "bytes": len(data), "sha256": sha256(data),
            "pixels_sha256": pixels_sha256(decoded.image), "indices_sha256": indices_sha256(decoded.indices),
        })
    manifest = {"about": "Golden .dvq files; see make_golden.py for how and when they are made.", "files": entries}
    outputs[MANIFEST.name] = (json.dumps(manifest, indent=1) + "\n").encode()
    return outputs, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = parser.parse_args(argv)
    outputs, _ = build()
    if args.check:
        changed = [name for name, data in outputs.items()
                   if not (GOLDEN / name).is_file() or (GOLDEN / name).read_bytes() != data]
        print("same bytes as on disk" if not changed else f"differ from disk: {', '.join(changed)}")
        return 1 if changed else 0
    for name, data in outputs.items():
        (GOLDEN / name).write_bytes(data)
        print(f"wrote {name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
