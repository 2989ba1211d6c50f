"""Triton short convolution against the naive reference (run in float64 on the same values):
output, final state and the gradients of x, weight, bias and the initial state; the decode step
against the naive step; tilings that split T and C across programs; poisoned allocations.

The conv has no gates, so the "near 0 / near 1" axis of the other ops becomes the activation
(silu / linear) and the width W (2, 3, 4). Two tilings stand in for two chunk sizes: small
[16, 16] tiles (many programs, every tile edge and halo crossing) and the first autotune config.
"""
from __future__ import annotations

import pytest
import torch

from kernels.short_conv import causal_conv1d, causal_conv1d_step
from tests.conftest import assert_rel_close, assert_run_close

pytest.importorskip("triton")
from kernels.short_conv.conv import causal_conv1d_triton
from kernels.short_conv.recurrent import causal_conv1d_step_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: a W-term sum and its gradients in fp32 sit at ~1e-7. fp16: each tensor is rounded once to
# fp16 at the end (half-ulp 2.4e-4 relative) and the inputs were rounded before the reference saw
# them, so only the output rounding counts; dweight/dbias are sums over B*T of fp32 products,
# rounded once to fp16.
TOL = {torch.float32: {"out": 1e-5, "grad": 1e-5}, torch.float16: {"out": 2e-3, "grad": 2e-3}}
SMALL = ((16, 32, 1), (16, 32, 1), 32)  # fwd tile, bwd tile, rows per backward program (2 tiles)
SPLIT_C = ((16, 16, 1), (16, 16, 1), 32)  # C = 20 over two channel blocks, the second ragged


def _inputs(B, T, C, W, dtype, bias=True, state=True):
    mk = lambda *s: torch.randn(*s, device=DEVICE).to(dtype)
    return mk(B, T, C), mk(C, W) / W ** 0.5, mk(C) if bias else None, mk(B, C, W - 1) if state else None


def _run(fn, x, weight, bias, state, activation, gy, gs, **kw):
    """(y, final state, {name: grad}) of loss = <y, gy> + <final state, gs>."""
    named = {"x": x, "weight": weight, "bias": bias, "state": state}
    leaves = {k: v.detach().clone().requires_grad_() for k, v in named.items() if v is not None}
    y, s = fn(*(leaves.get(k) for k in named), activation=activation, **kw)
    ((y.double() * gy.double()).sum() + (s.double() * gs.double()).sum()).backward()
    return y, s, {k: v.grad for k, v in leaves.items()}


def _check(B, T, C, W, dtype, activation="silu", bias=True, state=True, blocks=SMALL, x_view=False):
    x, weight, b, s = _inputs(B, T, C, W, dtype, bias, state)
    if x_view:  # a channel slice of a wider projection output, as the mixers pass it
        x = torch.cat([torch.randn_like(x[..., :3]), x, torch.randn_like(x[..., :5])], -1)[..., 3:3 + C]
        assert not x.is_contiguous()
    gy, gs = torch.randn(B, T, C, device=DEVICE), torch.randn(B, C, W - 1, device=DEVICE)
    got = _run(causal_conv1d_triton, x, weight, b, s, activation, gy, gs, _blocks=blocks)
    d = lambda t: t.double() if t is not None else None
    ref = _run(causal_conv1d, d(x), d(weight), d(b), d(s), activation, gy, gs)
    assert got[0].dtype == x.dtype and got[1].dtype == (s.dtype if s is not None else x.dtype)
    assert set(got[2]) == set(ref[2])
    assert_run_close(got, ref, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("T", [1, 63, 130], ids=lambda t: f"T{t}")
def test_conv_matches_reference(T, dtype, poison_empty):
    _check(2, T, 24, 4, dtype)


@pytest.mark.parametrize("T", [2, 130], ids=lambda t: f"T{t}")
def test_conv_autotune_tiling(T, poison_empty):
    """The first autotune config ([64, 128] forward tiles) and the launcher's split heuristic."""
    _check(2, T, 24, 4, torch.float32, blocks=None)


@pytest.mark.parametrize("W,activation,bias,state", [(2, None, False, False), (3, "silu", False, True),
                                                     (2, "silu", True, True)],
                         ids=["W2-linear-nobias-nostate", "W3-silu-nobias", "W2-silu"])
def test_conv_widths_and_options(W, activation, bias, state, poison_empty):
    _check(1, 63, 20, W, torch.float32, activation, bias, state, blocks=SPLIT_C)


def test_conv_channel_strided_view(poison_empty):
    _check(2, 63, 24, 4, torch.float16, x_view=True)


def test_weight_gradient_is_bitwise_reproducible():
    x, weight, b, s = _inputs(2, 40, 24, 4, torch.float32)
    gy, gs = torch.randn(2, 40, 24, device=DEVICE), torch.randn(2, 24, 3, device=DEVICE)
    g1 = _run(causal_conv1d_triton, x, weight, b, s, "silu", gy, gs, _blocks=SMALL)[2]
    g2 = _run(causal_conv1d_triton, x, weight, b, s, "silu", gy, gs, _blocks=SMALL)[2]
    assert torch.equal(g1["weight"], g2["weight"]) and torch.equal(g1["bias"], g2["bias"])


@pytest.mark.parametrize("dtype,W", [(torch.float32, 4), (torch.float16, 4), (torch.float32, 2)],
                         ids=["fp32-W4", "fp16-W4", "fp32-W2"])
def test_step_matches_reference_and_updates_in_place(dtype, W, poison_empty):
    B, C, T = 2, 40, 3
    x, weight, b, s = _inputs(B, T, C, W, dtype)
    s = s.float()  # the mixers keep the conv state in fp32 while activations are in half precision
    s_ref, s_new, s_inplace = s.double(), s, s.clone()
    for t in range(T):
        x_t = x[:, t]
        y_ref, s_ref = causal_conv1d_step(x_t.double(), weight.double(), b.double(), s_ref, "silu")
        y, s_new = causal_conv1d_step_triton(x_t, weight, b, s_new, "silu")
        y2, out = causal_conv1d_step_triton(x_t, weight, b, s_inplace, "silu", out_state=s_inplace)
        assert out.data_ptr() == s_inplace.data_ptr() and torch.equal(y, y2) and torch.equal(s_new, s_inplace)
        assert y.dtype == dtype and s_new.dtype == torch.float32
        assert_rel_close(y, y_ref, TOL[dtype]["out"], f"step {t} output")
        assert_rel_close(s_new, s_ref, TOL[dtype]["out"], f"step {t} state")
    _, s_full = causal_conv1d_triton(x, weight, b, s, "silu")  # steps chain like the full segment
    assert torch.equal(s_full, s_new)


def test_bad_inputs_raise_clear_errors():
    x, weight, b, s = _inputs(1, 5, 8, 4, torch.float32)
    with pytest.raises(ValueError, match=r"weight must be \[C=8, W\]"):
        causal_conv1d_triton(x, torch.randn(8, 5, device=DEVICE))
    with pytest.raises(ValueError, match=r"state must be \[B, C, W-1\]"):
        causal_conv1d_triton(x, weight, b, torch.zeros(1, 8, 4, device=DEVICE))
    with pytest.raises(TypeError, match="naive for fp64"):
        causal_conv1d_triton(x.double(), weight)
    with pytest.raises(ValueError, match="valid: 'silu', None"):
        causal_conv1d_triton(x, weight, activation="gelu")
    with pytest.raises(ValueError, match="out_state must match"):
        causal_conv1d_step_triton(x[:, 0], weight, b, s, out_state=s.double())
