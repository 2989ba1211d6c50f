"""The Triton gated delta rule (chunk fwd + bwd, fused recurrent, decode step) against the fp64
token-by-token reference on the same values: output, final state and the gradient of every input
(q, k, v, g, beta, initial state). One metric, ||a - b|| / ||b||. On CPU the kernels run under
TRITON_INTERPRET=1 (set by tests/conftest.py); tiny grids keep the file fast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import kernels.gated_delta_rule.chunk as chunk_module
from kernels.gated_delta_rule import gated_delta_rule_step, naive_recurrent_gated_delta_rule
from kernels.gated_delta_rule.chunk import chunk_gated_delta_rule
from kernels.gated_delta_rule.recurrent import (
    fused_gated_delta_rule_step,
    fused_recurrent_gated_delta_rule,
)
from tests.conftest import assert_run_close
from tests.kernels.guarded import guarded_allocations

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: dots run in fp32 ("ieee"), so only summation order and the (I + A)^{-1} differ from the
# recurrence (seen: 9e-7 outputs, 3e-6 gradients; dg sums many products of exponentials).
# fp16: the dot operands (and the stored W, U, v_new, h) are rounded to fp16, ~5e-4 relative each;
# errors add up over the chunk sums (seen: 1e-3 outputs, 2e-3 gradients).
TOL = {torch.float32: {"out": 1e-5, "grad": 5e-5}, torch.float16: {"out": 5e-3, "grad": 1e-2}}
GATES = {"near1": ((-0.01, 0.0), (0.9, 1.0)), "near0": ((-6.0, -3.0), (0.0, 0.1))}
NAMES = ("q", "k", "v", "g", "beta", "h0")


def _inputs(B, T, H, K, V, gates, dtype, h0, v_dtype=None):
    (g_lo, g_hi), (b_lo, b_hi) = GATES[gates]
    q = torch.randn(B, T, H, K, device=DEV)
    k = F.normalize(torch.randn(B, T, H, K, device=DEV), dim=-1)
    v = torch.randn(B, T, H, V, device=DEV).to(v_dtype or dtype)
    g = torch.zeros(B, T, H, device=DEV).uniform_(g_lo, g_hi)
    beta = torch.zeros(B, T, H, device=DEV).uniform_(b_lo, b_hi)
    s0 = torch.randn(B, H, K, V, device=DEV) if h0 else None
    q, k, g, beta = (t.to(dtype) for t in (q, k, g, beta))
    return q, k, v, g, beta, s0


def _run(fn, inputs, do, ds, **kw):
    """(o, final state, {name: grad}) of <o, do> + <S, ds> for every input that is given."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    o, s = fn(*leaves[:5], initial_state=leaves[5], **kw)
    given = [(n, t) for n, t in zip(NAMES, leaves) if t is not None]
    grads = torch.autograd.grad((o.double() * do).sum() + (s.double() * ds).sum(), [t for _, t in given])
    return o, s, dict(zip([n for n, _ in given], grads))


def _reference(inputs, do, ds):
    as64 = [t.double() if t is not None else None for t in inputs]
    return _run(naive_recurrent_gated_delta_rule, as64, do, ds)


CASES = [  # B, T, H, K, V, chunk, gates, h0, dtype, v dtype (None: same)
    (1, 63, 2, 16, 32, 16, "near1", True, torch.float32, None),
    (1, 130, 2, 32, 16, 64, "near0", True, torch.float32, None),
    (1, 130, 2, 16, 16, 32, "near1", False, torch.float32, None),
    (2, 1, 2, 16, 16, 64, "near0", True, torch.float32, None),
    # a partial chunk whose decays sum below -88: exp of (padded - real) gamma would overflow
    (1, 40, 2, 16, 16, 64, "near0", True, torch.float32, None),
    (1, 130, 2, 16, 32, 64, "near1", True, torch.float16, None),
    (1, 33, 1, 16, 144, 16, "near1", True, torch.float32, None),  # V > K, three V tiles (the mixer's V = 2K)
    (1, 63, 2, 16, 16, 16, "near0", True, torch.float32, torch.float16),  # the mixer's mix: q, k fp32
]


def _id(c):
    B, T, H, K, V, C, gates, h0, dt, vdt = c
    mix = f"-v{str(vdt)[6:]}" if vdt else ""
    return f"B{B}-T{T}-H{H}-K{K}-V{V}-chunk{C}-{gates}-{'h0' if h0 else 'zero'}-{str(dt)[6:]}{mix}"


# chunk.FORWARD_PATHS, (fused_forward, FUSED_PREPARE) by name; fwd_prep is not yet the default
PATHS = {f"{name.replace(' ', '')}-fwd": flags for name, flags in chunk_module.FORWARD_PATHS.items()}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_chunk_matches_recurrence(case, path, poison_empty, monkeypatch):
    """Every forward path, each with the one backward."""
    fused, fused_prepare = PATHS[path]
    monkeypatch.setattr(chunk_module, "FUSED_PREPARE", fused_prepare)
    B, T, H, K, V, C, gates, h0, dtype, v_dtype = case
    inputs = _inputs(B, T, H, K, V, gates, dtype, h0, v_dtype)
    do = torch.randn(B, T, H, V, device=DEV, dtype=torch.float64)
    ds = torch.randn(B, H, K, V, device=DEV, dtype=torch.float64)
    out = _run(chunk_gated_delta_rule, inputs, do, ds, chunk_size=C, fused_forward=fused)
    assert out[0].dtype == inputs[2].dtype and out[1].dtype == torch.float32
    tol = TOL[torch.float16 if torch.float16 in (dtype, v_dtype) else torch.float32]
    assert_run_close(out, _reference(inputs, do, ds), tol)


