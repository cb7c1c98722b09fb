"""Pillow support for .dvq files: ``import diveq_codec.codec.pillow_plugin``, then
``Image.open("photo.dvq")`` gives the decoded image like any other format.

Opening reads the header only (size and mode, no model); the network runs on the CPU when
the pixels are first needed (``load()``, ``convert()``, ``save()``...). Pillow reads .dvq
files but does not write them: use ``diveq_codec.codec.encode``.
"""

from __future__ import annotations

from PIL import Image, ImageFile

from diveq_codec.codec import container
from diveq_codec.codec.errors import CodecError
from diveq_codec.codec.limits import MAX_FILE_BYTES

FORMAT = "DVQ"


def _accept(prefix: bytes) -> bool:
    return prefix[:len(container.MAGIC)] == container.MAGIC


class DvqImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "diveq-codec learned image"

    def _open(self) -> None:
        data = self.fp.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise SyntaxError("not a .dvq file Pillow can read: over the size limit")
        try:
            header = container.peek_header(data)
        except CodecError as exc:  # Pillow expects SyntaxError for "not this format"
            raise SyntaxError(str(exc)) from None
        self._size = (header.width, header.height)
        self._mode = container.CHANNELS_TO_MODE[header.channels]
        self._dvq_data: bytes | None = data
        self.tile = []

    def load(self):  # noqa: ANN201 - Pillow's signature
        if self._dvq_data is not None:
            from diveq_codec.codec.pipeline import decode

            try:
                decoded = decode(self._dvq_data, device="cpu")
            except CodecError as exc:
                raise OSError(f"cannot decode .dvq file: {exc}") from None
            self._dvq_data = None
            self.im = decoded.im
        return Image.Image.load(self)


Image.register_open(FORMAT, DvqImageFile, _accept)
Image.register_extension(FORMAT, ".dvq")
Image.register_mime(FORMAT, "image/x-dvq")
