"""Gated DeltaNet: closed-form FLOPs and state size, fla's defaults and init rules, config errors.
(Step == forward, split == whole, gradients and dtypes: tests/architectures/test_mixer_contract.py.)"""
from __future__ import annotations

import math

import pytest
import torch

from architectures import MIXERS, build_mixer
from architectures.mixers.gated_deltanet import resolve_heads
from arena.registry import UnknownNameError
from tests.conftest import assert_rel_close


def test_state_size_closed_form():
    """Conv buffer: the last W-1 inputs of the q, k, v channels (H K + H K + H V);
    memory: one K x V matrix per head. Neither grows with T."""
    H, K, V, W = 2, 16, 32, 4
    m = build_mixer("gated_deltanet", 64, num_heads=H, head_dim=K, expand_v=2.0)
    expected = (H * K + H * K + H * V) * (W - 1) + H * K * V
    for T in (0, 1, 1000):
        assert m.state_size(T) == expected == 128 * 3 + 2 * 16 * 32
    state = m.init_state(3)
    assert set(state) == {"conv", "ssm"}
    assert state["conv"].shape == (3, 2 * H * K + H * V, W - 1)
    assert state["ssm"].shape == (3, H, K, V) and state["ssm"].dtype == torch.float32


@pytest.mark.parametrize("T", [1, 63, 64, 130, 2048], ids=lambda t: f"T{t}")
def test_flops_closed_form(T):
    d, H, K, V, W = 64, 2, 16, 32, 4
    m = build_mixer("gated_deltanet", d, num_heads=H, head_dim=K, expand_v=2.0)
    proj_in = 2 * T * d * (H * K + H * K + H * V + H * V + H + H)  # q, k, v, output gate, a, b
    proj_out = 2 * T * (H * V) * d
    conv = 2 * W * (2 * H * K + H * V) * T
    C = min(64, T)                 # chunk length; the last chunk is padded to C
    N = math.ceil(T / C)
    per_chunk = (
        2 * C * C * K               # beta K K^T (the triangular system)
        + 2 * C * C * K             # Q K^T (intra-chunk attention)
        + 2 * C * C * (K + V)       # (I + A)^{-1} [beta exp(gamma) K | beta V] -> W, U_v
        + 2 * C * C * V             # (Q K^T * D) U
        + 2 * C * K * V * 3         # W S0, (K decay)^T U, (Q exp(gamma)) S0
    )
    assert m.flops(T) == proj_in + proj_out + conv + H * N * per_chunk


def test_fla_defaults_at_2048_and_small_widths():
    # fla's layer at hidden 2048: 6 heads of 256 key channels, expand_v 2 (not built: 25M params)
    assert resolve_heads(2048, None, None) == (6, 256)
    assert resolve_heads(1024, None, None) == (3, 256)
    cfg = MIXERS["gated_deltanet"].Config()
    defaults = (cfg.expand_v, cfg.conv_size, cfg.norm_eps, cfg.chunk_size, cfg.conv_bias)
    assert defaults == (2.0, 4, 1e-5, 64, False)
    for d, heads in ((32, (1, 24, 48)), (64, (1, 48, 96)), (512, (2, 192, 384))):
        m = build_mixer("gated_deltanet", d)
        assert (m.num_heads, m.head_k_dim, m.head_v_dim) == heads
    m = build_mixer("gated_deltanet", 64, num_heads=4)
    assert (m.num_heads, m.head_k_dim, m.head_v_dim) == (4, 12, 24)  # key_dim 0.75 d split 4 ways
    m = build_mixer("gated_deltanet", 64, head_dim=8)
    assert (m.num_heads, m.head_k_dim, m.head_v_dim) == (6, 8, 16)


def test_init_follows_fla():
    """A ~ U(0, 16) as A_log = log A; dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1];
    conv U(-1/sqrt(W), 1/sqrt(W)) and Linear U(-1/sqrt(d), 1/sqrt(d)) (PyTorch defaults, which
    fla's layer keeps); output norm weight 1."""
    d, H = 256, 512
    m = build_mixer("gated_deltanet", d, num_heads=H, head_dim=1)  # many heads: a sample of each rule
    A = m.A_log.detach().exp()
    assert A.min() > 0 and A.max() < 16 and abs(A.mean().item() - 8) < 1.0
    dt = torch.nn.functional.softplus(m.dt_bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert abs(dt.log().mean().item() - math.log(1e-2)) < 0.3  # log-uniform: mean log dt = log 0.01
    assert m.conv_weight.abs().max() <= 1 / math.sqrt(4) and m.conv_bias is None
    assert m.in_proj.weight.abs().max() <= 1 / math.sqrt(d) and m.in_proj.bias is None
    assert m.o_proj.bias is None and torch.equal(m.o_norm.weight, torch.ones(2))  # head_v_dim 2
    assert m.o_norm.norm_before_gate and m.o_norm.eps == 1e-5


def test_gates():
    m = build_mixer("gated_deltanet", 32, num_heads=2).double()
    a, b = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    g, beta = m._gates(a, b)
    A, dt = m.A_log.exp(), torch.nn.functional.softplus(a + m.dt_bias)
    assert_rel_close(g, -A * dt, 1e-12, "g")
    assert (g < 0).all() and (beta > 0).all() and (beta < 1).all()
    m2 = build_mixer("gated_deltanet", 32, num_heads=2, allow_neg_eigval=True).double()
    assert_rel_close(m2._gates(a, b)[1], 2 * torch.sigmoid(b), 1e-12, "beta")


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="expand_v"):
        build_mixer("gated_deltanet", 64, head_dim=8, expand_v=1.3)  # 10.4 value channels
    with pytest.raises(ValueError, match="num_heads"):
        build_mixer("gated_deltanet", 32, num_heads=100)  # 24 key channels cannot make 100 heads
    with pytest.raises(ValueError, match="conv_size"):
        build_mixer("gated_deltanet", 32, conv_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        build_mixer("gated_deltanet", 32, chunk_size=0)
    with pytest.raises(ValueError, match="head_dim"):
        build_mixer("gated_deltanet", 32, head_dim=0)
    with pytest.raises(UnknownNameError, match="head_dim"):
        build_mixer("gated_deltanet", 32, head_dims=8)
