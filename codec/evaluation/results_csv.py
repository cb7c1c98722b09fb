"""An eval folder's ``per_image.csv`` and its lock.

One row per (codec, quality, image), appended and flushed as soon as it is measured, so
that an interrupted run keeps what it measured; the rows read back on the next run are the
ones it skips. One eval writes to a folder at a time (:func:`locked`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diveq_codec.codec.errors import OutputError
from diveq_codec.codec.evaluation.anchors import Measurement
from diveq_codec.codec.evaluation.output_files import write_file

CSV_NAME = "per_image.csv"
LOCK_NAME = ".eval.lock"
CSV_FIELDS = ["codec", "quality", "image", "width", "height", "bytes", "bpp", "psnr_rgb", "ms_ssim_rgb",
              "encode_s", "decode_s"]


def _parse_row(row: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return {
            "codec": str(row["codec"]), "quality": int(row["quality"]), "image": str(row["image"]),
            "width": int(row["width"]), "height": int(row["height"]), "bytes": int(row["bytes"]),
            "bpp": float(row["bpp"]), "psnr_rgb": float(row["psnr_rgb"]),
            "ms_ssim_rgb": float(row["ms_ssim_rgb"]), "encode_s": float(row["encode_s"]),
            "decode_s": float(row["decode_s"]),
        }
    except (KeyError, TypeError, ValueError):
        return None


class ResultsCSV:
    """The per-image CSV: read back on start (repairing a torn last line), appended per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self._load()
        else:
            self._rewrite()
        self.done = {(r["codec"], r["quality"], r["image"]) for r in self.rows}

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        torn = bool(raw) and not raw.endswith(b"\n")
        text = raw.decode("utf-8", errors="replace")
        if torn:  # a kill in the middle of a row: drop the partial row
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text))
        if text and reader.fieldnames != CSV_FIELDS:
            raise OutputError(f"{self.path} is not an eval CSV of this version (columns {reader.fieldnames}); "
                              f"choose another -o")
        parsed = [_parse_row(r) for r in reader]
        self.rows = [r for r in parsed if r is not None]
        if torn or len(self.rows) != len(parsed) or not text:
            self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_file(self.path, buf.getvalue().encode())

    def append(self, row: dict[str, Any]) -> None:
        buf = io.StringIO()
        csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n").writerow(row)
        try:
            with self.path.open("a", encoding="utf-8", newline="") as fh:
                fh.write(buf.getvalue())
                fh.flush()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.rows.append(row)
        self.done.add((row["codec"], row["quality"], row["image"]))


def measurement_row(codec: str, quality: int, image: str, width: int, height: int,
                    m: Measurement) -> dict[str, Any]:
    """A CSV row (CSV_FIELDS) of one measurement."""
    return {"codec": codec, "quality": quality, "image": image, "width": width, "height": height,
            "bytes": m.num_bytes, "bpp": m.bpp, "psnr_rgb": m.psnr, "ms_ssim_rgb": m.ms_ssim,
            "encode_s": m.encode_s, "decode_s": m.decode_s}


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """One eval per OUTDIR at a time: two writers would append the same rows twice."""
    try:
        handle = (out_dir / LOCK_NAME).open("a")
    except OSError as exc:
        raise OutputError(f"cannot write in {out_dir}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"another eval is writing to {out_dir}; wait for it or choose another -o") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
