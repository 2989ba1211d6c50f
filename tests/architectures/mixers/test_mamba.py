"""Mamba-1 specifics: closed-form FLOPs and state size, mamba_ssm's parameter init, the block's
wiring against a direct computation, config validation. The contract itself (step == forward,
split == whole, gradients, dtypes) is covered by test_mixer_contract.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from architectures import build_mixer
from kernels.selective_scan import naive_recurrent_selective_scan
from tests.conftest import assert_rel_close

SMALL = dict(d_state=8, chunk_size=16)  # d_model 32 -> d_inner 64, dt_rank 2


@pytest.mark.parametrize("d_model", [32, 64, 100])
def test_defaults_build_at_small_widths(d_model):
    m = build_mixer("mamba", d_model)
    assert (m.d_inner, m.d_state, m.dt_rank) == (2 * d_model, 16, math.ceil(d_model / 16))
    assert m.cfg.d_conv == 4 and m.cfg.chunk_size == 64


@pytest.mark.parametrize("kw", [{}, dict(d_conv=2, expand=1.5, d_state=3)], ids=["W4-E2-N8", "W2-E1.5-N3"])
def test_state_size_closed_form(kw):
    d, cfg = 32, {**SMALL, **kw}
    m = build_mixer("mamba", d, **cfg)
    W, N, E = cfg.get("d_conv", 4), cfg["d_state"], int(cfg.get("expand", 2) * d)
    state = m.init_state(3)
    assert state["conv"].shape == (3, E, W - 1) and state["ssm"].shape == (3, E, N)
    for T in (0, 1, 1000):
        assert m.state_size(T) == E * (W - 1) + E * N


@pytest.mark.parametrize("T", [1, 16, 37, 1000], ids=lambda T: f"T{T}")
@pytest.mark.parametrize("kw", [{}, dict(dt_rank=5, d_conv=3)], ids=["auto-rank", "rank5-W3"])
def test_flops_closed_form(T, kw):
    """By hand from the paper's shapes (Gu & Dao 2023, section 3.4 and Figure 3), per token:
    in_proj d -> 2E, conv W taps per channel, x_proj E -> R + 2N, dt_proj R -> E, out_proj
    E -> d (2 FLOPs per weight each), and per (channel, state) pair delta A, (delta u) B, the
    update multiply-add and the readout multiply-add: 6 E N."""
    d, cfg = 32, {**SMALL, **kw}
    m = build_mixer("mamba", d, **cfg)
    E, N, W, R = 2 * d, cfg["d_state"], cfg.get("d_conv", 4), cfg.get("dt_rank", math.ceil(d / 16))
    weights = d * 2 * E + E * W + E * (R + 2 * N) + R * E + E * d
    assert m.flops(T) == T * (2 * weights + 6 * E * N)


def test_parameter_init_follows_mamba_ssm():
    torch.manual_seed(0)
    d, E, N, W = 256, 512, 16, 4
    m = build_mixer("mamba", d)
    R = 16  # ceil(256 / 16)
    shapes = {"in_proj.weight": (2 * E, d), "conv1d.weight": (E, 1, W), "conv1d.bias": (E,),
              "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R), "dt_proj.bias": (E,),
              "A_log": (E, N), "D": (E,), "out_proj.weight": (d, E)}
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == shapes  # no in/out biases
    # S4D-real: A = -exp(A_log) = -(n + 1) for every channel
    assert torch.equal(m.A_log.detach(), torch.log(torch.arange(1.0, N + 1)).repeat(E, 1))
    assert torch.equal(m.D.detach(), torch.ones(E))
    s = R ** -0.5  # dt_proj.weight ~ U(-s, s), s = dt_scale / sqrt(dt_rank)
    w = m.dt_proj.weight.detach()
    assert w.abs().max() <= s and w.abs().max() > 0.95 * s and abs(w.mean()) < 0.05 * s
    dt = F.softplus(m.dt_proj.bias.detach())  # bias = softplus^-1(dt), log dt ~ U(log 1e-3, log 1e-1)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert abs(dt.log().mean().item() - math.log(1e-2)) < 0.3  # log-uniform: mean log = log 0.01
    bound = 1 / math.sqrt(W)  # PyTorch Conv1d default init, fan_in = d_conv for a depthwise conv
    assert m.conv1d.weight.abs().max() <= bound and m.conv1d.bias.abs().max() <= bound
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D))
    assert getattr(m.dt_proj.bias, "_no_reinit", False)


def test_dt_init_constant_scale_and_floor():
    m = build_mixer("mamba", 32, **SMALL, dt_init="constant", dt_scale=3.0, dt_min=1e-6, dt_max=1e-5,
                    dt_init_floor=1e-4)
    assert torch.equal(m.dt_proj.weight.detach(), torch.full((64, 2), 3.0 / math.sqrt(2)))
    floor = torch.full((64,), 1e-4, dtype=torch.float64)
    assert_rel_close(F.softplus(m.dt_proj.bias.detach().double()), floor, 1e-6, "floored dt")


@pytest.mark.parametrize("T", [1, 7, 40], ids=lambda T: f"T{T}")
def test_block_matches_direct_computation(T):
    """The wiring, written out with nn.Conv1d's own forward and the token-by-token scan: order of
    [x, z] and [dt, B, C], conv orientation, softplus(dt_proj(dt)), D skip, y * silu(z)."""
    m = build_mixer("mamba", 32, **SMALL).double()
    u = torch.randn(2, T, 32, dtype=torch.float64)
    with torch.no_grad():
        x, z = (u @ m.in_proj.weight.T).split([64, 64], dim=-1)
        x = F.silu(m.conv1d(F.pad(x.transpose(1, 2), (3, 0))).transpose(1, 2))  # left pad: causal
        dt, B, C = (x @ m.x_proj.weight.T).split([2, 8, 8], dim=-1)
        delta = F.softplus(m.dt_proj(dt))
        ys, h = naive_recurrent_selective_scan(x, delta, -torch.exp(m.A_log), B, C)
        expected = ((ys + m.D * x) * F.silu(z)) @ m.out_proj.weight.T
        y, state = m(u)
    assert_rel_close(y, expected, 1e-10, "mamba block")
    assert_rel_close(state["ssm"], h, 1e-10, "ssm state")


def test_chunk_size_is_invisible():
    m = build_mixer("mamba", 32, **SMALL).double()
    u = torch.randn(2, 21, 32, dtype=torch.float64)
    with torch.no_grad():
        y, s = m(u)
        m.cfg.chunk_size = 5
        y5, s5 = m(u)
    assert_rel_close(y5, y, 1e-10, "chunk 5 vs 16")
    assert_rel_close(s5["ssm"], s["ssm"], 1e-10, "state, chunk 5 vs 16")


@pytest.mark.parametrize("kw,match", [
    (dict(expand=1.01), r"d_inner = expand \* d_model = 1.01 \* 32 = 32.32 must be a positive whole number"),
    (dict(d_state=0), r"d_state=0 must be >= 1"),
    (dict(chunk_size=0), r"chunk_size=0 must be >= 1"),
    (dict(dt_rank=0), r"dt_rank=0 must be >= 1 or 'auto'"),
    (dict(dt_min=0.2, dt_max=0.1), r"dt_min <= dt_max"),
    (dict(dt_init_floor=0.0), r"dt_init_floor=0.0 must be > 0"),
    (dict(dt_init="uniform"), r"dt_init='uniform'"),
], ids=["expand", "d_state", "chunk_size", "dt_rank", "dt_range", "dt_floor", "dt_init"])
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        build_mixer("mamba", 32, **kw)
