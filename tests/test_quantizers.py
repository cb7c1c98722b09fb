"""Tests of the quantizers in ``models``: DiVeQ, its detach variant, residual DiVeQ and
SF-DiVeQ, checked against the formulas of DIVEQ.md, brute-force searches and the
authors' reference package ``diveq`` 0.1.3 (skipped when that package is absent).

Parity approach: ``torch.distributions.Normal(0, s).sample(shape)`` and
``torch.randn(shape) * s`` consume the global CPU generator identically when the dtypes
match (the reference samples in the *default* dtype), so with the same seed right before
the call the reference and our modules draw the same noise. DiVeQ/residual parity runs in
float64 with the default dtype temporarily set to float64; SF-DiVeQ parity runs in
float32, because our dither λ is always drawn in float32 (as is the reference's, under
the default dtype).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snapshots import assert_same_snapshot

from diveq_codec.models.diveq import DiVeQ, DiVeQDetach
from diveq_codec.models.quantizer import directional_reparam
from diveq_codec.models.residual import ResidualDiVeQ
from diveq_codec.models.sf_diveq import SFDiVeQ, SFDiVeQDetach

F64 = torch.float64


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _snapshot(module: torch.nn.Module) -> dict:
    """Everything that a pure coding path must leave untouched."""
    snap = {k: v.detach().clone() for k, v in module.state_dict().items()}
    replacers = [module.dead_codes] if hasattr(module, "dead_codes") else list(getattr(module, "dead_code_replacers", []))
    for i, replacer in enumerate(replacers):
        snap[f"dead_codes{i}.usage"] = replacer.usage.clone()
        snap[f"dead_codes{i}.steps"] = replacer.steps
        snap[f"dead_codes{i}.recent"] = None if replacer.recent is None else replacer.recent.clone()
    return snap


# --------------------------------------------------------------------------------------
# 1. directional_reparam
# --------------------------------------------------------------------------------------


def _reparam_case(noise_std: float, seed: int = 0):
    n_rows, dim = 7, 5
    z = _randn(n_rows, dim, seed=seed).requires_grad_()
    target = (_randn(n_rows, dim, seed=seed + 1) * 0.5).requires_grad_()
    g = _randn(n_rows, dim, seed=seed + 2)
    torch.manual_seed(1234)
    z_q = directional_reparam(z, target, noise_std)
    (z_q * g).sum().backward()
    d = (target - z).detach()
    r = d.norm(dim=1, keepdim=True)
    u = d / r
    if noise_std == 0:
        n = u
    else:
        torch.manual_seed(1234)
        eps = noise_std * torch.randn_like(d)  # the same draw as inside the call
        n = (d + eps) / (d + eps).norm(dim=1, keepdim=True)
    return z, target, g, z_q, d, r, u, n


@pytest.mark.parametrize("noise_std", [0.0, 1e-3, 0.3])
def test_directional_reparam_value_and_gradients(noise_std):
    z, target, g, z_q, d, r, u, n = _reparam_case(noise_std)
    torch.testing.assert_close(z_q.detach(), z.detach() + r * n, rtol=0, atol=1e-12)
    ng = (n * g).sum(dim=1, keepdim=True)
    torch.testing.assert_close(z.grad, g - u * ng, rtol=0, atol=1e-12)
    torch.testing.assert_close(target.grad, u * ng, rtol=0, atol=1e-12)
    # The encoder gradient has no component along n that straight-through would keep:
    # it is g minus exactly what the target receives.
    torch.testing.assert_close(z.grad + target.grad, g, rtol=0, atol=1e-12)


def test_directional_reparam_noise_zero_hits_target():
    z, target, *_ = _reparam_case(0.0)
    z_q = directional_reparam(z.detach(), target.detach(), 0.0)
    torch.testing.assert_close(z_q, target.detach(), rtol=0, atol=8 * torch.finfo(F64).eps * 4)


def test_directional_reparam_noise_only_turns_direction():
    """With noise the length ‖z_q − z‖ is still exactly r; only the direction jitters."""
    z, target, _, z_q, d, r, _, _ = _reparam_case(1e-3)
    torch.testing.assert_close((z_q.detach() - z.detach()).norm(dim=1, keepdim=True), r, rtol=1e-12, atol=0)
    dim = d.shape[1]
    assert ((z_q.detach() - target.detach()).norm(dim=1) <= 2 * 1e-3 * 4 * math.sqrt(dim)).all()


@pytest.mark.parametrize("noise_std", [0.0, 1e-3])
def test_directional_reparam_zero_error_gives_finite_gradient(noise_std):
    """z exactly on its codeword (r = 0) must not produce NaN gradients."""
    c = _randn(3, 4, seed=5)
    z = c.clone().requires_grad_()
    target = c.clone().requires_grad_()
    z_q = directional_reparam(z, target, noise_std)
    z_q.sum().backward()
    torch.testing.assert_close(z_q.detach(), c)
    assert torch.isfinite(z.grad).all() and torch.isfinite(target.grad).all()


# --------------------------------------------------------------------------------------
# 2./3. DiVeQ and DiVeQDetach
# --------------------------------------------------------------------------------------


def _diveq(cls=DiVeQ, num_codes=32, dim=6, seed=0, **kwargs):
    torch.manual_seed(seed)
    q = cls(num_codes, dim, **kwargs).double()
    with torch.no_grad():
        q.codebook.copy_(_randn(num_codes, dim, seed=seed + 100))
    return q


def test_diveq_index_is_nearest_codeword():
    q = _diveq()
    z = _randn(300, 6, seed=1) * 1.3
    idx = q.indices(z)
    assert idx.shape == (1, 300) and idx.dtype == torch.int64
    dist = torch.cdist(z, q.codebook.detach()) ** 2
    chosen = dist.gather(1, idx.t()).squeeze(1)
    best, brute = dist.min(dim=1)
    assert (chosen <= best + 1e-5).all()
    sorted_d = dist.sort(dim=1).values
    clear = (sorted_d[:, 1] - sorted_d[:, 0]) > 1e-4  # float32 search: ignore near ties
    assert clear.float().mean() > 0.9
    assert torch.equal(idx[0][clear], brute[clear])
    # the training forward chooses the same codewords
    q.train()
    assert torch.equal(q(z).indices, idx)


def test_diveq_training_forward_close_to_codeword():
    noise = 1e-3
    q = _diveq(noise_std=noise).train()
    z = _randn(200, 6, seed=2)
    out = q(z)
    c_k = q.codebook.detach()[out.indices[0]]
    err = (out.z_q.detach() - c_k).norm(dim=1)
    # ‖z_q − c_k‖ = r‖n − u‖ ≤ 2‖ε‖ ≈ 2·s·√D
    assert (err <= 2 * noise * math.sqrt(6) * 3).all()
    assert err.max() > 0  # noise is actually applied in training
    # length is exact: ‖z_q − z‖ = ‖c_k − z‖
    torch.testing.assert_close((out.z_q.detach() - z).norm(dim=1), (c_k - z).norm(dim=1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [DiVeQ, DiVeQDetach])
def test_diveq_eval_forward_is_codeword(cls):
    q = _diveq(cls).eval()
    z = _randn(50, 6, seed=3)
    out = q(z)
    c_k = q.codebook.detach()[out.indices[0]]
    torch.testing.assert_close(out.z_q.detach(), c_k, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.lookup(q.indices(z)).double(), c_k.float().double())


@pytest.mark.parametrize("cls", [DiVeQ, DiVeQDetach])
def test_diveq_gradient_reaches_only_chosen_codewords(cls):
    q = _diveq(cls, num_codes=64).train()
    z = _randn(20, 6, seed=4).requires_grad_()
    out = q(z)
    (out.z_q * _randn(20, 6, seed=5)).sum().backward()
    chosen = torch.zeros(64, dtype=torch.bool)
    chosen[out.indices[0]] = True
    assert chosen.sum() < 64
    grad = q.codebook.grad
    assert (grad[~chosen] == 0).all()
    assert (grad[chosen].norm(dim=1) > 0).all()


def test_diveq_detach_forward_and_jacobians():
    q = _diveq(DiVeQDetach, num_codes=8).train()
    z = _randn(40, 6, seed=6).requires_grad_()
    g = _randn(40, 6, seed=7)
    out = q(z)
    idx = out.indices[0]
    c_k = q.codebook.detach()[idx]
    torch.testing.assert_close(out.z_q.detach(), c_k, rtol=0, atol=1e-12)
    (out.z_q * g).sum().backward()
    d = c_k - z.detach()
    u = d / d.norm(dim=1, keepdim=True)
    ug = (u * g).sum(dim=1, keepdim=True)
    torch.testing.assert_close(z.grad, g - u * ug, rtol=0, atol=1e-12)  # (I − uuᵀ) g
    expected = torch.zeros_like(q.codebook).index_add_(0, idx, u * ug)  # Σ uuᵀ g per code
    torch.testing.assert_close(q.codebook.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [DiVeQ, DiVeQDetach])
def test_diveq_coding_path_is_pure(cls):
    q = _diveq(cls).train()
    q(_randn(30, 6, seed=8))  # give the dead-code counters a non-trivial state
    z = _randn(64, 6, seed=9)
    before = _snapshot(q)
    idx_train = q.indices(z)
    rec_train = q.lookup(idx_train)
    assert not idx_train.requires_grad and not rec_train.requires_grad
    q.eval()
    idx_eval, rec_eval = q.indices(z), q.lookup(idx_train)
    with torch.no_grad():
        idx_ng, rec_ng = q.indices(z), q.lookup(idx_train)
    q.train()
    idx_again = q.indices(z)
    for other in (idx_eval, idx_ng, idx_again):
        assert torch.equal(other, idx_train)
    for other in (rec_eval, rec_ng):
        assert torch.equal(other, rec_train)
    assert rec_train.dtype == torch.float32
    assert_same_snapshot(before, _snapshot(q))


def test_diveq_eval_forward_does_not_touch_dead_code_counters():
    q = _diveq().eval()
    before = _snapshot(q)
    q(_randn(30, 6, seed=10))
    assert_same_snapshot(before, _snapshot(q))
    q.train()
    q(_randn(30, 6, seed=10))
    assert q.dead_codes.steps == 1 and q.dead_codes.usage.sum() == 30


# --------------------------------------------------------------------------------------
# 4. Parity with the reference package diveq 0.1.3
# --------------------------------------------------------------------------------------


def _ref():
    return pytest.importorskip("diveq")


def _ref_kwargs():
    return dict(codebook_reset=False, allow_warning=False, verbose=False)


def test_reference_noise_stream_matches_ours():
    """The premise of exact-seed parity: Normal(0, s).sample == s·randn in the same dtype."""
    from torch.distributions import normal

    for dtype in (torch.float32, F64):
        with default_dtype(dtype):
            torch.manual_seed(3)
            a = normal.Normal(0, 1e-3).sample((5, 19))
            torch.manual_seed(3)
            b = 1e-3 * torch.randn(5, 19, dtype=dtype)
        assert a.dtype == dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("noise", [1e-3, 0.05])
def test_parity_diveq_with_reference(noise):
    diveq = _ref()
    num_codes, dim = 16, 5
    with default_dtype(F64):
        ref = diveq.DIVEQ(num_codes, dim, noise_var=noise, **_ref_kwargs())
        ours = DiVeQ(num_codes, dim, noise_std=noise).double().train()
        with torch.no_grad():
            ours.codebook.copy_(_randn(num_codes, dim, seed=11))
            ref.codebook.data = ours.codebook.detach().clone()
        z0 = _randn(40, dim, seed=12)
        g = _randn(40, dim, seed=13)
        z_ref, z_our = z0.clone().requires_grad_(), z0.clone().requires_grad_()
        torch.manual_seed(77)
        zq_ref, idx_ref, _ = ref(z_ref)
        torch.manual_seed(77)
        out = ours(z_our)
        (zq_ref * g).sum().backward()
        (out.z_q * g).sum().backward()
    assert torch.equal(out.indices[0], idx_ref)
    torch.testing.assert_close(out.z_q, zq_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(z_our.grad, z_ref.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.codebook.grad, ref.codebook.grad, rtol=0, atol=1e-12)
    # coding path vs the reference's deterministic inference
    zh_ref, idx_inf, _ = ref.inference(z0)
    assert torch.equal(ours.indices(z0)[0], idx_inf)
    torch.testing.assert_close(ours.lookup(ours.indices(z0)).double(), zh_ref.float().double())


def test_parity_diveq_detach_with_reference():
    diveq = _ref()
    num_codes, dim = 16, 5
    with default_dtype(F64):
        ref = diveq.DIVEQDetach(num_codes, dim, **_ref_kwargs())
    ours = DiVeQDetach(num_codes, dim).double().train()
    with torch.no_grad():
        ours.codebook.copy_(_randn(num_codes, dim, seed=14))
        ref.codebook.data = ours.codebook.detach().clone()
    z0 = _randn(40, dim, seed=15)
    g = _randn(40, dim, seed=16)
    z_ref, z_our = z0.clone().requires_grad_(), z0.clone().requires_grad_()
    zq_ref, idx_ref, _ = ref(z_ref)
    out = ours(z_our)
    (zq_ref * g).sum().backward()
    (out.z_q * g).sum().backward()
    assert torch.equal(out.indices[0], idx_ref)
    # the reference divides by (r + 1e-12) instead of r: agreement to ~1e-12 relative
    torch.testing.assert_close(out.z_q, zq_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z_our.grad, z_ref.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours.codebook.grad, ref.codebook.grad, rtol=1e-9, atol=1e-10)


def test_parity_diveq_small_noise_limit_is_detach():
    """Reference DIVEQ at tiny noise → our detach variant (the noise → 0 limit)."""
    diveq = _ref()
    num_codes, dim = 16, 5
    with default_dtype(F64):
        ref = diveq.DIVEQ(num_codes, dim, noise_var=1e-9, **_ref_kwargs())
        ours = DiVeQDetach(num_codes, dim).double().train()
        with torch.no_grad():
            ours.codebook.copy_(_randn(num_codes, dim, seed=17))
            ref.codebook.data = ours.codebook.detach().clone()
        z0 = _randn(40, dim, seed=18)
        g = _randn(40, dim, seed=19)
        z_ref, z_our = z0.clone().requires_grad_(), z0.clone().requires_grad_()
        zq_ref, _, _ = ref(z_ref)
        out = ours(z_our)
        (zq_ref * g).sum().backward()
        (out.z_q * g).sum().backward()
    torch.testing.assert_close(out.z_q, zq_ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(z_our.grad, z_ref.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.codebook.grad, ref.codebook.grad, rtol=0, atol=1e-6)


def test_parity_residual_with_reference():
    diveq = _ref()
    stages, num_codes, dim = 3, 8, 4
    with default_dtype(F64):
        ref = diveq.ResidualDIVEQ(num_codes, dim, stages, noise_var=1e-3, **_ref_kwargs())
        ours = ResidualDiVeQ(stages, num_codes, dim, noise_std=1e-3).double().train()
        with torch.no_grad():
            books = _randn(stages, num_codes, dim, seed=20) * torch.tensor([1.0, 0.4, 0.15]).view(-1, 1, 1)
            ours.codebooks.copy_(books)
            ref.codebook.data = books.clone()
        z0 = _randn(30, dim, seed=21)
        g = _randn(30, dim, seed=22)
        z_ref, z_our = z0.clone().requires_grad_(), z0.clone().requires_grad_()
        torch.manual_seed(5)
        zq_ref, idx_ref, _ = ref(z_ref)
        torch.manual_seed(5)
        out = ours(z_our)
        (zq_ref * g).sum().backward()
        (out.z_q * g).sum().backward()
    assert torch.equal(out.indices, torch.stack(idx_ref))
    torch.testing.assert_close(out.z_q, zq_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(z_our.grad, z_ref.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.codebooks.grad, ref.codebook.grad, rtol=0, atol=1e-12)
    zh_ref, idx_inf, _ = ref.inference(z0)
    assert torch.equal(ours.indices(z0), torch.stack(idx_inf))
    torch.testing.assert_close(ours.lookup(ours.indices(z0)).double(), zh_ref, rtol=0, atol=1e-6)


def _sf_codebook(num_codes: int, dim: int, seed: int) -> torch.Tensor:
    """An ordered curve: a random walk, so neighbouring codewords are close."""
    steps = _randn(num_codes, dim, seed=seed, dtype=torch.float32) * 0.5
    return steps.cumsum(0)


def test_reference_sf_skips_quantization_before_skip_iters():
    """Trap check: a fresh reference SFDIVEQ returns z unchanged (iter_counter < 1000)."""
    diveq = _ref()
    ref = diveq.SFDIVEQ(8, 3, allow_warning=False)
    z = torch.randn(5, 3)
    zq, idx, _ = ref(z)
    assert torch.equal(zq, z) and (idx == 0).all()


def _armed(ref):
    with torch.no_grad():
        ref.iter_counter.fill_(ref.skip_iters)  # past the start-up phase
    return ref


def test_parity_sf_diveq_with_reference():
    diveq = _ref()
    num_codes, dim = 10, 4
    ref = _armed(diveq.SFDIVEQ(num_codes, dim, noise_var=1e-3, allow_warning=False))
    ours = SFDiVeQ(num_codes, dim, noise_std=1e-3).train()
    with torch.no_grad():
        ours.codebook.copy_(_sf_codebook(num_codes, dim, seed=23))
        ref.codebook.data = ours.codebook.detach().clone()
    z0 = ours.codebook.detach()[:-1] + 0.3 * torch.randn(num_codes - 1, dim, generator=_gen(24))
    z0 = z0.repeat(3, 1)
    g = torch.randn(z0.shape, generator=_gen(25))
    z_ref, z_our = z0.clone().requires_grad_(), z0.clone().requires_grad_()
    torch.manual_seed(9)
    zq_ref, idx_ref, _ = ref(z_ref)
    torch.manual_seed(9)
    out = ours(z_our)
    (zq_ref * g).sum().backward()
    (out.z_q * g).sum().backward()
    assert torch.equal(out.indices[0], idx_ref)
    torch.testing.assert_close(out.z_q, zq_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_our.grad, z_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.codebook.grad, ref.codebook.grad, rtol=1e-4, atol=1e-5)


def test_reference_sf_detach_bug_returns_first_codeword_ours_does_not():
    """Documented bug in every ``diveq`` release: SFDIVEQDetach's second term points at
    c_k, so its forward is exactly c_k. Ours returns the dithered point (1−λ)c_k + λc_{k+1}."""
    diveq = _ref()
    dim = 3
    c0 = torch.tensor([0.0, 0.0, 0.0])
    c1 = torch.tensor([1.0, 0.5, -0.5])
    c2 = c1 + torch.tensor([0.0, 50.0, 50.0])  # far away: segment 0 is always the nearest
    codebook = torch.stack([c0, c1, c2])
    ts = torch.linspace(0.1, 0.9, 9).unsqueeze(1)
    z = (1 - ts) * c0 + ts * c1  # on the segment between c_0 and c_1

    ref = _armed(diveq.SFDIVEQDetach(3, dim, allow_warning=False))
    ref.codebook.data = codebook.clone()
    ours = SFDiVeQDetach(3, dim).train()
    with torch.no_grad():
        ours.codebook.copy_(codebook)

    torch.manual_seed(31)
    zq_ref, idx_ref, _ = ref(z.clone())
    torch.manual_seed(31)
    out = ours(z.clone())
    torch.manual_seed(31)
    lam = torch.rand(2, 1)[0]  # the same λ both modules drew for segment 0

    assert (idx_ref == 0).all() and (out.indices[0] == 0).all()
    # reference: exactly c_0 for every latent, whatever λ was
    torch.testing.assert_close(zq_ref.detach(), c0.expand_as(z), rtol=0, atol=1e-6)
    # ours: the dithered point on the segment
    expected = (1 - lam) * c0 + lam * c1
    torch.testing.assert_close(out.z_q.detach(), expected.expand_as(z), rtol=0, atol=1e-5)
    assert 0.0 < lam.item() < 1.0
    # over many draws the point lies strictly inside the segment, not at either end
    inside = 0
    for seed in range(20):
        torch.manual_seed(seed)
        p = ours(z[:1]).z_q.detach()[0]
        t = ((p - c0) @ (c1 - c0)) / ((c1 - c0) @ (c1 - c0))
        on_line = torch.allclose(p, c0 + t * (c1 - c0), atol=1e-5)
        inside += int(on_line and 1e-4 < t.item() < 1 - 1e-4)
    assert inside >= 18


# --------------------------------------------------------------------------------------
# 5. ResidualDiVeQ
# --------------------------------------------------------------------------------------


def _residual(stages=3, num_codes=16, dim=4, noise_std=1e-3, seed=0, **kwargs):
    torch.manual_seed(seed)
    q = ResidualDiVeQ(stages, num_codes, dim, noise_std=noise_std, **kwargs).double()
    with torch.no_grad():
        scale = torch.tensor([0.5**m for m in range(stages)], dtype=F64).view(-1, 1, 1)
        q.codebooks.copy_(_randn(stages, num_codes, dim, seed=seed + 200) * scale)
    return q


def test_residual_lookup_is_sum_of_chosen_codewords():
    q = _residual()
    z = _randn(50, 4, seed=30)
    idx = q.indices(z)
    assert idx.shape == (3, 50)
    books = q.codebooks.detach().float()
    expected = books[0][idx[0]] + books[1][idx[1]] + books[2][idx[2]]
    torch.testing.assert_close(q.lookup(idx), expected, rtol=0, atol=1e-6)
    # each stage is the nearest codeword to what the previous stages left over
    remainder = z.float()
    for m in range(3):
        dist = torch.cdist(remainder.double(), books[m].double()) ** 2
        chosen = dist.gather(1, idx[m].unsqueeze(1)).squeeze(1)
        assert (chosen <= dist.min(dim=1).values + 1e-5).all()
        remainder = remainder - books[m][idx[m]]


def test_residual_prefix_property():
    q = _residual(stages=4)
    z = _randn(60, 4, seed=31)
    full = q.indices(z)
    for s in range(1, 5):
        assert torch.equal(q.indices(z, num_stages=s), full[:s])
        torch.testing.assert_close(q.lookup(full[:s]), q.lookup(q.indices(z, num_stages=s)))
    with pytest.raises(ValueError):
        q.indices(z, num_stages=0)
    with pytest.raises(ValueError):
        q.indices(z, num_stages=5)


def test_residual_error_non_increasing_after_init_from_data():
    torch.manual_seed(0)
    q = ResidualDiVeQ(4, 32, 4)
    data = torch.randn(2000, 4) * torch.tensor([2.0, 1.0, 0.5, 0.25])
    q.init_from_data(data)
    held_out = torch.randn(2000, 4, generator=_gen(32)) * torch.tensor([2.0, 1.0, 0.5, 0.25])
    for z in (data, held_out):
        idx = q.indices(z)
        errors = [((q.lookup(idx[:s]) - z) ** 2).sum(1).mean().item() for s in range(1, 5)]
        assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
        assert errors[-1] < 0.5 * errors[0]


def test_residual_active_stages_value():
    q = _residual(stages=3, noise_std=0.0).train()
    z = _randn(12, 4, seed=33)
    active = torch.tensor([1, 2, 3] * 4)
    out = q(z, active)
    idx = q.indices(z)
    assert torch.equal(out.indices, idx)
    books = q.codebooks.detach()
    sums = torch.stack([sum(books[m][idx[m]] for m in range(s)) for s in (1, 2, 3)])
    expected = sums[active - 1, torch.arange(12)]
    torch.testing.assert_close(out.z_q.detach(), expected, rtol=0, atol=1e-12)
    # without active_stages (and in eval mode): all stages
    torch.testing.assert_close(q(z).z_q.detach(), sums[-1], rtol=0, atol=1e-12)
    q.eval()
    torch.testing.assert_close(q(z, active).z_q.detach(), expected, rtol=0, atol=1e-12)


def test_residual_quantizer_dropout_gradients():
    q = _residual(stages=3, num_codes=64, noise_std=1e-3).train()
    z = _randn(9, 4, seed=34).requires_grad_()
    active = torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 3])
    out = q(z, active)
    (out.z_q * _randn(9, 4, seed=35)).sum().backward()
    grad = q.codebooks.grad
    for m in range(3):
        rows = active > m  # stage m is used by these rows only
        reached = torch.zeros(64, dtype=torch.bool)
        reached[out.indices[m][rows]] = True
        assert (grad[m][~reached] == 0).all(), m
        assert (grad[m][reached].norm(dim=1) > 0).all(), m
    # a batch where every row stops at stage 1 leaves stages 2 and 3 without gradient
    q.codebooks.grad = None
    q(z.detach(), torch.ones(9, dtype=torch.long)).z_q.sum().backward()
    assert (q.codebooks.grad[1:] == 0).all() and q.codebooks.grad[0].abs().sum() > 0


def test_residual_init_from_data_distinct_codewords():
    torch.manual_seed(1)
    q = ResidualDiVeQ(3, 16, 4)
    q.init_from_data(torch.randn(500, 4))
    for m in range(3):
        book = q.codebooks.detach()[m].double()
        dist = torch.cdist(book, book) + torch.eye(16, dtype=F64)
        assert (dist > 0).all(), m


def test_diveq_init_from_data_distinct_codewords_from_samples():
    torch.manual_seed(2)
    q = DiVeQ(16, 4)
    data = torch.randn(500, 4)
    q.init_from_data(data)
    book = q.codebook.detach()
    assert ((torch.cdist(book, book) + torch.eye(16)) > 0).all()
    # each codeword is a (slightly jittered) data sample
    assert (torch.cdist(book, data).min(dim=1).values < 0.05).all()


def _adam_with_state(param: torch.nn.Parameter) -> torch.optim.Adam:
    opt = torch.optim.Adam([param], lr=1e-3)
    param.grad = torch.ones_like(param)
    opt.step()  # create exp_avg / exp_avg_sq
    opt.zero_grad()
    for key in ("exp_avg", "exp_avg_sq"):
        opt.state[param][key].fill_(1.0)  # non-zero everywhere, so zeroing is visible
    return opt


def test_diveq_dead_code_replacement_replaces_dead_codes_and_resets_adam_rows():
    torch.manual_seed(3)
    q = DiVeQ(8, 4, replace_interval=3).train()
    with torch.no_grad():
        q.codebook.copy_(torch.randn(8, 4))
        q.codebook[4:] += 100.0  # never the nearest for the data below
    opt = _adam_with_state(q.codebook)
    assert q.replace_dead_codes(opt) == 0  # not due yet: nothing changes
    for step in range(3):
        batch = torch.randn(64, 4, generator=_gen(40 + step))
        q(batch)
        if step < 2:
            assert q.replace_dead_codes(opt) == 0
    used = q.dead_codes.usage > 0
    dead = torch.nonzero(q.dead_codes.usage / q.dead_codes.steps < q.dead_codes.threshold).flatten()
    assert dead.numel() > 0 and used.any()
    assert set(dead.tolist()) >= {4, 5, 6, 7}
    before = q.codebook.detach().clone()
    recent = q.dead_codes.recent.clone()
    assert torch.equal(recent, batch)
    replaced = q.replace_dead_codes(opt)
    assert replaced == dead.numel()
    after = q.codebook.detach()
    alive = torch.ones(8, dtype=torch.bool)
    alive[dead] = False
    assert torch.equal(after[alive], before[alive])
    for row in dead.tolist():
        assert (recent - after[row]).abs().amax(dim=1).min() == 0, row  # a recent input
    for key in ("exp_avg", "exp_avg_sq"):
        state = opt.state[q.codebook][key]
        assert (state[dead] == 0).all(), key
        assert (state[alive] == 1).all(), key
    assert q.dead_codes.steps == 0 and q.dead_codes.usage.sum() == 0


def test_residual_dead_code_replacement_replaces_dead_codes_and_resets_adam_rows():
    torch.manual_seed(4)
    stages, num_codes, dim = 2, 8, 4
    q = ResidualDiVeQ(stages, num_codes, dim, replace_interval=2).train()
    with torch.no_grad():
        q.codebooks.copy_(torch.randn(stages, num_codes, dim) * torch.tensor([1.0, 0.3]).view(-1, 1, 1))
        q.codebooks[:, 5:] += 100.0  # dead in every stage
    opt = _adam_with_state(q.codebooks)
    recents = []
    for step in range(2):
        q(torch.randn(64, dim, generator=_gen(50 + step)))
    dead = [torch.nonzero(c.usage / c.steps < c.threshold).flatten() for c in q.dead_code_replacers]
    recents = [c.recent.clone() for c in q.dead_code_replacers]
    for m in range(stages):
        assert set(dead[m].tolist()) >= {5, 6, 7}
    before = q.codebooks.detach().clone()
    replaced = q.replace_dead_codes(opt)
    assert replaced == sum(d.numel() for d in dead)
    after = q.codebooks.detach()
    for m in range(stages):
        alive = torch.ones(num_codes, dtype=torch.bool)
        alive[dead[m]] = False
        assert torch.equal(after[m][alive], before[m][alive]), m
        for row in dead[m].tolist():
            assert (recents[m] - after[m, row]).abs().amax(dim=1).min() == 0, (m, row)
        for key in ("exp_avg", "exp_avg_sq"):
            state = opt.state[q.codebooks][key][m]
            assert (state[dead[m]] == 0).all(), (m, key)
            assert (state[alive] == 1).all(), (m, key)
        assert q.dead_code_replacers[m].steps == 0


def test_residual_coding_path_is_pure():
    q = _residual().train()
    q(_randn(30, 4, seed=36))
    z = _randn(40, 4, seed=37)
    before = _snapshot(q)
    idx = q.indices(z)
    rec = q.lookup(idx)
    q.eval()
    with torch.no_grad():
        assert torch.equal(q.indices(z), idx)
        assert torch.equal(q.lookup(idx), rec)
    assert_same_snapshot(before, _snapshot(q))


# --------------------------------------------------------------------------------------
# 6. SF-DiVeQ
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_bits", [1, 2, 3])
@pytest.mark.parametrize("num_codes", [2, 9])
def test_sf_alphabet_size(num_codes, t_bits):
    assert SFDiVeQ(num_codes, 3, t_bits=t_bits).alphabet_sizes == [(num_codes - 1) * 2**t_bits]
    assert SFDiVeQDetach(num_codes, 3, t_bits=t_bits).alphabet_sizes == [(num_codes - 1) * 2**t_bits]


def test_sf_rejects_bad_arguments():
    with pytest.raises(ValueError):
        SFDiVeQ(1, 3)
    with pytest.raises(ValueError):
        SFDiVeQ(4, 3, t_bits=0)


def _representable_points(q: SFDiVeQ) -> torch.Tensor:
    """All (K−1)·L points, in symbol order: segment-major, level-minor."""
    c = q.codebook.detach().double()
    t = torch.linspace(0, 1, q.levels, dtype=F64).view(1, -1, 1)
    return ((1 - t) * c[:-1].unsqueeze(1) + t * c[1:].unsqueeze(1)).reshape(-1, c.shape[1])


@pytest.mark.parametrize("t_bits", [1, 2, 3])
def test_sf_indices_pick_best_representable_point(t_bits):
    q = SFDiVeQ(12, 5, t_bits=t_bits)
    with torch.no_grad():
        q.codebook.copy_(_sf_codebook(12, 5, seed=60))
    z = q.codebook.detach()[torch.randint(0, 12, (400,), generator=_gen(61))]
    z = z + 0.6 * torch.randn(400, 5, generator=_gen(62))
    idx = q.indices(z)
    assert idx.shape == (1, 400)
    assert ((idx >= 0) & (idx < q.alphabet_sizes[0])).all()
    points = _representable_points(q)
    dist = torch.cdist(z.double(), points) ** 2
    got = ((q.lookup(idx).double() - z.double()) ** 2).sum(1)
    assert (got <= dist.min(dim=1).values + 1e-4).all()


@pytest.mark.parametrize("t_bits", [1, 2])
def test_sf_symbol_decodes_to_its_segment_and_level(t_bits):
    q = SFDiVeQ(6, 3, t_bits=t_bits)
    with torch.no_grad():
        q.codebook.copy_(_sf_codebook(6, 3, seed=63))
    symbols = torch.arange(q.alphabet_sizes[0]).unsqueeze(0)
    torch.testing.assert_close(q.lookup(symbols).double(), _representable_points(q), rtol=0, atol=1e-6)
    # encoding a representable point returns its own symbol (points are distinct here,
    # except the shared ends c_{j+1} = end of segment j = start of segment j+1)
    idx = q.indices(q.lookup(symbols))
    torch.testing.assert_close(q.lookup(idx), q.lookup(symbols), rtol=0, atol=1e-6)
    interior = (symbols[0] % q.levels != 0) & (symbols[0] % q.levels != q.levels - 1)
    assert torch.equal(idx[0][interior], symbols[0][interior])
    seg, lvl = idx[0] // q.levels, idx[0] % q.levels
    assert ((seg >= 0) & (seg < 5)).all() and ((lvl >= 0) & (lvl < q.levels)).all()


def test_sf_coding_path_is_pure_and_eval_forward_uses_it():
    q = SFDiVeQ(6, 3)
    with torch.no_grad():
        q.codebook.copy_(_sf_codebook(6, 3, seed=64))
    z = torch.randn(30, 3, generator=_gen(65))
    before = _snapshot(q)
    q.train()
    idx = q.indices(z)
    q.eval()
    assert torch.equal(q.indices(z), idx)
    out = q(z)
    assert torch.equal(out.indices, idx)
    assert torch.equal(out.z_q, q.lookup(idx))
    assert_same_snapshot(before, _snapshot(q))


@pytest.mark.parametrize("cls", [SFDiVeQ, SFDiVeQDetach])
def test_sf_training_forward_formula_and_gradients(cls):
    num_codes, dim = 8, 4
    q = cls(num_codes, dim).double().train()
    with torch.no_grad():
        q.codebook.copy_(_sf_codebook(num_codes, dim, seed=66).double())
    z = (q.codebook.detach()[3] + 0.2 * _randn(1, dim, seed=67)).requires_grad_()
    g = _randn(1, dim, seed=68)
    torch.manual_seed(21)
    out = q(z)
    (out.z_q * g).sum().backward()
    k = out.indices[0, 0].item()
    c = q.codebook.detach()
    # re-draw the same λ and ε: λ ~ U(0,1) per segment (float32), then ε₁, ε₂
    torch.manual_seed(21)
    lam = torch.rand(num_codes - 1, 1)
    dithered = (1 - lam) * c[:-1].float() + lam * c[1:].float()
    assert k == torch.cdist(z.detach().float(), dithered).argmin().item()
    lam_k = lam[k].double()
    d1, d2 = c[k] - z.detach(), c[k + 1] - z.detach()
    e1 = q.noise_std * torch.randn_like(d1) if q.noise_std else 0.0
    e2 = q.noise_std * torch.randn_like(d2) if q.noise_std else 0.0
    n1 = (d1 + e1) / (d1 + e1).norm()
    n2 = (d2 + e2) / (d2 + e2).norm()
    expected = z.detach() + d1.norm() * (1 - lam_k) * n1 + d2.norm() * lam_k * n2
    torch.testing.assert_close(out.z_q.detach(), expected, rtol=0, atol=1e-12)
    if q.noise_std == 0:
        torch.testing.assert_close(out.z_q.detach()[0], (1 - lam_k) * c[k] + lam_k * c[k + 1], rtol=0, atol=1e-12)
    # gradients: (1−λ) u₁ (n₁ᵀg) to c_k, λ u₂ (n₂ᵀg) to c_{k+1}, nothing else
    u1, u2 = d1 / d1.norm(), d2 / d2.norm()
    grad = q.codebook.grad
    torch.testing.assert_close(grad[k], ((1 - lam_k) * u1 * (n1 * g).sum())[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad[k + 1], (lam_k * u2 * (n2 * g).sum())[0], rtol=0, atol=1e-12)
    assert grad[k].norm() > 0 and grad[k + 1].norm() > 0
    others = torch.ones(num_codes, dtype=torch.bool)
    others[[k, k + 1]] = False
    assert (grad[others] == 0).all()
    torch.testing.assert_close(
        z.grad, g - (1 - lam_k) * u1 * (n1 * g).sum() - lam_k * u2 * (n2 * g).sum(), rtol=0, atol=1e-12
    )


def test_sf_training_gradients_batch_reach_only_segment_ends():
    num_codes, dim = 10, 3
    q = SFDiVeQ(num_codes, dim).train()
    with torch.no_grad():
        q.codebook.copy_(_sf_codebook(num_codes, dim, seed=69))
        q.codebook[7:] += 100.0  # far tail of the curve: segments 7, 8 never chosen
    z = q.codebook.detach()[:5] + 0.1 * torch.randn(5, dim, generator=_gen(70))
    out = q(z)
    out.z_q.pow(2).sum().backward()
    ends = torch.zeros(num_codes, dtype=torch.bool)
    ends[out.indices[0]] = True
    ends[out.indices[0] + 1] = True
    assert (q.codebook.grad[~ends] == 0).all()
    assert (q.codebook.grad[ends].norm(dim=1) > 0).all()


@pytest.mark.parametrize("n_rows", [40, 43, 5])
def test_sf_init_from_data_chunk_means(n_rows):
    num_codes = 8
    q = SFDiVeQ(num_codes, 3)
    data = torch.randn(n_rows, 3, generator=_gen(71))
    q.init_from_data(data)
    chunks = torch.tensor_split(data, num_codes)
    for j, chunk in enumerate(chunks):
        expected = chunk.mean(0) if chunk.shape[0] else data.mean(0)
        torch.testing.assert_close(q.codebook.detach()[j], expected)
    if n_rows == 40:  # equal chunks: codeword j is the mean of rows 5j .. 5j+4
        torch.testing.assert_close(q.codebook.detach(), data.view(num_codes, 5, 3).mean(1))


# --------------------------------------------------------------------------------------
# 7. Property test over every quantizer class
# --------------------------------------------------------------------------------------


def _build(kind: str, num_codes: int, dim: int) -> object:
    if kind == "diveq":
        return DiVeQ(num_codes, dim)
    if kind == "diveq-detach":
        return DiVeQDetach(num_codes, dim)
    if kind == "residual":
        return ResidualDiVeQ(2, num_codes, dim)
    if kind == "sf":
        return SFDiVeQ(max(num_codes, 2), dim, t_bits=2)
    return SFDiVeQDetach(max(num_codes, 2), dim, t_bits=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["diveq", "diveq-detach", "residual", "sf", "sf-detach"]),
    n_rows=st.integers(1, 20),
    dim=st.integers(1, 6),
    num_codes=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_property_indices_in_range_and_lookup_shape(kind, n_rows, dim, num_codes, seed, scale):
    torch.manual_seed(seed)
    q = _build(kind, num_codes, dim)
    z = torch.randn(n_rows, dim) * scale
    idx = q.indices(z)
    sizes = q.alphabet_sizes
    assert idx.dtype == torch.int64 and idx.shape == (len(sizes), n_rows)
    for row, size in zip(idx, sizes):
        assert ((row >= 0) & (row < size)).all()
    rec = q.lookup(idx)
    assert rec.shape == (n_rows, dim) and torch.isfinite(rec).all()
    assert torch.equal(q.indices(z), idx)
