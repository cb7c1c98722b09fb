"""The coding path chooses the exact (float64) codewords on every device.

Decision gaps (models/codebook.py) say how far a latent may move before a choice changes;
the CPU path re-decides in float64 whatever float32 rounding could have flipped, from a
float64 analysis of just that latent's tile (models/tiling.analysis_at).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diveq_codec.models import autoencoder, chunked_search, residual, tiling
from diveq_codec.models.autoencoder import VQAutoencoder, pad_to_multiple
from diveq_codec.models.codebook import nearest_codeword, nearest_codeword_with_gap
from diveq_codec.models.config import ModelConfig
from diveq_codec.models.residual import RateCosts, ResidualDiVeQ

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_directions(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True)


@pytest.mark.parametrize("rate_term", [False, True])
def test_gap_is_the_distance_to_the_nearest_cell_wall(rate_term: bool) -> None:
    """Without a rate term the walls are the Voronoi cell's; with one (a cost per row and
    codeword, added to the squared distance) they lie where two codewords cost the same."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=g, dtype=torch.float64)
    books = torch.randn(17, 6, generator=g, dtype=torch.float64)
    extra = 3.0 * torch.rand(500, 17, generator=g, dtype=torch.float64) if rate_term else None
    idx, gap = nearest_codeword_with_gap(z, books, extra)
    costs = torch.cdist(z, books) ** 2 + (0.0 if extra is None else extra)
    assert torch.equal(idx, costs.argmin(dim=1)) and torch.equal(idx, nearest_codeword(z, books, extra))
    if rate_term:
        assert (idx != nearest_codeword(z, books)).sum() > 50  # the term changes many choices
    chosen = books[idx]
    walls = torch.stack([(costs[:, j] - costs.gather(1, idx[:, None]).squeeze(1))
                         / (2 * torch.linalg.vector_norm(books[j] - chosen, dim=1)) for j in range(17)], dim=1)
    walls[torch.arange(500), idx] = float("inf")
    assert torch.allclose(gap, walls.min(dim=1).values, rtol=1e-9, atol=1e-12)
    # Straight through the nearest wall: just past it the choice changes, just before it does not.
    through = books[walls.argmin(dim=1)] - chosen
    through = through / torch.linalg.vector_norm(through, dim=1, keepdim=True)
    assert (nearest_codeword(z + 1.001 * gap[:, None] * through, books, extra) != idx).all()
    assert torch.equal(nearest_codeword(z + 0.999 * gap[:, None] * through, books, extra), idx)


def _rate_costs(kind: str | None, rows: int, scale: float, generator: torch.Generator) -> RateCosts | None:
    """A random rate term of float32 numbers, as the encoder builds them, for 4 stages of 16
    codewords: static (by codeword and previous index) or per latent."""
    if kind is None:
        return None
    if kind == "positions":
        return RateCosts.per_position(scale * torch.rand(4, rows, 16, generator=generator))
    first = (scale * torch.rand(16, generator=generator)).double()
    following = (scale * torch.rand(3, 16, 16, generator=generator)).double()
    return RateCosts(first, following)


def _rate_paid(rate: RateCosts, indices: torch.Tensor) -> torch.Tensor:
    """The rate term each row's path (S, N) pays."""
    total = torch.zeros(indices.shape[1], dtype=torch.float64)
    for m in range(indices.shape[0]):
        term = rate.for_stage(m, indices[m - 1] if m else None)
        total += term[indices[m]] if term.dim() == 1 else term.gather(1, indices[m][:, None]).squeeze(1)
    return total


RATE_KINDS = [None, "static", "positions"]


