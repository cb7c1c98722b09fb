"""The index model's integer network: the probabilities the index coder gives each codeword.

It is the integer copy of models/index_prior.py (see that module for what it conditions
on and in which order a decoder learns the indices), stored in the weights file as
``index_model.*`` int32 tensors. Every weight, input and activation is an integer; each
layer is a sum of products of integers, rescaled by a power of two (a floor) and clipped.
The products and sums are held in floating point, where they are exact whatever the
summation order while every partial sum stays below 2⁵³ in float64 (``check_bounds``
proves it from the weights when they are loaded) or 2²⁴ in float32 (which each part of a
stage takes where its bounds allow: StageLayers). So the probabilities do not depend on the
BLAS, the thread count or the batch shape: the encoder computes a stage's at once and the
decoder a half-row at a time, and they get the same integers.

The last layer's base-2 logits become frequencies by a table (``output_table``, 2^(−d/16)
in integers for d sixteenths of a bit below the row's largest logit, clipped to the
table's end): no exponential, whose last bit differs between maths libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from diveq_codec.codec.index_adaptation import WEIGHT_UNITS, log_table_size

TENSOR_PREFIX = "index_model."
EXACT_LIMIT = 2.0**53  # float64 holds every integer below this exactly


@dataclass(frozen=True)
class StageNetwork:
    """One stage's integer layers (float64 arrays holding integers). Shifts are powers of
    two: ``a = clip(floor(z / 2^shift), 0, cap)``."""

    neighbours: np.ndarray  # (K, tokens, H): the first layer's terms per neighbour token
    bias: np.ndarray  # (H,)
    first_shift: int
    hidden_w: np.ndarray  # (H, H), transposed: a @ hidden_w
    hidden_b: np.ndarray
    hidden_shift: int
    out_w: np.ndarray  # (H, codes)
    out_b: np.ndarray
    logit_shift: int  # logits / 2^logit_shift are in sixteenths of a bit
    adapt_weight: int  # w of the adaptation's term, in sixteenths (codec/index_adaptation.py)
    # stages after the first: the previous stages' sum → projection → 3×3 context
    project_w: np.ndarray | None = None  # (D, P)
    project_b: np.ndarray | None = None
    project_shift: int = 0
    context_w: np.ndarray | None = None  # (9·P, H): 3×3 window, row-major, then channels
    previous: np.ndarray | None = None  # (codes, H): stage m − 1's index at the position
    layers: StageLayers | None = None  # what computes: set by from_tensors


EXACT_LIMIT32 = 2.0**24  # float32 holds every integer below this exactly


@dataclass(frozen=True)
class StageLayers:
    """A stage's layers as torch tensors for computing (StageNetwork keeps the stored arrays).

    A part runs in float32 where every partial sum it can form stays below 2^24, exact in any
    order as float64's are below 2^53, and in float64 otherwise: ``inner`` for the first and
    hidden layers (the earlier stages' projection and context included), ``outer`` for the
    logits and what follows (float32 needs them and their differences below 2^24 too). The
    shipped model computes every part in float32 (docs/entropy-coding.md).
    The neighbours are one (K·tokens, H) table, row k·tokens + t for neighbour k's token t,
    that embedding_bag sums a position's K rows of at once (13 times faster than K gathers).
    """

    inner: torch.dtype
    outer: torch.dtype
    neighbour_rows: torch.Tensor
    token_offsets: torch.Tensor  # (K,): the k·tokens
    bias: torch.Tensor
    hidden_w: torch.Tensor
    hidden_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    codebooks: torch.Tensor  # (S, codes, D), the later stages' inputs
    project_w: torch.Tensor | None = None
    project_b: torch.Tensor | None = None
    context_w: torch.Tensor | None = None  # rows in unfold's order: channels, then window places
    previous: torch.Tensor | None = None

    def first_dtype(self) -> torch.dtype:
        return _unless_reduced(self.inner)

    def out_dtype(self) -> torch.dtype:
        return _unless_reduced(self.outer)


def _unless_reduced(dtype: torch.dtype) -> torch.dtype:
    # A program that lets float32 products round to bfloat16 or TF32
    # (torch.set_float32_matmul_precision) would lose exactness: float64 then.
    return dtype if dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest" else torch.float64


@dataclass(frozen=True)
class IndexModel:
    stages: list[StageNetwork]
    codebooks: np.ndarray  # (S, codes, D) integer codewords, the inputs of the later stages
    offsets: tuple[tuple[int, int], ...]  # (row, column) of each neighbour: rows above, or odd columns beside
    cap: int  # activations are clipped to [0, cap]
    output_table: np.ndarray  # (steps,) integer frequencies by distance below the largest logit
    log_table: np.ndarray  # round(64 · log₂ x) for the adaptation (codec/index_adaptation.py)

    @property
    def codes(self) -> int:
        return self.codebooks.shape[1]

    @property
    def off_grid(self) -> int:
        return self.codes

    @property
    def not_yet(self) -> int:
        return self.codes + 1

    def max_probability(self) -> float:
        """No symbol gets a higher probability: the table's first entry against every other
        codeword at its last."""
        top, floor = float(self.output_table[0]), float(self.output_table[-1])
        return top / (top + (self.codes - 1) * floor)


def _activate(z: torch.Tensor, shift: int, cap: int) -> torch.Tensor:
    return z.mul_(2.0**-shift).floor_().clamp_(0.0, cap)  # a power of two: exact


@torch.inference_mode()
def previous_context(model: IndexModel, stage: int, previous: np.ndarray) -> np.ndarray:
    """Stage ``stage``'s (> 0) first-layer terms from the stages before it, (h, w, H):
    ``previous`` (stage, h, w) their indices; zeros stand for the codewords beyond the edges."""
    layers = model.stages[stage].layers
    assert layers.project_w is not None and layers.context_w is not None and layers.previous is not None
    dtype = layers.first_dtype()
    _, h, w = previous.shape
    chosen = torch.from_numpy(np.ascontiguousarray(previous, dtype=np.int64))
    total = sum(layers.codebooks[m].to(dtype)[chosen[m]] for m in range(stage))  # (h, w, D)
    projected = _activate(torch.addmm(layers.project_b.to(dtype), total.reshape(h * w, -1), layers.project_w.to(dtype)),
                          model.stages[stage].project_shift, model.cap)
    # the 3×3 window of every position, channels then window places, as ``context_w``'s rows
    window = torch.nn.functional.unfold(projected.t().reshape(1, -1, h, w), 3, padding=1)[0].t()
    out = torch.nn.functional.embedding(chosen[stage - 1].reshape(-1), layers.previous.to(dtype))
    out.addmm_(window, layers.context_w.to(dtype))
    return out.reshape(h, w, -1).numpy()


def frequencies(model: IndexModel, stage: int, first: np.ndarray, tokens: np.ndarray,
                adaptive: np.ndarray | None = None) -> np.ndarray:
    """Integer frequencies (n, codes) as float32, for positions whose first-layer terms from
    earlier stages are ``first`` (n, H) (zeros for stage 1), whose neighbours are ``tokens``
    (n, K), and whose adaptation adds ``adaptive`` (n, codes) to the logits, in 1/64 bit."""
    steps = _steps(model, stage, first, tokens, adaptive)
    return model.output_table[steps.to(torch.int64).numpy()]


def output_steps(model: IndexModel, stage: int, first: np.ndarray, tokens: np.ndarray,
                 adaptive: np.ndarray | None = None) -> np.ndarray:
    """How far each codeword's logit lies below the largest, in 1/16 bit and capped at the
    output table's span (n, codes), as whole numbers (float32 or float64): the index of its
    frequency in ``model.output_table``."""
    return _steps(model, stage, first, tokens, adaptive).numpy()


@torch.inference_mode()  # no autograd bookkeeping: a decoder calls this per half-row
def _steps(model: IndexModel, stage: int, first: np.ndarray, tokens: np.ndarray,
           adaptive: np.ndarray | None) -> torch.Tensor:
    net = model.stages[stage]
    layers, inner, outer = net.layers, net.layers.first_dtype(), net.layers.out_dtype()
    rows = torch.from_numpy(np.asarray(tokens, dtype=np.int64)) + layers.token_offsets
    z = torch.nn.functional.embedding_bag(rows, layers.neighbour_rows.to(inner), mode="sum")
    z += torch.from_numpy(first).to(inner)
    z += layers.bias.to(inner)
    a = _activate(z, net.first_shift, model.cap)
    a = _activate(torch.addmm(layers.hidden_b.to(inner), a, layers.hidden_w.to(inner)), net.hidden_shift, model.cap)
    logits = torch.addmm(layers.out_b.to(outer), a.to(outer), layers.out_w.to(outer))  # in place from here
    logits.mul_(2.0 ** (2 - net.logit_shift)).floor_()  # in 1/64 bit
    if adaptive is not None:
        logits += torch.from_numpy(adaptive).to(outer)
    below = torch.sub(logits.amax(dim=1, keepdim=True), logits, out=logits)
    return below.mul_(0.25).floor_().clamp_(max=model.output_table.size - 1)  # in 1/16 bit


def margin(model: IndexModel) -> int:
    """How far the farthest neighbour lies: the margin of ``padded``."""
    return max(max(-dy, abs(dx)) for dy, dx in model.offsets)


def padded(indices: np.ndarray, model: IndexModel) -> np.ndarray:
    """One stage's (h, w) map inside a margin of OFF_GRID tokens (above and beside it), which
    ``tokens_of`` reads; a decoder writes what it decodes into it."""
    h, w = indices.shape
    pad = margin(model)
    out = np.full((h + pad, w + 2 * pad), model.off_grid, dtype=np.intp)
    out[pad:, pad:pad + w] = indices
    return out


def tokens_of(padded_map: np.ndarray, rows: np.ndarray, cols: np.ndarray, model: IndexModel) -> np.ndarray:
    """The neighbour tokens (n, K) of positions (rows, cols) of a stage's ``padded`` map, as a
    decoder sees them: off the grid, or beside an even column, not known."""
    pad, stride = margin(model), padded_map.shape[1]
    steps = np.array([dy * stride + dx for dy, dx in model.offsets], dtype=np.intp)
    out = padded_map.reshape(-1)[((rows + pad) * stride + cols + pad)[:, None] + steps]
    same_row = [k for k, (dy, _) in enumerate(model.offsets) if dy == 0]
    even = cols % 2 == 0
    if same_row and even.any():
        out[np.ix_(even, same_row)] = model.not_yet
    return out


def check_bounds(model: IndexModel) -> None:
    """Refuse weights whose sums could leave float64's exact integers (ValueError)."""
    for m, net in enumerate(model.stages):
        a = float(model.cap)
        bound = np.abs(net.neighbours).max(axis=1).sum() + np.abs(net.bias).max()
        if m:
            inputs = np.abs(model.codebooks[:m]).max(axis=1).sum(axis=0)  # per component
            projected = float((inputs @ np.abs(net.project_w)).max() + np.abs(net.project_b).max())
            bound += np.abs(net.context_w).sum(axis=0).max() * a + np.abs(net.previous).max()
            bound = max(bound, projected)
        bound = max(bound, np.abs(net.hidden_w).sum(axis=0).max() * a + np.abs(net.hidden_b).max())
        bound = max(bound, 2 * (np.abs(net.out_w).sum(axis=0).max() * a + np.abs(net.out_b).max()))
        if not bound < EXACT_LIMIT:
            raise ValueError(f"index model stage {m + 1}: sums up to {bound:.3g} are not exact in float64")


def _scalar(tensors: dict[str, np.ndarray], name: str) -> int:
    value = np.asarray(tensors[TENSOR_PREFIX + name])
    if value.size != 1:
        raise ValueError(f"{TENSOR_PREFIX + name} holds {value.size} values, not one")
    return int(value.reshape(-1)[0])


_COMMON = ("codebooks", "cap", "output_table", "neighbour_offsets", "log_table")
_EVERY_STAGE = ("neighbours", "bias", "first_shift", "hidden_w", "hidden_b", "hidden_shift", "out_w", "out_b",
                "logit_shift", "adapt_weight")
_LATER_STAGES = ("project_w", "project_b", "project_shift", "context_w", "previous")


def expected_names(stages: int) -> set[str]:
    """The tensor names of a model of ``stages`` stages, prefix included."""
    names = set(_COMMON)
    for m in range(stages):
        names |= {f"stage{m + 1}.{n}" for n in _EVERY_STAGE + (_LATER_STAGES if m else ())}
    return {TENSOR_PREFIX + n for n in names}


def from_tensors(tensors: dict[str, np.ndarray]) -> IndexModel:
    """The model from a weights file's ``index_model.*`` int32 tensors: exactly the names of
    its stages (``stage1.`` …), else ValueError, as for shapes that disagree or sums that are
    not exact."""
    stages = sum(1 for name in tensors if name.endswith(".first_shift"))
    wrong = sorted(set(tensors) ^ expected_names(stages))
    if not stages or wrong:
        raise ValueError(f"tensor {wrong[0] if wrong else TENSOR_PREFIX + 'stage1.first_shift'!r} "
                         f"{'is missing' if wrong and wrong[0] not in tensors else 'is unexpected'} "
                         f"for {stages} stages")

    def get(name: str) -> np.ndarray:
        return np.asarray(tensors[TENSOR_PREFIX + name], dtype=np.float64)

    codebooks = get("codebooks")
    nets = []
    for m in range(stages):
        p = f"stage{m + 1}."
        extra = {}
        if m:
            extra = {"project_w": get(p + "project_w"), "project_b": get(p + "project_b"),
                     "project_shift": _scalar(tensors, p + "project_shift"),
                     "context_w": get(p + "context_w"), "previous": get(p + "previous")}
        nets.append(StageNetwork(
            neighbours=get(p + "neighbours"), bias=get(p + "bias"), first_shift=_scalar(tensors, p + "first_shift"),
            hidden_w=get(p + "hidden_w"), hidden_b=get(p + "hidden_b"), hidden_shift=_scalar(tensors, p + "hidden_shift"),
            out_w=get(p + "out_w"), out_b=get(p + "out_b"), logit_shift=_scalar(tensors, p + "logit_shift"),
            adapt_weight=_scalar(tensors, p + "adapt_weight"), **extra))
    table = np.asarray(tensors[TENSOR_PREFIX + "output_table"]).astype(np.float32)
    offsets = np.asarray(tensors[TENSOR_PREFIX + "neighbour_offsets"]).astype(np.int64)
    if offsets.ndim != 2 or offsets.shape[1] != 2 or not 1 <= offsets.shape[0] <= 64 \
            or any(not -8 <= dx <= 8 or not -8 <= dy <= 0 or (dy == 0 and dx % 2 == 0) for dy, dx in offsets):
        raise ValueError("index model neighbour offsets must be rows above, or odd columns of the same row")
    logs = np.asarray(tensors[TENSOR_PREFIX + "log_table"]).astype(np.intp)
    model = IndexModel(nets, codebooks, tuple((int(dy), int(dx)) for dy, dx in offsets), _scalar(tensors, "cap"),
                       table, logs)
    _check_shapes(model)
    check_bounds(model)
    return replace(model, stages=[replace(net, layers=_layers(model, m)) for m, net in enumerate(model.stages)])


def _layers(model: IndexModel, stage: int) -> StageLayers:
    """Stage ``stage``'s StageLayers, each part in float32 where its sums are exact there."""
    net, cap = model.stages[stage], float(model.cap)
    count, tokens, hidden = net.neighbours.shape
    first = np.abs(net.neighbours).max(axis=1).sum(axis=0) + np.abs(net.bias)  # per hidden unit
    inner = [float(first.max()), _bound_of_layer(net.hidden_w, net.hidden_b, cap)]
    if stage:
        inputs = np.abs(model.codebooks[:stage]).max(axis=1).sum(axis=0)
        inner.append(float((inputs @ np.abs(net.project_w) + np.abs(net.project_b)).max()))
        first += np.abs(net.context_w).sum(axis=0) * cap + np.abs(net.previous).max(axis=0)
        inner.append(float(first.max()))
    logits = _bound_of_layer(net.out_w, net.out_b, cap)
    adaptive = float(np.abs(model.log_table).max()) * net.adapt_weight / WEIGHT_UNITS  # codec/index_adaptation.py
    steps = 2 * (logits * 2.0 ** (2 - net.logit_shift) + adaptive)  # the largest logit less another
    inner_dtype = torch.float32 if max(inner) < EXACT_LIMIT32 else torch.float64
    outer_dtype = torch.float32 if max(logits, steps) < EXACT_LIMIT32 else torch.float64

    def t(array: np.ndarray | None, dtype: torch.dtype = inner_dtype) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(dtype)

    context = None
    if stage:  # rows (window place, channel) → (channel, window place), unfold's order
        assert net.context_w is not None
        projected = net.context_w.shape[0] // 9
        context = net.context_w.reshape(9, projected, hidden).transpose(1, 0, 2).reshape(9 * projected, hidden)
    return StageLayers(inner_dtype, outer_dtype, t(net.neighbours.reshape(count * tokens, hidden)),
                       torch.arange(count) * tokens, t(net.bias), t(net.hidden_w), t(net.hidden_b),
                       t(net.out_w, outer_dtype), t(net.out_b, outer_dtype), t(model.codebooks),
                       t(net.project_w), t(net.project_b), t(context), t(net.previous))


def _bound_of_layer(weights: np.ndarray, bias: np.ndarray, cap: float) -> float:
    """The largest magnitude any partial sum of a layer fed by activations in [0, cap] can
    reach, bias included: with inputs ≥ 0, a sum of some of a unit's products lies between
    cap times the sum of its negative weights and cap times the sum of its positive ones."""
    positive = np.clip(weights, 0, None).sum(axis=0)
    negative = -np.clip(weights, None, 0).sum(axis=0)
    return float((np.maximum(positive, negative) * cap + np.abs(bias)).max())


def _check_shapes(model: IndexModel) -> None:
    codes = model.codes
    table = model.output_table
    if table.ndim != 1 or table.size < 2 or not (table >= 1).all() or not (np.diff(table) <= 0).all() \
            or table[0] > 2**16:
        raise ValueError("index model output table must fall from at most 2^16 to at least 1")
    for m, net in enumerate(model.stages):
        hidden = net.bias.shape[0]
        shapes = [(net.neighbours, (len(model.offsets), codes + 2, hidden)), (net.hidden_w, (hidden, hidden)),
                  (net.hidden_b, (hidden,)), (net.out_w, (hidden, codes)), (net.out_b, (codes,))]
        if m:
            projected = net.project_w.shape[1]
            shapes += [(net.project_w, (model.codebooks.shape[2], projected)), (net.project_b, (projected,)),
                       (net.context_w, (9 * projected, hidden)), (net.previous, (codes, hidden))]
        for array, shape in shapes:
            if array.shape != shape:
                raise ValueError(f"index model stage {m + 1}: a tensor of shape {array.shape}, not {shape}")
        shifts = (net.first_shift, net.hidden_shift, net.logit_shift, net.project_shift)
        if not all(0 <= s <= 60 for s in shifts) or net.logit_shift < 2:
            raise ValueError(f"index model stage {m + 1}: shifts {shifts} outside 0..60 (the last at least 2)")
        if not 0 <= net.adapt_weight <= 4 * WEIGHT_UNITS:
            raise ValueError(f"index model stage {m + 1}: adaptation weight {net.adapt_weight} outside 0..64")
    logs = model.log_table
    if logs.ndim != 1 or logs.size < log_table_size(codes) or (np.diff(logs[1:]) < 0).any() \
            or logs[1] != 0 or logs[-1] > 2**20:
        raise ValueError("index model log table must rise from 0, with an entry for every count")
    if model.cap < 1 or model.cap > 2**16 or model.codebooks.shape[0] != len(model.stages):
        raise ValueError("index model cap or codebooks out of range")
