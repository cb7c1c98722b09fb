"""Extract the encoder's own index maps from training photos, the index model's training data.

``python -m diveq_codec.codec.release.index_maps IMAGE_DIR OUT.npz [--limit N] [--offset N] [--folders A,B]``

Every image (RGB: the trainpack's, long side ≤ 512 px, or the full-size photos) is encoded
at every distinct (stages, λ) of the shipped rate points, exactly as ``encode`` chooses
(effort 1), and the indices are saved with their grid. An image is named by its path under
IMAGE_DIR with ``__`` for ``/``, the trainpack's flat names, so a photo has the same name at
either size and the index model's training holds out the same photos of both. Never run it
on the test set (Kodak). ``--offset N`` drops the top N rows and left N columns first: the
same photos on a latent grid moved by a fraction of a latent, whose indices all differ
(more training data for the index model, which overfits its later stages).
The file is written every 20 images, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec.pipeline import choose_indices, image_to_tensor
from diveq_codec.codec.zoo import RatePoint, load_model, rate_points
from diveq_codec.models.data import list_images


def distinct_searches(points: list[RatePoint]) -> list[RatePoint]:
    """One rate point per distinct (stages, λ): the ones whose indices differ."""
    seen: dict[tuple[int, float], RatePoint] = {}
    for point in points:
        seen.setdefault((point.stages, point.rate_weight), point)
    return list(seen.values())


def _load(out: Path) -> dict[str, np.ndarray]:
    if not out.exists():
        return {}
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def image_name(path: Path, root: Path) -> str:
    """The trainpack's flat name of ``path`` (``bsds500/test/1.jpg`` → ``bsds500__test__1.jpg``)."""
    return "__".join(path.relative_to(root).parts)


def extract(images: list[Path], root: Path, out: Path, device: str = "cpu", offset: int = 0) -> None:
    points = distinct_searches(rate_points())
    loaded = load_model(points[0].model_id, device)
    arrays = _load(out)
    done = {str(name) for name in arrays.get("names", [])}
    names = list(arrays.get("names", np.array([], dtype=str)))
    maps = {k: v for k, v in arrays.items() if k != "names"}
    started = time.monotonic()
    for n, path in enumerate(images):
        name = image_name(path, root)
        if name in done:
            continue
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))[offset:, offset:]
        x = image_to_tensor(rgb, device)
        for point in points:
            indices, (h, w) = choose_indices(loaded, point, 1, x)
            key = f"{name}|{point.stages}|{point.rate_weight}"
            maps[key] = indices.cpu().numpy().astype(np.uint8).reshape(point.stages, h, w)
        names.append(name)
        if len(names) % 20 == 0 or n == len(images) - 1:
            np.savez(out.with_suffix(".tmp.npz"), names=np.array(names), **maps)
            out.with_suffix(".tmp.npz").replace(out)
            print(f"{len(names)} images, {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--offset", type=int, default=0, help="drop this many top rows and left columns first")
    parser.add_argument("--folders", default=None,
                        help="only the images under these subfolders of IMAGE_DIR (comma-separated), "
                             "e.g. the full-size photos larger than the trainpack's")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = list_images(args.images)
    if args.folders is not None:
        wanted = set(args.folders.split(","))
        images = [p for p in images if p.relative_to(args.images).parts[0] in wanted]
    extract(images[: args.limit], args.images, args.out, offset=args.offset)


if __name__ == "__main__":
    main()