@pytest.mark.parametrize("rate_term", RATE_KINDS)
def test_no_move_shorter_than_the_residual_gap_changes_any_stage(rate_term: str | None) -> None:
    g = torch.Generator().manual_seed(1)
    quantizer = ResidualDiVeQ(4, 16, 8).double()
    with torch.no_grad():
        quantizer.codebooks.normal_(generator=g)
        quantizer.codebooks.mul_(torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64)[:, None, None])
    z = torch.randn(400, 8, generator=g, dtype=torch.float64)
    rate = _rate_costs(rate_term, 400, 0.5, g)
    idx, gap = quantizer.indices_and_gaps(z, rate=rate)
    assert torch.equal(idx, quantizer.indices(z, rate=rate))
    if rate is not None:  # the choices pay less rate than the nearest codewords (its whole point)
        assert _rate_paid(rate, idx).sum() < _rate_paid(rate, quantizer.indices(z)).sum()
    for _ in range(20):
        moved = z + 0.999 * gap[:, None] * _random_directions(400, 8, g)
        assert torch.equal(quantizer.indices(moved, rate=rate), idx)


def _random_layer(generator: torch.Generator) -> ResidualDiVeQ:
    quantizer = ResidualDiVeQ(4, 16, 8).double()
    with torch.no_grad():
        quantizer.codebooks.normal_(generator=generator)
        quantizer.codebooks.mul_(torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64)[:, None, None])
    return quantizer


@pytest.mark.parametrize("rate_term", RATE_KINDS)
def test_a_beam_search_finds_cheaper_paths_and_a_beam_of_one_is_the_greedy_search(rate_term: str | None) -> None:
    g = torch.Generator().manual_seed(11)
    quantizer = _random_layer(g)
    z = torch.randn(400, 8, generator=g, dtype=torch.float64)
    rate = _rate_costs(rate_term, 400, 0.5, g)
    greedy = quantizer.indices(z, rate=rate)
    assert torch.equal(quantizer._beam_search(z, 4, rate, 1, with_gaps=False)[0], greedy)

    def cost(indices: torch.Tensor) -> torch.Tensor:
        books = quantizer.codebooks.detach()
        distance = (z - sum(books[m][indices[m]] for m in range(4))).square().sum(dim=1)
        return distance if rate is None else distance + _rate_paid(rate, indices)
    beam = quantizer.indices(z, rate=rate, beam=4)
    assert (beam != greedy).any(dim=0).sum() > 20
    assert (cost(beam) <= cost(greedy) + 1e-12).float().mean() > 0.9 and cost(beam).sum() < cost(greedy).sum()
    assert torch.equal(quantizer.indices(z, 2, rate=rate, beam=4), quantizer.indices(z, 2, rate=rate, beam=4))


