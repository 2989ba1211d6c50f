"""Mamba-2 specifics: closed-form FLOPs and state size, mamba_ssm's parameter init, the block's
wiring against a direct computation, grouped B/C, config validation. The contract itself
(step == forward, split == whole, gradients, dtypes) is covered by test_mixer_contract.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from architectures import build_mixer
from kernels.ssd import naive_recurrent_ssd
from tests.conftest import assert_rel_close

SMALL = dict(d_state=8, headdim=8, chunk_size=16)  # d_model 32 -> d_inner 64 -> 8 heads of 8


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("d_model", [32, 64])
def test_defaults_build_at_small_widths(d_model):
    m = build_mixer("mamba2", d_model)
    dims = (m.d_inner, m.nheads, m.headdim, m.d_state, m.ngroups)
    assert dims == (2 * d_model, 2 * d_model // 64, 64, 128, 1)
    assert m.cfg.chunk_size == 256 and m.cfg.d_conv == 4


@pytest.mark.parametrize("kw", [{}, dict(ngroups=2, d_conv=3)], ids=["G1-W4", "G2-W3"])
def test_state_size_closed_form(kw):
    d, cfg = 32, {**SMALL, **kw}
    m = build_mixer("mamba2", d, **cfg)
    G, N, P, W = cfg.get("ngroups", 1), cfg["d_state"], cfg["headdim"], cfg.get("d_conv", 4)
    d_inner = 2 * d
    H = d_inner // P
    conv_dim = d_inner + 2 * G * N  # x, B and C all go through the conv
    expected = (W - 1) * conv_dim + H * P * N
    state = m.init_state(3)
    assert state["conv"].shape == (3, conv_dim, W - 1) and state["ssm"].shape == (3, H, P, N)
    for T in (0, 1, 1000):
        assert m.state_size(T) == expected


@pytest.mark.parametrize("T", [1, 16, 37, 1000], ids=lambda T: f"T{T}")
@pytest.mark.parametrize("kw", [{}, dict(ngroups=2)], ids=["G1", "G2"])
def test_flops_closed_form(T, kw):
    """By hand from the paper's shapes: projections, depthwise conv, and per chunk of q tokens
    the four SSD matmuls (C B^T per group, diagonal blocks, chunk states, state -> output) plus
    the inter-chunk state update."""
    d, cfg = 32, {**SMALL, **kw}
    m = build_mixer("mamba2", d, **cfg)
    G, N, P, W, Qc = cfg.get("ngroups", 1), cfg["d_state"], cfg["headdim"], 4, cfg["chunk_size"]
    d_inner = 2 * d
    H = d_inner // P
    in_proj = d * (2 * d_inner + 2 * G * N + H)  # z, x, B, C, dt
    out_proj = d_inner * d
    conv = (d_inner + 2 * G * N) * W
    Q = min(Qc, T)
    chunks = [Q] * (T // Q) + ([T % Q] if T % Q else [])
    assert sum(chunks) == T and len(chunks) == ceil_div(T, Q)
    ssd = sum(2 * q * q * G * N + 2 * q * q * H * P + 2 * q * H * P * N + 2 * H * P * N + 2 * q * H * P * N
              for q in chunks)
    assert m.flops(T) == 2 * T * (in_proj + out_proj + conv) + ssd


def test_parameter_init_follows_mamba_ssm():
    torch.manual_seed(0)
    m = build_mixer("mamba2", 512, headdim=4, d_state=8)  # 256 heads: enough draws for the ranges
    H, d_inner, conv_dim, W = 256, 1024, 1024 + 16, 4
    shapes = {"in_proj.weight": (2 * d_inner + 16 + H, 512), "conv1d.weight": (conv_dim, 1, W),
              "conv1d.bias": (conv_dim,), "dt_bias": (H,), "A_log": (H,), "D": (H,),
              "norm.weight": (d_inner,), "out_proj.weight": (512, d_inner)}
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == shapes  # no in/out biases
    A = torch.exp(m.A_log.detach())  # A = -exp(A_log), exp(A_log) ~ U(1, 16)
    assert A.min() >= 1 and A.max() <= 16 and A.min() < 2 and A.max() > 15
    dt = F.softplus(m.dt_bias.detach())  # dt_bias = softplus^-1(dt), log dt ~ U(log 1e-3, log 1e-1)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert abs(dt.log().mean().item() - math.log(1e-2)) < 0.3  # log-uniform: mean log = log 0.01
    assert torch.equal(m.D.detach(), torch.ones(H))
    assert torch.equal(m.norm.weight.detach(), torch.ones(d_inner))
    bound = 1 / math.sqrt(W)  # PyTorch Conv1d default init, fan_in = d_conv for a depthwise conv
    assert m.conv1d.weight.abs().max() <= bound and m.conv1d.bias.abs().max() <= bound
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.dt_bias, m.A_log, m.D))


def test_dt_init_floor():
    m = build_mixer("mamba2", 32, **SMALL, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    assert_rel_close(F.softplus(m.dt_bias.detach().double()), torch.full((8,), 1e-4, dtype=torch.float64),
                     1e-6, "floored dt")


@pytest.mark.parametrize("T", [1, 7, 40], ids=lambda T: f"T{T}")
def test_block_matches_direct_computation(T):
    """The wiring, written out with nn.Conv1d's own forward and the token-by-token SSD: order of
    [z, x, B, C, dt], conv orientation, softplus(dt + dt_bias), D skip, norm(y * silu(z))."""
    m = build_mixer("mamba2", 32, **SMALL, ngroups=2).double()
    u = torch.randn(2, T, 32, dtype=torch.float64)
    with torch.no_grad():
        y, state = m(u)
        zxbcdt = u @ m.in_proj.weight.T
        z, xBC, dt = zxbcdt.split([64, 64 + 2 * 2 * 8, 8], dim=-1)
        xBC = F.silu(m.conv1d(F.pad(xBC.transpose(1, 2), (3, 0))).transpose(1, 2))  # left pad: causal
        x, B, C = xBC.split([64, 16, 16], dim=-1)
        ys, h = naive_recurrent_ssd(x.unflatten(-1, (8, 8)), F.softplus(dt + m.dt_bias), -torch.exp(m.A_log),
                                    B.unflatten(-1, (2, 8)), C.unflatten(-1, (2, 8)), m.D)
        g = ys.flatten(-2) * F.silu(z)
        g = g.unflatten(-1, (2, 32))  # group-wise RMSNorm, group size d_inner / ngroups
        g = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * m.norm.weight
        expected = g @ m.out_proj.weight.T
    assert_rel_close(y, expected, 1e-10, "mamba2 block")
    assert_rel_close(state["ssm"], h, 1e-10, "ssm state")


def test_grouped_step_equals_forward_and_chunk_size_is_invisible():
    m = build_mixer("mamba2", 32, **SMALL, ngroups=4).double()
    u = torch.randn(2, 21, 32, dtype=torch.float64)
    with torch.no_grad():
        y, s = m(u)
        m.cfg.chunk_size = 5
        y5, s5 = m(u)
        state, ys = m.init_state(2, dtype=torch.float64), []
        for t in range(21):
            y_t, state = m.step(u[:, t], state)
            ys.append(y_t)
    assert_rel_close(y5, y, 1e-10, "chunk 5 vs 16")
    assert_rel_close(s5["ssm"], s["ssm"], 1e-10, "state, chunk 5 vs 16")
    assert_rel_close(torch.stack(ys, 1), y, 1e-10, "step vs forward, 4 groups")


@pytest.mark.parametrize("kw,match", [
    (dict(headdim=48), r"d_inner = expand \* d_model = 2 \* 32 = 64 is not divisible by headdim=48"),
    (dict(headdim=8, ngroups=3), r"nheads = 8 is not divisible by ngroups=3"),
    (dict(chunk_size=0), r"chunk_size=0 must be >= 1"),
    (dict(A_init_range=(0.0, 16.0)), r"A_init_range"),
    (dict(dt_min=0.2, dt_max=0.1), r"dt_min <= dt_max"),
], ids=["headdim", "ngroups", "chunk_size", "A_init_range", "dt_range"])
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        build_mixer("mamba2", 32, **kw)
