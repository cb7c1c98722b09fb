"""Encode and decode: the small Python API the CLI wraps.

>>> data = encode("photo.png", quality=4)      # bytes of a .dvq file
>>> image = decode(data)                        # PIL.Image, same size and mode as the input
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diveq_codec.codec import container, dct_layer, index_coder, index_costs
from diveq_codec.codec.dct_layer_coding import base_detail
from diveq_codec.codec.errors import CodecError, CorruptBitstreamError, InputError, WeightsError
from diveq_codec.codec.freed_memory import return_freed_memory
from diveq_codec.codec.image_io import (
    SourceImage,
    alpha_from_bytes,
    alpha_to_bytes,
    read_image,
    restore_image,
    source_from_image,
)
from diveq_codec.codec.metrics import bits_per_pixel, psnr
from diveq_codec.codec.zoo import (
    LoadedModel,
    RatePoint,
    card_for_model_id,
    load_model,
    resolve_quality,
)
from diveq_codec.models import refine
from diveq_codec.models.autoencoder import search_options

# The header's coder_id: the format's one index coder (codec/index_coder.py).
WRITTEN_CODER = container.CODER_INDEX_MODEL


def _is_allocation_failure(exc: BaseException) -> bool:
    # PyTorch reports a failed allocation as a RuntimeError ("can't allocate memory",
    # "CUDA out of memory"), not as MemoryError.
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and ("allocate" in text or "out of memory" in text))


@contextmanager
def _memory_errors(failure: type[CodecError], what: str) -> Iterator[None]:
    """An allocation failure inside is the input's size meeting this machine's memory: one
    line and the input's exit code (5 for an image, 3 for a file), not an internal error."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not _is_allocation_failure(exc):
            raise
        raise failure(f"not enough memory to {what}") from None


def resolve_device(device: str) -> str:
    """'auto' → cuda when available; an explicit 'cuda' without a GPU is a usage error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if device == "cuda":
        # TF32 rounds inputs to 10-bit mantissas; the decoder's pixels would drift further
        # from a CPU decode than float32 noise (the encoder runs in float64 there anyway).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (auto, cpu or cuda)")
    return device


def image_to_tensor(rgb: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C", copy=True)).to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


# Pixel rows per strip of tensor_to_pixels: its float temporaries stay a strip's
# size (a whole 48 MP image's were four 576 MB float32 copies, or 1.15 GB float64 ones).
STRIP_ROWS = 256


def tensor_to_pixels(x: torch.Tensor) -> np.ndarray:
    # Round on the CPU in float32 so that the last step is the same on every device; the
    # steps are elementwise, so doing them a strip at a time gives the same bytes.
    planes = x[0].permute(1, 2, 0)
    out = torch.empty(planes.shape, dtype=torch.uint8)
    for top in range(0, planes.shape[0], STRIP_ROWS):
        strip = planes[top:top + STRIP_ROWS].float().cpu().mul(255.0)
        out[top:top + STRIP_ROWS] = strip.round_().clamp_(0, 255).to(torch.uint8)
    return out.numpy()


def as_source(image: Image.Image | bytes | str | Path | SourceImage) -> SourceImage:
    if isinstance(image, SourceImage):
        return image
    if isinstance(image, Image.Image):
        return source_from_image(image)
    if isinstance(image, (str, Path)):
        return read_image(Path(image).read_bytes(), str(image))
    return read_image(bytes(image), "input")


@dataclass(frozen=True)
class Effort:
    """How hard the encoder looks for codewords (``--effort``). The file format and the
    decoder do not change; effort only decides which valid indices a file holds, at the
    cost of encode time (README: "Encoder effort")."""

    beam: int  # width of the beam search over the residual stages (ResidualDiVeQ._beam_search)
    refine_steps: int = 0  # analysis-by-synthesis steps on the latent (models/refine.py)


EFFORTS = {1: Effort(beam=1), 2: Effort(beam=4), 3: Effort(beam=4, refine_steps=refine.STEPS)}


def effort_settings(effort: int | None) -> Effort:
    """The settings of an effort level (None: the default, 1); ValueError for another level."""
    if effort is None:
        return EFFORTS[1]
    if effort not in EFFORTS:
        raise ValueError(f"effort must be one of {', '.join(map(str, EFFORTS))}, got {effort}")
    return EFFORTS[effort]


def encode_source(source: SourceImage, quality: int | None = None, device: str = "auto",
                  effort: int | None = None) -> bytes:
    return encode_at_point(source, resolve_quality(quality), device, effort)


def encode_at_point(image: Image.Image | bytes | str | Path | SourceImage, point: RatePoint, device: str = "auto",
                    effort: int | None = None) -> bytes:
    """encode at an explicit rate point: the probes that choose a card's settings try points
    the card does not list yet (another λ or step), through the encoder itself."""
    return _encode(as_source(image), point, device, effort, reconstruct=False)[0]


def choose_indices(loaded: LoadedModel, point: RatePoint, effort: int | None,
                    x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The indices (stages, h·w) encode writes for image tensor ``x`` at ``point``, and the grid."""
    settings = effort_settings(effort)
    model = loaded.model
    # After a search with the static tables' costs, rounds charge the index model's own
    # (codec/index_costs.py), except after effort 3's steps, which move the latent through
    # the static tables' search (the rounds would undo what the steps found), and on images
    # too large for them. Without them the search takes the point's static λ.
    latents = math.ceil(x.shape[-2] / model.stride) * math.ceil(x.shape[-1] / model.stride)
    rounds = not settings.refine_steps and index_costs.rounds_apply(loaded.index_model, latents)
    weight = point.search_weight(rounds)
    # λ makes the choices entropy-constrained (the decoder does not care how they were chosen).
    search = search_options(loaded.rate_costs(weight), settings.beam)
    if settings.refine_steps:
        return refine.refined_indices(model, x, point.stages, search, settings.refine_steps)
    recost = index_costs.recoster(loaded.index_model, weight) if rounds else None
    # Both give the exact choices, so a file is the same whichever device wrote it (see
    # VQAutoencoder.encode_indices): float64 costs little on an accelerator; on a CPU,
    # float32 with the few near-boundary latents re-decided in float64 is nearly twice as fast.
    exact = torch.float32 if x.device.type == "cpu" else torch.float64
    return model.encode_indices(x, point.stages, dtype=exact, recost=recost, **search)