@pytest.mark.parametrize("rate_term", RATE_KINDS)
@pytest.mark.parametrize("width", [2, 4])
def test_no_move_shorter_than_the_beam_gap_changes_the_beams_choice(rate_term: str | None, width: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with few left-out paths measured one by one, where the bound on the others counts."""
    g = torch.Generator().manual_seed(12)
    quantizer = _random_layer(g)
    z = torch.randn(400, 8, generator=g, dtype=torch.float64)
    rate = _rate_costs(rate_term, 400, 0.5, g)
    for listed in (residual.GAP_CANDIDATES, 1):
        monkeypatch.setattr(residual, "GAP_CANDIDATES", listed)
        idx, gap = quantizer.indices_and_gaps(z, rate=rate, beam=width)
        assert torch.equal(idx, quantizer.indices(z, rate=rate, beam=width))
        assert (gap > 0).float().mean() > 0.95
        for _ in range(20):
            moved = z + 0.999 * gap[:, None] * _random_directions(400, 8, g)
            assert torch.equal(quantizer.indices(moved, rate=rate, beam=width), idx)
        # And the bound is not vacuous: moves a few times longer change some choices.
        moved = z + 4.0 * gap[:, None] * _random_directions(400, 8, g)
        assert not torch.equal(quantizer.indices(moved, rate=rate, beam=width), idx)


@pytest.fixture(scope="module")
def shipped() -> VQAutoencoder:
    from diveq_codec.codec.zoo import load_model, resolve_quality

    return load_model(resolve_quality(None).model_id, "cpu").model


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (5, 70), (150, 131), (300, 260)])
@pytest.mark.parametrize("share", ["all", "some"])
@pytest.mark.parametrize("whole_pass", [True, False])
def test_analysis_at_matches_the_whole_analysis(shipped: VQAutoencoder, size: tuple[int, int], share: str,
                                                whole_pass: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell, or a scattered fifth of them (groups of many shapes), through group tiles
    and, where they would cover more than it, the tiled pass over the whole image. A 1-cell
    DEFAULT_TILE_SIZE makes the whole pass dear, so the group tiles always run."""
    if not whole_pass:
        monkeypatch.setattr(tiling, "DEFAULT_TILE_SIZE", shipped.stride)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    analysis = copy.deepcopy(shipped.analysis).double()
    whole = shipped.to_vectors(analysis(pad_to_multiple(x, shipped.stride)))
    grid_h, grid_w = -(-size[0] // shipped.stride), -(-size[1] // shipped.stride)
    cells = torch.cartesian_prod(torch.arange(grid_h), torch.arange(grid_w))
    rows = torch.arange(len(cells))
    if share == "some":
        rows = torch.randperm(len(cells), generator=torch.Generator().manual_seed(5))[:max(1, len(cells) // 5)]
        rows = torch.cat([rows, rows[:1]])  # a cell asked for twice gets its vector twice
    at = tiling.analysis_at(analysis, x, shipped.stride, cells[rows])
    assert torch.allclose(at, whole[rows], rtol=0, atol=1e-12)


def test_cell_groups_cover_each_cell_once_and_save_cells() -> None:
    g = torch.Generator().manual_seed(7)
    grid_h, grid_w, margin = 90, 70, 6
    cells = [tuple(c) for c in torch.randint(0, 70, (400, 2), generator=g).tolist()]
    cells += [(y, x) for y in range(30, 40) for x in range(5, 9)]  # a block beyond GREEDY_LIMIT
    groups = tiling.cell_groups(cells, margin, grid_h, grid_w)
    assert sorted(c for group in groups for c in group) == sorted(set(cells))
    for group in groups:
        assert len({(y // tiling.GROUP_BLOCK, x // tiling.GROUP_BLOCK) for y, x in group}) == 1
    together = sum(tiling.tile_cells(group, margin, grid_h, grid_w) for group in groups)
    apart = sum(tiling.tile_cells([c], margin, grid_h, grid_w) for c in set(cells))
    assert together < apart


def _lighthouse(samples: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(samples / "lighthouse.png").convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("margin", [autoencoder.EXACT_SEARCH_MARGIN, float("inf")])
def test_cpu_path_gives_the_float64_indices(shipped: VQAutoencoder, margin: float,
                                             monkeypatch: pytest.MonkeyPatch, lighthouse_path: Path) -> None:
    """With the shipped margin, and with every latent re-decided (margin ∞: the refinement
    itself must reproduce the float64 path exactly)."""
    monkeypatch.setattr(autoencoder, "EXACT_SEARCH_MARGIN", margin)
    x = _lighthouse(lighthouse_path.parent)
    exact, grid = shipped.encode_indices(x, dtype=torch.float64)
    fast, fast_grid = shipped.encode_indices(x)
    assert grid == fast_grid and torch.equal(fast, exact)


def test_quantizer_without_gaps_searches_in_float64() -> None:
    torch.manual_seed(3)
    model = VQAutoencoder(ModelConfig(channels=8, latent_dim=4, quantizer="sf-diveq", num_stages=1, num_codes=8)).eval()
    x = torch.rand(1, 3, 19, 27)
    assert model.quantizer.indices_and_gaps(torch.zeros(2, 4)) is None
    assert torch.equal(model.encode_indices(x)[0], model.encode_indices(x, dtype=torch.float64)[0])


def test_a_duplicated_codeword_is_a_tie_not_a_nan() -> None:
    books = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    idx, gap = nearest_codeword_with_gap(torch.tensor([[0.9, 1.2], [0.1, 0.0]], dtype=torch.float64), books)
    assert idx.tolist() == [1, 0]
    assert gap[0] == 0 and gap[1] > 0 and not gap.isnan().any()


def test_cpu_path_with_a_rate_term_gives_the_float64_indices(shipped: VQAutoencoder, lighthouse_path: Path) -> None:
    from diveq_codec.codec.zoo import load_model, resolve_quality

    loaded = load_model(resolve_quality(None).model_id, "cpu")
    rate = loaded.rate_costs(0.01)
    x = _lighthouse(lighthouse_path.parent)
    exact, _ = shipped.encode_indices(x, 6, dtype=torch.float64, rate=rate)
    assert torch.equal(shipped.encode_indices(x, 6, rate=rate)[0], exact)
    assert not torch.equal(shipped.encode_indices(x, 6, dtype=torch.float64)[0], exact)


def test_cpu_path_with_a_beam_gives_the_float64_indices(shipped: VQAutoencoder, lighthouse_path: Path) -> None:
    from diveq_codec.codec.zoo import load_model, resolve_quality

    rate = load_model(resolve_quality(None).model_id, "cpu").rate_costs(0.01)
    x = _lighthouse(lighthouse_path.parent)
    exact, _ = shipped.encode_indices(x, 6, dtype=torch.float64, rate=rate, beam=4)
    assert torch.equal(shipped.encode_indices(x, 6, rate=rate, beam=4)[0], exact)
    assert not torch.equal(shipped.encode_indices(x, 6, dtype=torch.float64, rate=rate)[0], exact)


def test_a_rate_per_latent_is_cut_with_the_chunks_and_the_re_decided_rows() -> None:
    g = torch.Generator().manual_seed(13)
    quantizer = _random_layer(g)
    z = torch.randn(400, 8, generator=g, dtype=torch.float64)
    rate = _rate_costs("positions", 400, 0.5, g)
    whole = quantizer.indices(z, rate=rate)
    assert torch.equal(chunked_search.chunked_indices(quantizer, z, None, chunk=37, rate=rate), whole)
    chunked = chunked_search.chunked_indices_and_gaps(quantizer, z, None, chunk=37, rate=rate)
    assert chunked is not None and torch.equal(chunked[0], whole)
    some = torch.tensor([3, 200, 399])
    assert torch.equal(quantizer.indices(z[some], rate=rate.rows(some)), whole[:, some])


@pytest.mark.parametrize("beam", [1, 4])
def test_cpu_path_with_the_index_models_costs_gives_the_float64_indices(shipped: VQAutoencoder,
                                                                        lighthouse_path: Path, beam: int) -> None:
    """The rounds that charge the index model's costs (codec/index_costs.py) are exact too."""
    from diveq_codec.codec import index_costs
    from diveq_codec.codec.zoo import load_model, resolve_quality

    loaded = load_model(resolve_quality(None).model_id, "cpu")
    x = _lighthouse(lighthouse_path.parent)
    rate = loaded.rate_costs(0.005)

    def search(dtype: torch.dtype) -> torch.Tensor:
        recost = index_costs.recoster(loaded.require_index_model(), 0.005)
        return shipped.encode_indices(x, 3, dtype=dtype, rate=rate, beam=beam, recost=recost)[0]

    exact = search(torch.float64)
    assert torch.equal(search(torch.float32), exact)
    assert not torch.equal(shipped.encode_indices(x, 3, dtype=torch.float64, rate=rate, beam=beam)[0], exact)


def test_a_rate_term_needs_a_residual_quantizer() -> None:
    model = VQAutoencoder(ModelConfig(channels=8, latent_dim=4, num_stages=1, num_codes=8)).eval()
    rate = RateCosts(torch.zeros(8, dtype=torch.float64), torch.zeros(0, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="residual"):
        model.encode_indices(torch.rand(1, 3, 16, 16), rate=rate)
