"""Selective scan (Mamba-1) kernels against the token-by-token recurrence: outputs, final states
and the gradients of every input, odd lengths, two chunk sizes, decays near 0 and near 1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.selective_scan import (
    naive_chunk_selective_scan,
    naive_recurrent_selective_scan,
    selective_scan_step,
)
from tests.conftest import assert_rel_close, assert_run_close

# ||a - b|| / ||b||. float64: both sides are exact up to rounding (seen: <= 4e-15), so 1e-10
# has ample room. float32 (chunked, fp32) against the float64 recurrence: 1e-5 for outputs,
# states and gradients (seen: <= 3e-7; the scan multiplies decays, it never subtracts them).
TOL = {torch.float64: {"out": 1e-10, "grad": 1e-10}, torch.float32: {"out": 1e-5, "grad": 1e-5}}
INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


def make_inputs(b, T, Dch, N, decay: str, dtype=torch.float64, initial_state=True):
    """Leaf tensors; delta is raw (the op adds delta_bias and applies softplus). ``decay`` sets
    exp(delta A): "near1" (delta A ~ -1e-3, long memory), "near0" (delta A ~ -20, forgets at
    once) or "mixed" (mamba_ssm's test_selective_scan: delta ~ softplus(randn - 4 + bias),
    A = -exp(rand), plus one fast channel)."""
    A = -torch.exp(torch.rand(Dch, N))
    if decay == "near1":
        delta, bias, A = torch.full((b, T, Dch), -4.0), torch.zeros(Dch), 0.05 * A  # softplus(-4) ~ 0.018
    elif decay == "near0":
        delta, bias, A = 4.0 + torch.rand(b, T, Dch), torch.rand(Dch), 4.0 * A - 2.0
    else:
        delta, bias = torch.randn(b, T, Dch) - 4.0, torch.randn(Dch)
        A[0] = -8.0
    t = dict(u=torch.randn(b, T, Dch), delta=delta, A=A, B=torch.randn(b, T, N), C=torch.randn(b, T, N),
             D=torch.randn(Dch), z=torch.randn(b, T, Dch), delta_bias=bias,
             h0=torch.randn(b, Dch, N) if initial_state else None)
    return {k: (v.to(dtype).requires_grad_() if v is not None else None) for k, v in t.items()}


def run(fn, t, **kw):
    """Output, final state and the gradients of every input under a fixed random cotangent."""
    y, h = fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], delta_bias=t["delta_bias"],
              delta_softplus=True, initial_state=t["h0"], **kw)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)  # same draws in every dtype
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    names = [k for k in INPUTS if t[k] is not None]
    grads = torch.autograd.grad((y * dy).sum() + (h * dh).sum(), [t[k] for k in names])
    return y, h, dict(zip(names, grads))




# (T, decay, initial state): every length meets every decay regime; the zero-state start once each.
CASES = [(T, decay, h0) for T in (1, 63, 130)
         for decay, h0 in (("near0", True), ("near1", True), ("mixed", True), ("mixed", False))]


@pytest.mark.parametrize("T,decay,initial_state", CASES,
                         ids=[f"B2-T{T}-D6-N5-{d}-{'h0' if h else 'nostate'}" for T, d, h in CASES])
def test_chunk_matches_recurrent_fp64(T, decay, initial_state):
    """B2-D6-N5, chunk sizes 16 and 64 (T = 63, 130: ragged last chunk; T = 1: one chunk)."""
    t = make_inputs(2, T, 6, 5, decay, initial_state=initial_state)
    ref = run(naive_recurrent_selective_scan, t)
    for chunk_size in (16, 64):
        assert_run_close(run(naive_chunk_selective_scan, t, chunk_size=chunk_size), ref, TOL[torch.float64])


def test_chunk_matches_recurrent_fp32():
    """B1-T130-D16-N16 in fp32 against the fp64 recurrence on the same values."""
    t32 = make_inputs(1, 130, 16, 16, "mixed", dtype=torch.float32)
    t64 = {k: v.detach().double().requires_grad_() for k, v in t32.items()}
    y, h, g = run(naive_chunk_selective_scan, t32, chunk_size=32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_run_close((y, h, g), run(naive_recurrent_selective_scan, t64), TOL[torch.float32])


def test_low_precision_inputs_keep_an_fp32_state():
    t = {k: v.detach().bfloat16() for k, v in make_inputs(1, 20, 4, 4, "mixed").items()}
    y, h = naive_chunk_selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], chunk_size=8,
                                      delta_softplus=True, initial_state=t["h0"])
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = naive_recurrent_selective_scan(*(t[k].double() for k in ("u", "delta", "A", "B", "C")),
                                                  delta_softplus=True, initial_state=t["h0"].double())
    assert_rel_close(y.double(), y_ref, 1e-2, "bf16 output")  # bf16 output rounding, 2^-8
    assert_rel_close(h.double(), h_ref, 1e-5, "fp32 state from bf16 inputs")


def test_step_is_the_recurrence_as_written():
    """One token by hand, per channel d and state index n (Gu & Dao 2023, eq. 2a-2b and 4):
    delta = softplus(delta + bias); h = exp(delta A) h0 + delta B u; y = (h C + D u) silu(z)."""
    t = {k: v.detach()[:, 0] if k in ("u", "delta", "B", "C", "z") else v.detach()
         for k, v in make_inputs(2, 1, 3, 4, "mixed").items()}
    y, h = selective_scan_step(t["u"], t["delta"], t["A"], t["B"], t["C"], t["h0"], t["D"], t["z"],
                               delta_bias=t["delta_bias"], delta_softplus=True)
    for b in range(2):
        for d in range(3):
            dt = F.softplus(t["delta"][b, d] + t["delta_bias"][d])
            h_ref = torch.stack([torch.exp(dt * t["A"][d, n]) * t["h0"][b, d, n]
                                 + dt * t["B"][b, n] * t["u"][b, d] for n in range(4)])
            y_ref = (h_ref * t["C"][b]).sum() + t["D"][d] * t["u"][b, d]
            y_ref = y_ref * t["z"][b, d] * torch.sigmoid(t["z"][b, d])
            assert_rel_close(h[b, d], h_ref, 1e-14, f"state b{b} d{d}")
            assert_rel_close(y[b, d], y_ref, 1e-14, f"output b{b} d{d}")


def test_matches_mamba_ssm_selective_scan_ref():
    """mamba_ssm's selective_scan_ref (ops/selective_scan_interface.py) restated in its own
    [B, D, L] layout: precomputed exp(delta A) and delta B u, a token loop, then D skip and gate."""
    t = {k: v.detach() for k, v in make_inputs(2, 37, 5, 3, "mixed").items()}
    u, delta, B, C, z = (t[k].transpose(1, 2) for k in ("u", "delta", "B", "C", "z"))  # b d l, b n l
    delta = F.softplus(delta + t["delta_bias"][..., None])
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, t["A"]))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x, ys = t["h0"], []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    out = (torch.stack(ys, dim=2) + u * t["D"][..., None]) * F.silu(z)
    y, h = naive_chunk_selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                      delta_bias=t["delta_bias"], delta_softplus=True, chunk_size=8,
                                      initial_state=t["h0"])
    assert_rel_close(y, out.transpose(1, 2), 1e-12, "output vs selective_scan_ref")
    assert_rel_close(h, x, 1e-12, "last state vs selective_scan_ref")


def test_no_final_state_when_not_asked():
    t = {k: v.detach() for k, v in make_inputs(1, 5, 2, 2, "mixed").items()}
    for fn in (naive_chunk_selective_scan, naive_recurrent_selective_scan):
        assert fn(t["u"], t["delta"], t["A"], t["B"], t["C"], output_final_state=False)[1] is None


def test_bad_shapes_raise():
    u, A = torch.randn(1, 5, 4), -torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"A \[D,N\]"):
        naive_chunk_selective_scan(u, u, -torch.rand(4, 2), torch.randn(1, 5, 3), torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match=r"u, delta \[B,T,D\]"):
        naive_recurrent_selective_scan(u, u[:, :4], A, torch.randn(1, 5, 3), torch.randn(1, 5, 3))
