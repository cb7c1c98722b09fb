"""Residual DiVeQ: stage m quantizes what stages < m left over; one reparameterisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diveq_codec.models.codebook import (
    DeadCodeReplacer,
    init_from_samples,
    nearest_codeword,
    nearest_codeword_with_gap,
    perplexity,
    search_dtype,
)
from diveq_codec.models.quantizer import Quantizer, QuantizerOutput, directional_reparam


@dataclass(frozen=True)
class RateCosts:
    """The rate term of entropy-constrained assignment (ECVQ; Chou, Lookabaugh and Gray,
    1989): codeword j of stage m costs its squared distance plus λ times the bits it takes to
    code, so that a codeword nearly as near but much cheaper to code can win.

    Either static, by codeword and context (``from_lengths``): ``first`` (K,) is stage 1's
    term, by codeword alone (each latent must stay decidable on its own: the float64
    re-decision of single latents relies on it), and ``following`` (S − 1, K, K) stage m's,
    by stage m − 1's index at the same position and codeword. Or per position
    (``per_position``): ``positions`` (S, N, K), a term for every latent, stage and codeword,
    fixed before the search (the coder's own costs given an earlier choice of the indices),
    so each latent still stays decidable on its own. Values are float32 numbers (the static
    ones held in float64) so that a float32 and a float64 search add exactly the same costs.
    """

    first: torch.Tensor | None = None
    following: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @classmethod
    def from_lengths(cls, lengths: tuple[np.ndarray, np.ndarray], weight: float,
                     device: torch.device | str = "cpu") -> RateCosts | None:
        """The term at λ = ``weight`` for code lengths in bits (``codec.entropy.code_lengths``
        of the tables); None at 0, the nearest codewords. Rounded to float32 numbers once,
        here, so that the float32 search and the float64 re-decision add identical costs."""
        if weight == 0:
            return None

        def exact(bits: np.ndarray) -> torch.Tensor:
            return torch.from_numpy((weight * bits).astype(np.float32)).double().to(device)

        first, following = lengths
        return cls(first=exact(first), following=exact(following))

    @classmethod
    def per_position(cls, costs: torch.Tensor) -> RateCosts:
        """A term per latent (S, N, K), rounded to float32 once, here, and held so (half the
        memory): a float64 search widens the same numbers exactly."""
        return cls(positions=costs.float())

    def rows(self, which: slice | torch.Tensor) -> RateCosts:
        """The term of some latents only (a chunk of rows, or the re-decided ones)."""
        if self.positions is None:
            return self
        return RateCosts(positions=self.positions[:, which])

    def for_stage(self, stage: int, previous: torch.Tensor | None) -> torch.Tensor:
        """Stage ``stage``'s (0-based) term: (K,) or (N, K) for the first, (N, K) after it,
        given the previous stage's indices (N,)."""
        if self.positions is not None:
            return self.positions[stage]
        assert self.first is not None and self.following is not None
        if stage == 0:
            return self.first
        assert previous is not None
        return self.following[stage - 1].to(previous.device)[previous]

    def for_paths(self, stage: int, previous: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Stage ``stage``'s term for a beam's paths, broadcastable to (N, paths, K), given
        each path's previous index (N, paths)."""
        if self.positions is not None:
            return self.positions[stage].to(dtype).unsqueeze(1)
        assert self.first is not None and self.following is not None
        if stage == 0:
            return self.first.to(dtype)
        assert previous is not None
        return self.following[stage - 1].to(dtype)[previous]


# Left-out paths per stage whose distance to the kept ones the beam search measures one by
# one (see ResidualDiVeQ._beam_search); the rest are bounded by the last of them. At width 4
# and quality 12's λ, 4 re-decide as many latents as 8 (33.5 per image on 17 training photos)
# in two thirds of the search time; 2 re-decide a few more, 1 four times as many (four Kodak
# images).
GAP_CANDIDATES = 4


def _least_wall(z: torch.Tensor, costs: torch.Tensor, sums: torch.Tensor, kept: int, more: bool) -> torch.Tensor:
    """A lower bound on each row's distance to a wall between its ``kept`` cheapest paths and
    the rest: rows z (N, D), the listed paths' costs (N, L) ascending and sums of codewords
    (N, L, D); ``more``: other paths exist, none cheaper than the last listed."""
    kept_sums, left_sums = sums[:, :kept], sums[:, kept:]
    spread = ((kept_sums * kept_sums).sum(dim=2).unsqueeze(2) + (left_sums * left_sums).sum(dim=2).unsqueeze(1)
              - 2.0 * (kept_sums @ left_sums.transpose(1, 2))).clamp_min(0.0).sqrt()  # ‖s_c − s_d‖ (N, kept, L − kept)
    walls = (costs[:, kept:].unsqueeze(1) - costs[:, :kept].unsqueeze(2)) / (2.0 * spread)
    # 0/0: a path with the sum and cost of a kept one (a duplicate codeword): no margin at all.
    least = torch.nan_to_num(walls, nan=0.0).flatten(1).min(dim=1).values
    if more:
        worst_kept, last = costs[:, kept - 1], costs[:, -1]
        reach = (z.unsqueeze(1) - kept_sums).square().sum(dim=2).max(dim=1).values.sqrt()
        least = torch.minimum(least, (last - worst_kept) / (2.0 * (reach + last.clamp_min(0.0).sqrt())))
    return least


class ResidualDiVeQ(Quantizer):
    """``num_stages`` codebooks of ``num_codes`` words; ẑ = Σ_m C_m[k_m].

    A prefix of the stages is itself a valid, coarser code, which is what makes one
    weights file serve several rate points. Training it that way is quantizer dropout:
    ``forward(z, active_stages)`` reparameterises each row towards the sum of only its
    first ``active_stages[row]`` stages.
    """

    def __init__(
        self,
        num_stages: int,
        num_codes: int,
        embedding_dim: int,
        noise_std: float = 1e-3,
        replace_interval: int = 100,
        replace_threshold: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_stages = num_stages
        self.num_codes = num_codes
        self.embedding_dim = embedding_dim
        self.noise_std = noise_std
        bound = 1.0 / num_codes
        self.codebooks = nn.Parameter(torch.empty(num_stages, num_codes, embedding_dim).uniform_(-bound, bound))
        self.dead_code_replacers = [DeadCodeReplacer(num_codes, replace_interval, replace_threshold) for _ in range(num_stages)]

    @property
    def alphabet_sizes(self) -> list[int]:
        return [self.num_codes] * self.num_stages

    def _stage_sums(self, z: torch.Tensor, num_stages: int, observe: bool,
                    rate: RateCosts | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (S, N) and cumulative reconstructions (S, N, D) of the first S stages."""
        remainder = z
        total = torch.zeros_like(z)
        all_idx: list[torch.Tensor] = []
        sums = []
        for m in range(num_stages):
            extra = rate.for_stage(m, all_idx[-1] if all_idx else None) if rate is not None else None
            idx = nearest_codeword(remainder, self.codebooks[m], extra)
            if observe:
                self.dead_code_replacers[m].observe(remainder, idx)
            chosen = self.codebooks[m][idx].to(z.dtype)
            total = total + chosen
            remainder = remainder - chosen.detach()
            all_idx.append(idx)
            sums.append(total)
        return torch.stack(all_idx), torch.stack(sums)

    def forward(self, z: torch.Tensor, active_stages: torch.Tensor | None = None) -> QuantizerOutput:
        idx, sums = self._stage_sums(z, self.num_stages, observe=self.training)
        if active_stages is None:
            target = sums[-1]
        else:
            pick = (active_stages.long() - 1).clamp(0, self.num_stages - 1)
            target = sums[pick, torch.arange(z.shape[0], device=z.device)]
        z_q = directional_reparam(z, target, self.noise_std if self.training else 0.0)
        return QuantizerOutput(z_q, idx, [perplexity(row, self.num_codes) for row in idx])

    def _checked_stages(self, num_stages: int | None) -> int:
        stages = self.num_stages if num_stages is None else num_stages
        if not 1 <= stages <= self.num_stages:
            raise ValueError(f"num_stages must be in 1..{self.num_stages}, got {stages}")
        return stages

    @torch.no_grad()
    def indices(self, z: torch.Tensor, num_stages: int | None = None, rate: RateCosts | None = None,
                beam: int = 1) -> torch.Tensor:
        """Each stage's codeword for every row of z: the nearest, or with ``rate`` the cheapest;
        with ``beam`` > 1, the path of least total cost among those a beam search keeps."""
        stages = self._checked_stages(num_stages)
        if beam > 1:
            return self._beam_search(z, stages, rate, beam, with_gaps=False)[0]
        idx, _ = self._stage_sums(z.to(search_dtype(z)), stages, observe=False, rate=rate)
        return idx

    @torch.no_grad()
    def indices_and_gaps(self, z: torch.Tensor, num_stages: int | None = None,
                         rate: RateCosts | None = None, beam: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if beam > 1:
            idx, gaps = self._beam_search(z, self._checked_stages(num_stages), rate, beam, with_gaps=True)
            assert gaps is not None
            return idx, gaps
        # Stage m's remainder is z minus exact codewords, so an error in z moves every
        # stage's remainder by the same vector: the smallest gap over stages bounds them all.
        # The rate term depends only on earlier choices, which stand while z moves less than
        # their gaps, so the same holds with it.
        remainder = z.detach().to(search_dtype(z))
        all_idx: list[torch.Tensor] = []
        smallest = torch.full(z.shape[:1], float("inf"), dtype=remainder.dtype, device=z.device)
        for m in range(self._checked_stages(num_stages)):
            extra = rate.for_stage(m, all_idx[-1] if all_idx else None) if rate is not None else None
            idx, gap = nearest_codeword_with_gap(remainder, self.codebooks[m], extra)
            remainder = remainder - self.codebooks[m][idx].to(remainder.dtype)
            all_idx.append(idx)
            smallest = torch.minimum(smallest, gap)
        return torch.stack(all_idx), smallest

    def _beam_search(self, z: torch.Tensor, stages: int, rate: RateCosts | None, width: int,
                     with_gaps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stages' indices (S, N) of the least total cost ‖z − Σ codewords‖² + Σ rate terms
        that a beam of ``width`` paths finds, and (``with_gaps``) each row's decision gap.

        The greedy search (a beam of one) picks each stage's cheapest codeword for the
        remainder the earlier stages left; a beam keeps the ``width`` cheapest partial paths
        per row, so a codeword that costs a little more now but leaves a remainder the next
        stages code better can still win. The last stage keeps the single cheapest path.

        The gap bounds how far z may move before any kept set (or the final pick) changes.
        Two paths c, d cost the same on the hyperplane at distance (T_d − T_c) / (2‖s_c − s_d‖)
        from z (T their costs, s their sums of codewords), measured for every kept path and
        each of the GAP_CANDIDATES cheapest left-out ones. Any other left-out path d costs at
        least the last of those, T, and since ‖s_c − s_d‖ ≤ √D_c + √D_d (D the squared
        distance to z, D ≤ T as rates are ≥ 0), lies at least (T − T_in) / (2(√D_in + √T))
        away, with T_in and √D_in the largest over the kept paths.
        """
        dtype = search_dtype(z)
        vectors = z.detach().to(dtype)
        rows, dim = vectors.shape
        books = self.codebooks.detach().to(dtype)
        book_norms = (books * books).sum(dim=2)
        codes = books.shape[1]
        sums = vectors.new_zeros(rows, 1, dim)
        spent = vectors.new_zeros(rows, 1)  # the kept paths' rate terms so far
        paths = torch.zeros(rows, 1, 0, dtype=torch.long, device=z.device)
        gaps = torch.full((rows,), float("inf"), dtype=dtype, device=z.device) if with_gaps else None
        for m in range(stages):
            remainder = vectors.unsqueeze(1) - sums
            cost = torch.matmul(remainder, books[m].t()).mul_(-2.0)  # (rows, paths, K), in place from here
            cost.add_((remainder * remainder).sum(dim=2, keepdim=True)).add_(book_norms[m]).clamp_min_(0.0)
            if rate is not None:  # the same float32 numbers in either dtype (RateCosts)
                term = rate.for_paths(m, paths[:, :, -1] if m else None, dtype).expand_as(cost)
                cost.add_(term)
                cost.add_(spent.unsqueeze(2))
            candidates = cost.shape[1] * codes
            kept = 1 if m == stages - 1 else min(width, candidates)
            listed = min(kept + GAP_CANDIDATES, candidates)
            listed_cost, order = cost.view(rows, -1).topk(listed, dim=1, largest=False, sorted=True)
            parent, code = order // codes, order % codes
            listed_sums = sums.gather(1, parent.unsqueeze(2).expand(-1, -1, dim)) + books[m][code]
            if gaps is not None and listed > kept:
                gaps = torch.minimum(gaps, _least_wall(vectors, listed_cost, listed_sums, kept,
                                                       more=listed < candidates))
            parent, code, sums = parent[:, :kept], code[:, :kept], listed_sums[:, :kept]
            if rate is not None:
                spent = spent.gather(1, parent) + term.reshape(rows, -1).gather(1, order[:, :kept])
            paths = torch.cat([paths.gather(1, parent.unsqueeze(2).expand(-1, -1, paths.shape[2])),
                               code.unsqueeze(2)], dim=2)
        return paths[:, 0, :].t().contiguous(), gaps

    @torch.no_grad()
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        stages = indices.shape[0]
        if not 1 <= stages <= self.num_stages:
            raise ValueError(f"expected 1..{self.num_stages} index rows, got {stages}")
        books = self.codebooks.detach().float()
        out = books[0][indices[0]]
        for m in range(1, stages):
            out = out + books[m][indices[m]]
        return out

    @torch.no_grad()
    def init_from_data(self, z: torch.Tensor) -> None:
        """Seed stage m from the residuals that stages < m leave on these samples."""
        remainder = z.detach().float()
        for m in range(self.num_stages):
            init_from_samples(self.codebooks[m], remainder)
            idx = nearest_codeword(remainder, self.codebooks[m])
            remainder = remainder - self.codebooks[m][idx].float()

    def replace_dead_codes(self, optimizer: torch.optim.Optimizer | None) -> int:
        replaced = 0
        for m, replacer in enumerate(self.dead_code_replacers):
            if not replacer.due():
                continue
            rows = replacer.replace_dead(self.codebooks[m])
            if rows.numel():
                replaced += int(rows.numel())
                if optimizer is not None:
                    state = optimizer.state.get(self.codebooks)
                    for key in ("exp_avg", "exp_avg_sq"):
                        if state and key in state:
                            state[key][m, rows.to(self.codebooks.device)] = 0.0
        return replaced

