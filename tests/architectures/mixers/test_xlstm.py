"""The xLSTM 7B mLSTM layer: bookkeeping by hand, the reference initialisation, the layer's
composition, and config errors. (Step == forward, split == whole, gradients, dtypes: the
registry-driven tests in tests/architectures/test_mixer_contract.py.)"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from architectures import build_mixer
from kernels.mlstm import naive_recurrent_mlstm
from tests.conftest import assert_rel_close


@pytest.mark.parametrize("T", [1, 64, 130, 2048])
def test_flops_by_hand(T):
    """d = 64, 4 heads: q, k 32 wide (8 a head), v and the output gate 64 wide (16 a head), L = 64.
    Projections: q, k, v, o, i, f (64 -> 32 + 32 + 64 + 64 + 4 + 4 = 200) and out (64 -> 64).
    Chunkwise core, per head and chunk: QK^T 2 L^2 8, S V 2 L^2 16, Q C and K^T V 2 * 2 L 8 * 16."""
    m = build_mixer("xlstm", 64)
    chunks = -(-T // 64)
    proj = 2 * T * 64 * 200 + 2 * T * 64 * 64
    core = 4 * chunks * (2 * 64 * 64 * 8 + 2 * 64 * 64 * 16 + 4 * 64 * 8 * 16)
    assert m.flops(T) == proj + core


def test_state_size_by_hand():
    """Per head: C is Dqk x Dv, n is Dqk, m one scalar; constant in T."""
    m = build_mixer("xlstm", 64)                  # 4 heads, Dqk 8, Dv 16
    assert m.state_size(0) == m.state_size(10_000) == 4 * (8 * 16 + 8 + 1)
    assert build_mixer("xlstm", 32, num_heads=2).state_size(5) == 2 * (8 * 16 + 8 + 1)


def test_xlstm_7b_shapes():
    """The 7B's 8 heads and width ratios at 1/8 of its d_model (4096 -> 512, to stay cheap): the
    parameter shapes of NX-AI/xLSTM-7b's mlstm_layer divided by 8 (its safetensors index lists
    q, k [2048, 4096], v, ogate, out_proj [4096, 4096], gates [8, 4096] + [8], multihead_norm
    [8, 512]), and the state per layer, 8 * (256 * 512 + 256 + 1) at full size."""
    m = build_mixer("xlstm", 512, num_heads=8)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "q.weight": (256, 512), "k.weight": (256, 512), "v.weight": (512, 512),
        "ogate_preact.weight": (512, 512),
        "igate_preact.weight": (8, 512), "igate_preact.bias": (8,),
        "fgate_preact.weight": (8, 512), "fgate_preact.bias": (8,),
        "multihead_norm.weight": (8 * 64,), "out_proj.weight": (512, 512),
    }
    assert (m.qk_head_dim, m.v_head_dim) == (32, 64)
    assert m.state_size(1) == 8 * (32 * 64 + 32 + 1)


def test_init_follows_the_reference():
    """xlstm-jax layer_v1.py with mLSTMv1_default.yaml: q, k, v ~ N(0, 2 / (5 d)); output-gate,
    input- and forget-gate weights 0; input-gate bias -10; forget-gate bias linspace(3, 6) over
    heads; out_proj ~ N(0, (2 / (num_blocks sqrt d))^2); norm weight 1."""
    d = 256
    m = build_mixer("xlstm", d, num_heads=4)
    for lin in (m.q, m.k, m.v):
        assert lin.bias is None
        assert abs(lin.weight.std().item() / math.sqrt(2 / (5 * d)) - 1) < 0.05
    assert abs(m.out_proj.weight.std().item() / (2 / (32 * math.sqrt(d))) - 1) < 0.05
    for lin in (m.ogate_preact, m.igate_preact, m.fgate_preact):
        assert not lin.weight.any()
    assert torch.equal(m.igate_preact.bias, torch.full((4,), -10.0))
    assert torch.allclose(m.fgate_preact.bias, torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert torch.equal(m.multihead_norm.weight, torch.ones(d))
    m2 = build_mixer("xlstm", d, init_num_blocks=2, igate_bias_init=0.0, fgate_bias_init=(1.0, 1.0))
    assert abs(m2.out_proj.weight.std().item() / (2 / (2 * math.sqrt(d))) - 1) < 0.05
    assert not m2.igate_preact.bias.any() and torch.equal(m2.fgate_preact.bias, torch.ones(4))


def _randomise(m):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * (2.0 if p.dim() == 1 else 0.3))


def test_layer_is_the_7b_composition():
    """xlstm_large mLSTMLayer.forward written out: soft-capped gates, the cell, a per-head
    LayerNorm (not RMSNorm) with a weight, times sigmoid(o), then out_proj."""
    m = build_mixer("xlstm", 32, num_heads=2, gate_soft_cap=3.0, chunk_size=16).double()
    _randomise(m)
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    y, _ = m(x)
    B, T, H = 2, 37, 2
    cap = lambda t: 3.0 * torch.tanh(t / 3.0)  # noqa: E731
    q, k, v = (lin(x).view(B, T, H, -1) for lin in (m.q, m.k, m.v))
    h, _ = naive_recurrent_mlstm(q, k, v, cap(m.igate_preact(x)), cap(m.fgate_preact(x)), eps=1e-6)
    h = F.layer_norm(h, (16,), eps=1e-6).reshape(B, T, 32) * m.multihead_norm.weight
    y_ref = m.out_proj(torch.sigmoid(m.ogate_preact(x)) * h)
    assert_rel_close(y, y_ref, 1e-10, "layer output")


def test_gates_are_soft_capped():
    m = build_mixer("xlstm", 32, num_heads=2).double()
    with torch.no_grad():
        m.igate_preact.bias.fill_(1e4)
        m.fgate_preact.bias.fill_(-1e4)
    *_, i, f = m._inputs(torch.randn(3, 32, dtype=torch.float64))
    assert torch.allclose(i, torch.full_like(i, 15.0)) and torch.allclose(f, torch.full_like(f, -15.0))
    m_off = build_mixer("xlstm", 32, num_heads=2, gate_soft_cap=None).double()
    with torch.no_grad():
        m_off.igate_preact.bias.fill_(100.0)
    i_uncapped = m_off._inputs(torch.zeros(1, 32, dtype=torch.float64))[4]
    assert torch.allclose(i_uncapped, torch.full_like(i_uncapped, 100.0))


@pytest.mark.parametrize("overrides, match", [
    (dict(num_heads=3), r"int\(d_model \* qk_dim_factor\).*16.*num_heads=3"),
    (dict(num_heads=0), r"num_heads must be >= 1"),
    (dict(v_dim_factor=0.01), r"v_dim_factor.*= 0 must be a positive multiple"),
    (dict(chunk_size=0), r"chunk_size must be >= 1"),
    (dict(gate_soft_cap=0.0), r"gate_soft_cap must be > 0 or None"),
    (dict(fgate_bias_init=(1.0, 2.0, 3.0)), r"fgate_bias_init is a \(start, end\) pair"),
    (dict(init_num_blocks=0), r"init_num_blocks must be >= 1"),
], ids=["heads_not_dividing", "zero_heads", "empty_v", "chunk0", "cap0", "fgate_triple", "blocks0"])
def test_config_errors_name_the_fix(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_mixer("xlstm", 32, **overrides)
