"""diveq-codec's Python API.

>>> from diveq_codec import codec
>>> data = codec.encode("photo.png", quality=4)   # bytes of a .dvq file (path, bytes or PIL image)
>>> image = codec.decode(data)                     # PIL.Image, the original size and mode

Both are loaded on first use, so importing a light module (``diveq_codec.codec.container``
for ``diveq-codec info``, say) does not pay for PyTorch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["encode", "decode"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diveq_codec.codec import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'diveq_codec.codec' has no attribute {name!r}")
