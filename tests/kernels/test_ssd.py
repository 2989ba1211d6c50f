"""SSD (Mamba-2) kernels against the token-by-token recurrence: outputs, final states and the
gradients of every input, odd lengths, two chunk sizes, decays near 0 and near 1."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.ssd import naive_chunk_ssd, naive_recurrent_ssd, ssd_step
from tests.conftest import assert_rel_close, assert_run_close

# ||a - b|| / ||b||. float64: both sides are exact up to rounding, so 1e-10 has ample room.
# float32 (chunked, fp32) against the float64 recurrence: outputs and states 1e-5; gradients
# 1e-4, because dA sums T * P * N products of cancelling signs (the grad of a decay rate).
TOL = {torch.float64: {"out": 1e-10, "grad": 1e-10}, torch.float32: {"out": 1e-5, "grad": 1e-4}}
INPUTS = ("x", "dt", "A", "B", "C", "D", "h0")


def make_inputs(b, T, H, G, P, N, decay: str, dtype=torch.float64, initial_state=True):
    """Leaf tensors. ``decay`` sets exp(dt * A): "near1" (dt*A ~ -1e-3, long memory),
    "near0" (dt*A ~ -20, forgets at once) or "mixed" (mamba_ssm's test: softplus(randn - 4)
    steps and A = -exp(rand), plus one fast head)."""
    if decay == "near1":
        dt, A = torch.full((b, T, H), 1e-2), -0.1 * torch.rand(H) - 0.05
    elif decay == "near0":
        dt, A = 4.0 + torch.rand(b, T, H), -5.0 - torch.rand(H)
    else:
        dt, A = F.softplus(torch.randn(b, T, H) - 4.0), -torch.exp(torch.rand(H))
        A[0] = -8.0
    t = dict(x=torch.randn(b, T, H, P), dt=dt, A=A, B=torch.randn(b, T, G, N), C=torch.randn(b, T, G, N),
             D=torch.randn(H), h0=torch.randn(b, H, P, N) if initial_state else None)
    return {k: (v.to(dtype).requires_grad_() if v is not None else None) for k, v in t.items()}


def run(fn, t, **kw):
    """Output, final state and the gradients of every input under a fixed random cotangent."""
    y, h = fn(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], initial_state=t["h0"], **kw)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)  # same draws in every dtype
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
    leaves = [t[k] for k in INPUTS if t[k] is not None]
    grads = torch.autograd.grad((y * dy).sum() + (h * dh).sum(), leaves)
    return y, h, dict(zip([k for k in INPUTS if t[k] is not None], grads))






# (T, decay, initial state): every length meets every decay regime; the zero-state start once each.
CASES = [(T, decay, h0) for T in (1, 63, 130)
         for decay, h0 in (("near0", True), ("near1", True), ("mixed", True), ("mixed", False))]


@pytest.mark.parametrize("T,decay,initial_state", CASES,
                         ids=[f"B2-T{T}-H4-G2-{d}-{'h0' if h else 'nostate'}" for T, d, h in CASES])
def test_chunk_matches_recurrent_fp64(T, decay, initial_state):
    """B2-H4-G2-P8-N6, chunk sizes 16 and 64 (T = 63, 130: ragged last chunk)."""
    t = make_inputs(2, T, 4, 2, 8, 6, decay, initial_state=initial_state)
    ref = run(naive_recurrent_ssd, t)
    for chunk_size in (16, 64):
        assert_run_close(run(naive_chunk_ssd, t, chunk_size=chunk_size), ref, TOL[torch.float64])


def test_chunk_matches_recurrent_fp32():
    """B1-T130-H2-G1-P16-N16 in fp32 against the fp64 recurrence on the same values."""
    t32 = make_inputs(1, 130, 2, 1, 16, 16, "mixed", dtype=torch.float32)
    t64 = {k: v.detach().double().requires_grad_() for k, v in t32.items()}
    y, h, g = run(naive_chunk_ssd, t32, chunk_size=32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_run_close((y, h, g), run(naive_recurrent_ssd, t64), TOL[torch.float32])


def test_low_precision_inputs_keep_an_fp32_state():
    t = {k: v.detach().bfloat16() for k, v in make_inputs(1, 20, 2, 1, 4, 4, "mixed").items()}
    y, h = naive_chunk_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=8, initial_state=t["h0"])
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, h_ref = naive_recurrent_ssd(*(t[k].double() for k in ("x", "dt", "A", "B", "C")),
                                       initial_state=t["h0"].double())
    assert_rel_close(y.double(), y_ref, 1e-2, "bf16 output")  # bf16 output rounding, 2^-8
    assert_rel_close(h.double(), h_ref, 1e-5, "fp32 state from bf16 inputs")


def test_step_is_the_recurrence_as_written():
    """One token by hand: h = exp(dt A) h0 + dt x B^T; y = h C + D x, head h reading group h // R."""
    t = {k: v.detach() for k, v in make_inputs(2, 1, 4, 2, 3, 5, "mixed").items()}
    y, h = ssd_step(t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["h0"], t["D"])
    for head in range(4):
        g, dt = head // 2, t["dt"][:, 0, head, None, None]
        h_ref = torch.exp(dt * t["A"][head]) * t["h0"][:, head] + dt * t["x"][:, 0, head, :, None] * \
            t["B"][:, 0, g, None, :]
        y_ref = h_ref @ t["C"][:, 0, g, :, None]
        assert_rel_close(h[:, head], h_ref, 1e-14, f"state of head {head}")
        y_ref = y_ref[..., 0] + t["D"][head] * t["x"][:, 0, head]
        assert_rel_close(y[:, head], y_ref, 1e-14, f"output of head {head}")


def test_groups_map_to_consecutive_heads():
    """mamba_ssm's convention: heads [g*R, (g+1)*R) read group g, so group 1 never reaches heads 0, 1."""
    t = {k: v.detach() for k, v in make_inputs(1, 9, 4, 2, 3, 5, "mixed").items()}
    y, _ = naive_chunk_ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=4)
    B2, C2 = t["B"].clone(), t["C"].clone()
    B2[:, :, 1] += 1.0
    C2[:, :, 1] -= 1.0
    y2, _ = naive_chunk_ssd(t["x"], t["dt"], t["A"], B2, C2, chunk_size=4)
    assert torch.equal(y[:, :, :2], y2[:, :, :2]) and not torch.allclose(y[:, :, 2:], y2[:, :, 2:])


def test_no_final_state_when_not_asked():
    t = {k: v.detach() for k, v in make_inputs(1, 5, 2, 1, 2, 2, "mixed").items()}
    for fn in (naive_chunk_ssd, naive_recurrent_ssd):
        assert fn(t["x"], t["dt"], t["A"], t["B"], t["C"], output_final_state=False)[1] is None


def test_bad_shapes_raise():
    x, dt, A = torch.randn(1, 5, 4, 2), torch.rand(1, 5, 4), -torch.rand(4)
    with pytest.raises(ValueError, match="multiple of groups"):
        naive_chunk_ssd(x, dt, A, torch.randn(1, 5, 3, 2), torch.randn(1, 5, 3, 2))
    with pytest.raises(ValueError, match=r"dt \[B,T,H\]"):
        naive_chunk_ssd(x, dt[:, :4], A, torch.randn(1, 5, 1, 2), torch.randn(1, 5, 1, 2))
