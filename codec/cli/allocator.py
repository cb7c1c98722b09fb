"""Let the process keep the memory the codec frees, instead of handing it back at once.

The networks' feature maps are tens of MB each. glibc's malloc serves a block that large
with a fresh mmap and unmaps it when it is freed, so every layer of every encode faults its
output's pages in anew: on the project's 2-core CPU that cost about 0.1 s of a 0.48 s
encode at quality 7 (`diveq-codec bench <kodak-dir>/kodim23.png -q 7`, README
"Measured rate–distortion"). Raising the mmap and trim thresholds makes malloc reuse those pages.
The process keeps the pages it freed, so its peak RSS grows a little (483 → 551 MiB in
`diveq-codec bench … -q 7`). It is set by the command line (and the timing scripts) only: a
program that imports the codec keeps its own allocator settings.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc's malloc.h) and the values set: larger than any block the
# codec allocates, so none is unmapped on free; the top pad lets the heap grow in big steps.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


def keep_freed_memory() -> bool:
    """Apply the settings where the C library is glibc; whether it was."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl): leave it as it is
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
