"""A helper shared by the quantizer tests: comparing two snapshots of a quantizer's state."""

from __future__ import annotations

import torch


def assert_same_snapshot(a: dict, b: dict) -> None:
    """Same keys, and equal values: tensors exactly, everything else by ==."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
