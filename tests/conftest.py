"""Shared fixtures: the repo's sample images and a copy of the shipped zoo for tampering."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED = REPO.parent / "shared"


@pytest.fixture
def parrots_path() -> Path:
    return SAMPLES / "parrots.png"


@pytest.fixture
def lighthouse_path() -> Path:
    return SAMPLES / "lighthouse.png"


@pytest.fixture
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of weights/ that a test may damage; the codec is pointed at it."""
    from diveq_codec.codec import cards, zoo

    target = tmp_path / "weights"
    shutil.copytree(zoo.weights_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setenv(cards.WEIGHTS_DIR_ENV, str(target))
    zoo.clear_model_cache()
    yield target
    zoo.clear_model_cache()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread in this process: fast on a shared 2-core machine, the same numbers
    on every run (subprocesses choose their own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
