"""Tests of the baseline quantizers of ``models.baselines`` (STE, EMA, rotation trick,
Gumbel-softmax, NSVQ): forward values, gradients, EMA statistics, the rotation, and the
purity of the coding path."""

from __future__ import annotations

import math

import pytest
import torch
from snapshots import assert_same_snapshot

from diveq_codec.models.baselines import (
    BASELINES,
    EMAQuantizer,
    GumbelQuantizer,
    NSVQQuantizer,
    RotationTrickQuantizer,
    STEQuantizer,
    gumbel_temperature,
    rotate_to,
)
from diveq_codec.models.codebook import nearest_codeword

K, D, N = 12, 6, 40


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    q = BASELINES[name](K, D)
    q.init_from_data(torch.randn(200, D, generator=_gen(seed + 1)))
    return q


def _z(seed: int = 5, n: int = N) -> torch.Tensor:
    return torch.randn(n, D, generator=_gen(seed))


def _snapshot(q: torch.nn.Module) -> dict:
    snap = {k: v.detach().clone() for k, v in q.state_dict().items()}
    snap["usage"] = q.dead_codes.usage.clone()
    snap["steps"] = q.dead_codes.steps
    snap["recent"] = None if q.dead_codes.recent is None else q.dead_codes.recent.clone()
    snap["temperature"] = getattr(q, "temperature", None)
    return snap


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_eval_forward_is_the_nearest_codeword(name: str) -> None:
    q = _make(name).eval()
    z = _z()
    out = q(z)
    idx = nearest_codeword(z, q.codebook)
    assert out.indices.shape == (1, N)
    assert torch.equal(out.indices[0], idx)
    torch.testing.assert_close(out.z_q, q.codebook[idx], atol=1e-6, rtol=1e-6)
    assert q.alphabet_sizes == [K]
    assert torch.is_tensor(q.aux_loss) and q.aux_loss.dim() == 0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_gradient_reaches_the_encoder(name: str) -> None:
    q = _make(name).train()
    z = _z().requires_grad_()
    g = torch.randn(N, D, generator=_gen(9))
    out = q(z)
    ((out.z_q * g).sum() + q.aux_loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0
    if name != "ema":  # the EMA codebook is not trained by gradients
        assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    else:
        assert not q.codebook.requires_grad
        assert all(p is not q.codebook for p in q.parameters())


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_coding_path_is_pure(name: str) -> None:
    q = _make(name).train()
    q(_z(seed=1))  # some training state to disturb
    before = _snapshot(q)
    rng = torch.get_rng_state()
    z = _z(seed=2)
    idx = q.indices(z)
    rec = q.lookup(idx)
    assert torch.equal(idx, q.indices(z))
    assert torch.equal(idx[0], nearest_codeword(z, q.codebook))
    torch.testing.assert_close(rec, q.codebook.detach()[idx[0]])
    assert_same_snapshot(before, _snapshot(q))
    assert torch.equal(rng, torch.get_rng_state())


def test_ste_values_and_losses() -> None:
    q = _make("ste").train()
    z = _z().requires_grad_()
    out = q(z)
    c = q.codebook[out.indices[0]]
    torch.testing.assert_close(out.z_q, c.detach(), atol=1e-6, rtol=0)
    mse = ((z - c) ** 2).mean()
    torch.testing.assert_close(q.aux_loss, 1.25 * mse)
    g = torch.randn(N, D, generator=_gen(3))
    (out.z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g)  # straight through: identity
    assert q.codebook.grad is None or q.codebook.grad.abs().sum() == 0
    q.codebook.grad = None
    q(z.detach())
    q.aux_loss.backward()
    # codebook loss only: d/dc mean(‖sg(z) − c‖²) = 2(c − z)/(N·D) summed over assigned rows
    idx = out.indices[0]
    expected = torch.zeros_like(q.codebook)
    expected.index_add_(0, idx, 2 * (c.detach() - z.detach()) / (N * D))
    torch.testing.assert_close(q.codebook.grad, expected)


def test_ema_moves_codewords_towards_assigned_means() -> None:
    q = _make("ema").train()
    z = _z(n=400)
    old = q.codebook.clone()
    count0, sum0 = q.ema_count.clone(), q.ema_sum.clone()
    out = q(z)
    idx = out.indices[0]
    assert torch.equal(idx, nearest_codeword(z, old))
    torch.testing.assert_close(out.z_q, old[idx])  # forward used the codebook before the update
    used = torch.unique(idx)
    assert used.numel() > 3
    for k in used.tolist():
        mean = z[idx == k].mean(0)
        assert torch.linalg.vector_norm(q.codebook[k] - mean) < torch.linalg.vector_norm(old[k] - mean)
    # the exact update: n ← γn + (1−γ)count, m ← γm + (1−γ)sum, c = m / smoothed(n)
    counts = torch.bincount(idx, minlength=K).float()
    sums = torch.zeros(K, D).index_add_(0, idx, z)
    n = 0.99 * count0 + 0.01 * counts
    m = 0.99 * sum0 + 0.01 * sums
    smoothed = (n + 1e-5) / (n.sum() + K * 1e-5) * n.sum()
    torch.testing.assert_close(q.ema_count, n)
    torch.testing.assert_close(q.codebook, m / smoothed[:, None])
    # unused codes stay where they were (m/n invariant under decay, up to smoothing)
    unused = torch.tensor([k for k in range(K) if k not in used.tolist()])
    if unused.numel():
        torch.testing.assert_close(q.codebook[unused], old[unused], atol=1e-3, rtol=1e-3)
    # eval mode: no update
    q.eval()
    frozen = q.codebook.clone()
    q(z)
    assert torch.equal(frozen, q.codebook)


def test_ema_dead_code_replacement_resets_statistics() -> None:
    q = EMAQuantizer(K, D, replace_interval=2)
    q.init_from_data(_z(seed=11, n=100))
    q.train()
    z = _z(seed=12) * 0.01 + q.codebook[0].detach()  # everything goes to one code
    q(z)
    q(z)
    replaced = q.replace_dead_codes(None)
    assert replaced >= K - 1
    dead = [k for k in range(K) if k != 0]
    torch.testing.assert_close(q.ema_count[dead], torch.ones(len(dead)))
    torch.testing.assert_close(q.ema_sum[dead], q.codebook[dead])


def test_rotation_maps_direction_onto_codeword_with_right_norm() -> None:
    torch.manual_seed(0)
    z = torch.randn(50, D, dtype=torch.float64)
    c = torch.randn(50, D, dtype=torch.float64) * 3
    z_hat = z / z.norm(dim=1, keepdim=True)
    c_hat = c / c.norm(dim=1, keepdim=True)
    # R ẑ = ĉ exactly (up to rounding): rotate the unit vector with scale 1
    unit_c = c_hat.clone()
    torch.testing.assert_close(rotate_to(z_hat, unit_c), c_hat, atol=1e-12, rtol=0)
    out = rotate_to(z, c)
    torch.testing.assert_close(out, c, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.norm(dim=1), c.norm(dim=1))
    # the gradient is (‖c‖/‖z‖ R)ᵀ g with R = I − 2rrᵀ + 2ĉẑᵀ orthogonal
    zz = z.clone().requires_grad_()
    g = torch.randn(50, D, dtype=torch.float64)
    (rotate_to(zz, c) * g).sum().backward()
    for i in range(5):
        r = (z_hat[i] + c_hat[i]) / (z_hat[i] + c_hat[i]).norm()
        R = torch.eye(D, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(c_hat[i], z_hat[i])
        torch.testing.assert_close(R @ R.t(), torch.eye(D, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(R @ z_hat[i], c_hat[i], atol=1e-12, rtol=0)
        scale = c[i].norm() / z[i].norm()
        torch.testing.assert_close(zz.grad[i], scale * R.t() @ g[i])


def test_rotation_quantizer_forward_and_losses() -> None:
    q = _make("rotation").train()
    z = _z().requires_grad_()
    out = q(z)
    c = q.codebook[out.indices[0]]
    torch.testing.assert_close(out.z_q, c.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q.aux_loss, 1.25 * ((z - c) ** 2).mean())
    (out.z_q.sum()).backward()
    assert q.codebook.grad is None or q.codebook.grad.abs().sum() == 0  # only the losses train c


def test_gumbel_forward_is_a_one_hot_codeword_lookup() -> None:
    q = _make("gumbel").train()
    for t in (1.0, 0.3, 0.1):
        q.set_temperature(t)
        z = _z(seed=int(t * 10)).requires_grad_()
        torch.manual_seed(7)
        out = q(z)
        idx = out.indices[0]
        torch.testing.assert_close(out.z_q, q.codebook[idx].detach(), atol=1e-5, rtol=1e-5)
        out.z_q.pow(2).sum().backward()
        assert z.grad.abs().sum() > 0
    # the sample follows the Gumbel-max rule on the distance logits
    q.set_temperature(0.5)
    z = _z(seed=3)
    torch.manual_seed(8)
    idx = q(z).indices[0]
    torch.manual_seed(8)
    u = torch.rand(N, K).clamp_(1e-10, 1.0 - 1e-7)
    logits = -torch.cdist(z, q.codebook.detach()) ** 2 / 0.5 - torch.log(-torch.log(u))
    assert (idx == logits.argmax(1)).float().mean() > 0.95  # ties only from float rounding
    # τ divides the distances too: a cold sample is (almost always) the nearest codeword
    q.set_temperature(1e-3)
    assert (q(z).indices[0] == nearest_codeword(z, q.codebook)).float().mean() > 0.95
    with pytest.raises(ValueError):
        q.set_temperature(0.0)


def test_gumbel_temperature_schedule() -> None:
    assert gumbel_temperature(0.0) == pytest.approx(1.0)
    assert gumbel_temperature(1.0) == pytest.approx(0.1)
    assert gumbel_temperature(0.5) == pytest.approx(math.sqrt(0.1))
    assert gumbel_temperature(2.0) == pytest.approx(0.1)


def test_nsvq_error_norm_equals_quantization_error() -> None:
    q = _make("nsvq").train()
    z = _z().requires_grad_()
    out = q(z)
    c = q.codebook[out.indices[0]].detach()
    torch.testing.assert_close((out.z_q - z).norm(dim=1), (z - c).norm(dim=1), atol=1e-5, rtol=1e-5)
    # random direction: not the codeword direction
    assert not torch.allclose(out.z_q, c, atol=1e-3)
    out.z_q.sum().backward()
    assert q.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [STEQuantizer, RotationTrickQuantizer, GumbelQuantizer, NSVQQuantizer])
def test_dead_code_replacement_resets_adam_rows(cls) -> None:
    torch.manual_seed(0)
    q = cls(K, D, replace_interval=2)
    q.init_from_data(_z(seed=11, n=100))
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    z = _z(seed=12) * 0.01 + q.codebook[0].detach()
    for _ in range(2):
        out = q(z)
        loss = out.z_q.pow(2).sum() + q.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    dead = torch.nonzero(q.dead_codes.usage == 0).flatten()
    assert dead.numel() >= 1
    before = q.codebook.detach().clone()
    assert q.replace_dead_codes(opt) == dead.numel()
    state = opt.state[q.codebook]
    assert torch.all(state["exp_avg"][dead] == 0) and torch.all(state["exp_avg_sq"][dead] == 0)
    assert not torch.equal(q.codebook[dead], before[dead])  # re-seeded from recent latents