def layer_detail(loaded: LoadedModel, indices: np.ndarray, height: int, width: int) -> np.ndarray:
    """The base's detail per 8×8 block, which the DCT layer's contexts take (see
    dct_layer_coding.base_detail), from the file's ``indices`` (stages, h·w) of a height ×
    width image."""
    return base_detail(loaded.require_index_model().codebooks, indices, height, width, loaded.model.stride)


def _encode(source: SourceImage, point: RatePoint, device: str, effort: int | None,
            reconstruct: bool) -> tuple[bytes, np.ndarray | None]:
    """(the file, and with ``reconstruct`` the RGB planes it decodes to: the encoder already
    holds the base and the layer, so they come without decoding the file)."""
    loaded = load_model(point.model_id, resolve_device(device))
    height, width = source.rgb.shape[:2]
    with _memory_errors(InputError, f"encode a {width}×{height} image"):
        return _encode_with(loaded, source, point, effort, reconstruct)


def _encode_with(loaded: LoadedModel, source: SourceImage, point: RatePoint, effort: int | None,
                 reconstruct: bool) -> tuple[bytes, np.ndarray | None]:
    model = loaded.model
    height, width = source.rgb.shape[:2]
    index_model = loaded.require_index_model()  # before any work: weights without one cannot code
    x = image_to_tensor(source.rgb, next(model.parameters()).device.type)
    indices, (grid_h, grid_w) = choose_indices(loaded, point, effort, x)
    del x  # 12 bytes a pixel, not needed by the synthesis and the layer that follow
    index_array = indices.cpu().numpy()
    code_payload = functools.partial(index_coder.encode_indices, index_array, index_model, grid_w,
                                     index_coder.min_payload_bytes(width * height))
    layer, rgb = b"", None
    if point.layer_step is not None or reconstruct:
        # The layer codes what the decoder's own base planes miss, so it is measured against
        # the base exactly as decode_detailed will rebuild it.
        rgb = tensor_to_pixels(model.decode_indices(indices, (grid_h, grid_w), height, width))
        return_freed_memory(height * width)  # before the layer allocates its own
    if point.layer_step is None:
        payload = code_payload()
    else:
        # The payload is coded on a second thread while the layer is: both run mostly on one
        # core (numpy, constriction), and the other would idle. Not beside the synthesis,
        # whose convolutions use both cores (docs/results.md, "Large images").
        with ThreadPoolExecutor(max_workers=1) as pool:
            coded = pool.submit(code_payload)
            detail = layer_detail(loaded, index_array, height, width)
            layer, planes = dct_layer.encode_with_planes(source_planes(source), decoded_planes(rgb, source.mode),
                                                         point.layer_step, detail, planes=reconstruct)
            payload = coded.result()
        if planes is not None:
            rgb = _as_rgb(planes)
    alpha = alpha_to_bytes(source.alpha) if source.alpha is not None else b""
    flags = (container.FLAG_ALPHA if source.alpha is not None else 0)
    flags |= container.FLAG_FROM_16BIT if source.bit_depth == 16 else 0
    flags |= container.FLAG_FROM_PALETTE if source.from_palette else 0
    header = container.Header(
        model_id=loaded.card.model_id, quality=point.quality, weights_id=loaded.card.weights_id,
        coder_id=WRITTEN_CODER, table_precision=index_coder.TABLE_PRECISION,
        width=width, height=height, channels=container.MODE_TO_CHANNELS[source.mode], bit_depth=source.bit_depth,
        flags=flags, latent_h=grid_h, latent_w=grid_w, stages=point.stages,
    )
    return container.pack(container.Container(header, payload, alpha, layer)), rgb


def encode(image: Image.Image | bytes | str | Path, quality: int | None = None, device: str = "auto",
           effort: int | None = None) -> bytes:
    """Compress an image (PIL image, encoded image bytes, or a path) to .dvq bytes."""
    return encode_source(as_source(image), quality, device, effort)


