"""Size limits shared by the image reader and the bitstream parser.

Both refuse anything larger *before* allocating for it: the reader from the image header,
the parser from the declared width and height.
"""

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