GUARD_CASES = [(2, 1, 2, 16, 16, 64), (1, 63, 2, 16, 32, 16)]  # B, T, H, K, V, chunk: T < BT, ragged last chunk


@pytest.mark.parametrize("case", GUARD_CASES, ids=[f"B{c[0]}-T{c[1]}-H{c[2]}-K{c[3]}-V{c[4]}-chunk{c[5]}"
                                                    for c in GUARD_CASES])
@pytest.mark.parametrize("path", PATHS)
def test_chunk_stays_in_bounds(case, path, monkeypatch):
    """Every input, output and scratch tensor (fwd + bwd, with an initial state) sits inside NaN
    guard bands: no band may change (stray writes) and every result must be finite (stray reads)."""
    fused, fused_prepare = PATHS[path]
    monkeypatch.setattr(chunk_module, "FUSED_PREPARE", fused_prepare)
    B, T, H, K, V, C = case
    inputs = _inputs(B, T, H, K, V, "near1", torch.float32, True)
    do, ds = torch.randn(B, T, H, V, device=DEV), torch.randn(B, H, K, V, device=DEV)
    with guarded_allocations() as guards:
        leaves = [guards.wrap(t, name).requires_grad_() for name, t in zip(NAMES, inputs)]
        o, s = chunk_gated_delta_rule(*leaves[:5], initial_state=leaves[5], chunk_size=C, fused_forward=fused)
        grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
        with torch.no_grad():
            o_rec, s_rec = fused_recurrent_gated_delta_rule(*leaves[:5], initial_state=leaves[5])
    guards.check()
    for name, t in zip(("o", "state", "o recurrent", "state recurrent", *(f"d{n}" for n in NAMES)),
                       (o, s, o_rec, s_rec, *grads)):
        assert torch.isfinite(t).all(), f"{name}: non-finite values (a read outside its tensor?)"


def test_guards_catch_a_stray_write():
    """The guard check itself: a kernel storing one element past the end of its tensor is caught."""
    import triton
    import triton.language as tl

    @triton.jit
    def write_past_end(x, N, EXTRA: tl.constexpr):
        o = tl.arange(0, 16)
        tl.store(x + o, 1.0, mask=o < N + EXTRA)

    with guarded_allocations() as guards:
        x = torch.empty(8, device=DEV)
    write_past_end[(1,)](x, 8, 0)
    guards.check()
    write_past_end[(1,)](x, 8, 1)
    with pytest.raises(AssertionError, match="after torch.empty"):
        guards.check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fused_recurrent(dtype, poison_empty):
    B, T, H, K, V = 2, 20, 1, 32, 16
    inputs = _inputs(B, T, H, K, V, "near1", dtype, True)
    with torch.no_grad():
        o, s = fused_recurrent_gated_delta_rule(*inputs[:5], initial_state=inputs[5])
        o_ref, s_ref = naive_recurrent_gated_delta_rule(*(t.double() for t in inputs[:5]),
                                                        initial_state=inputs[5].double())
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # fp16: only the inputs and o are rounded
    assert_run_close((o, s, {}), (o_ref, s_ref, {}), {"out": tol, "grad": tol})
    assert fused_recurrent_gated_delta_rule(*inputs[:5], output_final_state=False)[1] is None


def test_step_in_place_and_fresh(poison_empty):
    B, H, K, V = 3, 2, 16, 32
    *tokens, s0 = _inputs(B, 1, H, K, V, "near0", torch.float32, True)
    q, k, v, g, beta = (t[:, 0] for t in tokens)                                 # drop the T axis
    o_ref, s_ref = gated_delta_rule_step(q.double(), k.double(), v.double(), g.double(), beta.double(), s0.double())
    o, s = fused_gated_delta_rule_step(q, k, v, g, beta, s0)
    assert_run_close((o, s, {}), (o_ref, s_ref, {}), {"out": 1e-5, "grad": 1e-5})
    state = s0.clone()
    o2, s2 = fused_gated_delta_rule_step(q, k, v, g, beta, state, out_state=state)
    assert s2.data_ptr() == state.data_ptr()
    assert_run_close((o2, s2, {}), (o_ref, s_ref, {}), {"out": 1e-5, "grad": 1e-5})


def test_errors():
    q, k, v, g, beta, _ = _inputs(1, 5, 2, 16, 16, "near1", torch.float32, False)
    with pytest.raises(ValueError, match="16, 32, 64"):
        chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=48)
    with pytest.raises(ValueError, match="gates g, beta must be"):
        chunk_gated_delta_rule(q, k, v, g[:, :4], beta)
    with pytest.raises(TypeError, match="fp64"):
        chunk_gated_delta_rule(q.double(), k, v, g, beta)
    with pytest.raises(RuntimeError, match="chunk_gated_delta_rule"):
        fused_recurrent_gated_delta_rule(q.requires_grad_(), k, v, g, beta)
