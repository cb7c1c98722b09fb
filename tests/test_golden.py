"""The golden .dvq files (tests/golden/, made by tests/golden/make_golden.py) decode, and
today's encoder still writes them byte for byte."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from diveq_codec.codec.pipeline import decode_detailed, encode

GOLDEN = Path(__file__).resolve().parent / "golden"
ENTRIES = json.loads((GOLDEN / "manifest.json").read_text())["files"]
IDS = [entry["name"] for entry in ENTRIES]


def _make_golden() -> ModuleType:
    """tests/golden/make_golden.py, for the recipe of each case's source image."""
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_golden_set_covers_each_kind_of_file() -> None:
    kinds = {(entry["mode"], entry["format_version"]) for entry in ENTRIES}
    assert {("RGB", 3), ("RGB", 4), ("L", 4), ("RGBA", 3)} <= kinds
    assert all((GOLDEN / entry["file"]).stat().st_size < 20_000 for entry in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_a_golden_file_decodes_to_its_indices_and_pixels(entry: dict, one_torch_thread: None) -> None:
    """Indices are integers decoded by integer and exactly rounded arithmetic: the same on
    every machine. Pixels come from the network's float arithmetic, which another CPU may
    round differently: there every pixel must stay within ±1 of the reference PNG."""
    data = (GOLDEN / entry["file"]).read_bytes()
    assert _sha256(data) == entry["sha256"], "the golden file itself changed"
    decoded = decode_detailed(data, "cpu")
    assert _sha256(np.ascontiguousarray(decoded.indices, dtype="<i8").tobytes()) == entry["indices_sha256"]
    assert decoded.image.mode == entry["mode"] and list(decoded.image.size) == entry["size"]
    pixels = np.asarray(decoded.image)
    if _sha256(pixels.tobytes()) == entry["pixels_sha256"]:
        return
    with Image.open(GOLDEN / entry["reference"]) as reference_image:
        reference = np.asarray(reference_image)
    assert _sha256(reference.tobytes()) == entry["pixels_sha256"], "the reference PNG changed"
    difference = np.abs(pixels.astype(np.int16) - reference)
    assert difference.max() <= 1, (
        f"{entry['file']} decodes to other pixels than its reference: {int((difference > 1).sum())} of "
        f"{difference.size} samples differ by more than 1 (at most {int(difference.max())})")


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["current_encoder"]],
                         ids=[e["name"] for e in ENTRIES if e["current_encoder"]])
def test_todays_encoder_writes_the_golden_bytes(entry: dict, one_torch_thread: None) -> None:
    """What guards the format rule: a change that alters what ``encode`` writes must bump the
    format version (codec/container.py) and add golden files for it, keeping those of every
    version a tagged release wrote; this test fails until it does. (The DCT layer codes the
    difference from the network's float-decoded pixels, so another CPU may write other layer
    bytes; on the machine that made the golden files they are exact.)"""
    image = _make_golden().source_image(entry["name"])
    data = encode(image, quality=entry["quality"], device="cpu")
    assert data == (GOLDEN / entry["file"]).read_bytes(), (
        f"encode now writes other bytes for {entry['name']} ({len(data)} vs {entry['bytes']}): "
        f"bump the format version and make new golden files (tests/golden/make_golden.py)")
