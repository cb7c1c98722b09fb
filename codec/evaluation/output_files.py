"""Writing an eval folder's files: whole files replaced at once, JSON without NaN or inf."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from diveq_codec.codec.file_io import write_output


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN MS-SSIM, lossless inf PSNR) made None:
    JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def write_file(path: Path, data: bytes) -> None:
    write_output(str(path), data, True)


def write_json(path: Path, obj: Any) -> None:
    write_file(path, (json.dumps(finite_or_none(obj), indent=1) + "\n").encode())
