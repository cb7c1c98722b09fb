"""Limits shared by the image reader, the bitstream parser and the model cards.

The reader and the parser refuse anything larger *before* allocating for it: the reader from
the image header, the parser from the declared width and height. This module imports nothing,
so the command line can check them before it loads numpy or PyTorch.
"""

import math

MAX_SIDE = 32_768  # pixels, either dimension
MAX_PIXELS = 50_000_000  # width × height (a 50-megapixel photo)
MAX_FILE_BYTES = 1 << 30  # inputs larger than 1 GiB are refused before reading


def check_dimensions(width: int, height: int) -> str | None:
    """Why (width, height) is out of bounds, or None when it is acceptable."""
    if width < 1 or height < 1:
        return f"image size {width}×{height} is empty"
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"image size {width}×{height} exceeds the {MAX_SIDE}-pixel side limit"
    if width * height > MAX_PIXELS:
        return f"image of {width}×{height} = {width * height:,} pixels exceeds the {MAX_PIXELS:,}-pixel limit"
    return None


# The DCT layer's quantiser step is written as a u16 count of sixteenths of an 8-bit level;
# from a quarter level up every coefficient's quotient fits the layer's escape code.
MIN_LAYER_STEP_SIXTEENTHS = 4


def layer_step_is_valid(step: float) -> bool:
    """Whether a DCT-layer step can be written: whole sixteenths, from MIN_LAYER_STEP_SIXTEENTHS to u16."""
    sixteenths = step * 16
    return math.isfinite(sixteenths) and sixteenths == int(sixteenths) and MIN_LAYER_STEP_SIXTEENTHS <= sixteenths < 1 << 16
