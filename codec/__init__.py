"""diveq-codec: ``codec.encode(image, quality=...) -> bytes`` and ``codec.decode(data) -> PIL.Image``.

The two are loaded on first use, so that importing a light module (``codec.bitstream``
for ``diveq-codec info``, say) does not pay for PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["encode", "decode"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diveq_codec.codec import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")