@dataclass
class Decoded:
    image: Image.Image
    indices: np.ndarray  # (stages, latent_h·latent_w)
    header: container.Header


def _model_for(header: container.Header, device: str) -> LoadedModel:
    """The model a file names (container.unpack has checked its coder fields), with the
    weights that made it and the tables the coder needs, else a WeightsError (exit 4)."""
    card = card_for_model_id(header.model_id)
    if card.weights_id != header.weights_id:
        raise WeightsError(f"file was made with weights {header.weights_id.hex()} but model {header.model_id} "
                           f"installed here is {card.weights_id.hex()}; refusing to decode with other weights")
    return load_model(header.model_id, resolve_device(device))


def decode_detailed(data: bytes, device: str = "auto") -> Decoded:
    parsed = container.unpack(data)
    header = parsed.header
    if parsed.layer:
        dct_layer.read_layer_header(parsed.layer)  # refuse an unreadable layer before the network runs
    loaded = _model_for(header, device)
    model = loaded.model
    stride = model.stride
    if (header.latent_h, header.latent_w) != (math.ceil(header.height / stride), math.ceil(header.width / stride)):
        raise CorruptBitstreamError(f"latent grid {header.latent_h}×{header.latent_w} does not fit a "
                                    f"{header.width}×{header.height} image")
    if header.stages > model.num_stages:
        raise CorruptBitstreamError(f"file declares {header.stages} stages; the model has {model.num_stages}")
    with _memory_errors(CorruptBitstreamError, f"decode a {header.width}×{header.height} image"):
        return _decode_with(loaded, parsed)


def _decode_with(loaded: LoadedModel, parsed: container.Container) -> Decoded:
    header, model = parsed.header, loaded.model
    count = header.latent_h * header.latent_w
    indices = index_coder.decode_indices(parsed.payload, loaded.require_index_model(), header.stages, count,
                                         header.latent_w, index_coder.min_payload_bytes(header.width * header.height))
    alpha = alpha_from_bytes(parsed.alpha, header.width, header.height) if parsed.alpha else None
    device_type = next(model.parameters()).device.type
    x_hat = model.decode_indices(torch.from_numpy(indices).to(device_type), (header.latent_h, header.latent_w),
                                 header.height, header.width)
    mode = container.CHANNELS_TO_MODE[header.channels]
    rgb = tensor_to_pixels(x_hat)
    del x_hat  # 12 bytes a pixel, not needed by the layer that follows
    return_freed_memory(header.height * header.width)
    if parsed.layer:
        detail = layer_detail(loaded, indices, header.height, header.width)
        rgb = _as_rgb(dct_layer.decode(parsed.layer, decoded_planes(rgb, mode), detail))
    return Decoded(restore_image(rgb, alpha, mode), indices, header)


def decode(data: bytes, device: str = "auto") -> Image.Image:
    """Decompress .dvq bytes to a PIL image of the original size and mode."""
    return decode_detailed(data, device).image


def color_planes(image: Image.Image) -> np.ndarray:
    """The planes PSNR is measured on: gray for L/LA, RGB otherwise (alpha is lossless)."""
    if image.mode in ("L", "LA"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))


def decoded_planes(rgb: np.ndarray, mode: str) -> np.ndarray:
    """The planes of decoded RGB that an image of ``mode`` keeps: color_planes of what
    restore_image makes of it (the gray plane for L/LA, the RGB otherwise)."""
    if mode not in ("L", "LA"):
        return rgb  # what the round trip through two PIL images gives, without their copies
    return color_planes(restore_image(rgb, None, "L"))


def _as_rgb(planes: np.ndarray) -> np.ndarray:
    """Planes decoded_planes kept (gray or RGB) as the RGB restore_image takes."""
    return planes if planes.ndim == 3 else np.repeat(planes[..., None], 3, axis=2)


def source_planes(source: SourceImage) -> np.ndarray:
    return source.rgb[..., 0] if source.mode in ("L", "LA") else source.rgb


@dataclass
class EncodeReport:
    data: bytes
    width: int
    height: int
    bpp: float
    psnr: float
    quality: int
    decoded: Image.Image  # what the file decodes to, from the encoder's own reconstruction
    notices: list[str] = field(default_factory=list)


def encode_with_report(image: Image.Image | bytes | str | Path | SourceImage, quality: int | None = None,
                       device: str = "auto", effort: int | None = None) -> EncodeReport:
    """Encode, and report the PSNR the file delivers from the encoder's own reconstruction
    (the same pixels decode gives on this device; tests/test_pipeline.py holds it to that)."""
    source = as_source(image)
    point = resolve_quality(quality)
    data, rgb = _encode(source, point, device, effort, reconstruct=True)
    assert rgb is not None
    decoded = restore_image(rgb, source.alpha, source.mode)
    height, width = source.rgb.shape[:2]
    return EncodeReport(data, width, height, bits_per_pixel(len(data), width, height),
                        psnr(source_planes(source), decoded_planes(rgb, source.mode)),
                        point.quality, decoded, list(source.notices))
