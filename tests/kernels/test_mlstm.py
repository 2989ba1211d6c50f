"""kernels/mlstm: the chunkwise form against the token-by-token recurrence (the ground truth).

One metric, ||a - b|| / ||b||. Final states are compared representation-invariantly: the true
memory is exp(m) C (and exp(m) n), so a form whose stabiliser m differs from the recurrence's
still passes when C * exp(m - m_ref) == C_ref. (The chunkwise reference here happens to compute
the recurrence's very m; that is not asserted, so a kernel may pick its own stabiliser.) The
gradient check uses the same invariant quantities, so it is representation-free as well.
"""
from __future__ import annotations

import pytest
import torch

from kernels.mlstm import mlstm_step, naive_chunk_mlstm, naive_recurrent_mlstm
from tests.conftest import assert_rel_close

# Per tensor and dtype. fp64: both forms are exact up to rounding (observed <= 3e-13 on h).
# fp32 against the fp64 truth: rounding over 130 tokens (observed h 9e-6, states ~1e-6, grads <= 4e-5).
TOL = {
    torch.float64: {"h": 1e-10, "state": 1e-10, "grad": 1e-9},
    torch.float32: {"h": 1e-4, "state": 1e-4, "grad": 5e-4},
}

# Gate regimes (preactivations): forget gate near 1 (long memory), near 0 (forgets at once, m
# follows i), and the 7B's initial regime (input gate near 0, exp(i) ~ e^-10: the exp(-m) floor of
# the denominator is the active branch).
GATES = {"f1": (6.0, 0.0), "f0": (-6.0, 0.0), "i0": (3.0, -10.0)}


def _inputs(B, T, H, K, V, gates, dtype, with_state):
    f_mean, i_mean = GATES[gates]
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V),
             i=i_mean + 2 * r(B, T, H), f=f_mean + r(B, T, H))
    state = (r(B, H, K, V), r(B, H, K), r(B, H)) if with_state else None
    return x, state


def _invariant(state, m_ref):
    """(C, n) rescaled to the reference's stabiliser: C * exp(m - m_ref)."""
    C, n, m = state
    s = torch.exp(m - m_ref)
    return C * s[..., None, None], n * s[..., None]


def _run(fn, x, state, m_ref=None, **kw):
    """Forward, then the gradients of every input (and of the initial state) for a fixed random
    loss on h and the invariant final state."""
    leaves = {k: t.clone().requires_grad_() for k, t in x.items()}
    s0 = tuple(t.clone().requires_grad_() for t in state) if state is not None else None
    h, final = fn(**leaves, initial_state=s0, **kw)
    m_ref = final[2].detach() if m_ref is None else m_ref
    C, n = _invariant(final, m_ref)
    g = torch.Generator().manual_seed(2)
    # weights drawn in fp64 then cast: the same loss for every dtype
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (h, C, n)]
    loss = sum((t * w).sum() for t, w in zip((h, C, n), weights))
    inputs = [*leaves.values(), *(s0 or ())]
    grads = torch.autograd.grad(loss, inputs)
    names = [*leaves, *(("C0", "n0", "m0") if s0 else ())]
    return h.detach(), (C.detach(), n.detach()), m_ref, dict(zip(names, grads))


def _case_id(B, T, H, K, V):
    return f"B{B}-T{T}-H{H}-K{K}-V{V}"


SHAPES = [(2, 1, 3, 8, 16), (2, 63, 3, 8, 16), (1, 130, 2, 16, 8)]


@pytest.mark.parametrize("gates", list(GATES))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "init_state"])
@pytest.mark.parametrize("shape", SHAPES, ids=[_case_id(*s) for s in SHAPES])
def test_chunk_equals_recurrent_fp64(shape, with_state, gates):
    x, state = _inputs(*shape, gates, torch.float64, with_state)
    h_ref, s_ref, m_ref, g_ref = _run(naive_recurrent_mlstm, x, state)
    tol = dict(TOL[torch.float64])
    if shape[1] == 1 and not with_state:
        # Relaxed, df only: one token from the zero state, f touches nothing but the stabiliser m,
        # on which h depends only through eps (and C exp(m - m_ref) not at all). The true df is then
        # ~1e-11 of the other gradients, a difference of O(1) terms that keeps their rounding:
        # observed relative errors 1e-6 .. 1e-5, i.e. ~1e-16 of the gradients it is made from.
        tol["grad_f"] = 1e-3
    for chunk_size in (16, 64):
        h, s, _, grads = _run(naive_chunk_mlstm, x, state, m_ref=m_ref, chunk_size=chunk_size)
        where = f"chunk_size={chunk_size}"
        assert_rel_close(h, h_ref, tol["h"], f"h ({where})")
        assert_rel_close(s[0], s_ref[0], tol["state"], f"C final ({where})")
        assert_rel_close(s[1], s_ref[1], tol["state"], f"n final ({where})")
        for name, g in grads.items():
            assert_rel_close(g, g_ref[name], tol.get(f"grad_{name}", tol["grad"]), f"d{name} ({where})")


def test_chunk_fp32_against_fp64_truth():
    shape = (2, 130, 2, 16, 16)
    x64, s64 = _inputs(*shape, "f1", torch.float64, True)
    h_ref, s_ref, m_ref, g_ref = _run(naive_recurrent_mlstm, x64, s64)
    x32 = {k: t.float() for k, t in x64.items()}
    s32 = tuple(t.float() for t in s64)
    h, s, _, grads = _run(naive_chunk_mlstm, x32, s32, m_ref=m_ref.float(), chunk_size=32)
    tol = TOL[torch.float32]
    assert h.dtype == torch.float32 and s[0].dtype == torch.float32
    assert_rel_close(h, h_ref, tol["h"], "h")
    assert_rel_close(s[0], s_ref[0], tol["state"], "C final")
    assert_rel_close(s[1], s_ref[1], tol["state"], "n final")
    for name, g in grads.items():
        assert_rel_close(g, g_ref[name], tol["grad"], f"d{name}")


def test_large_preactivations_stay_finite_fp32():
    """exp(i) overflows fp32 at i ~ 88; the stabiliser must keep every exponent <= 0."""
    B, T, H, K, V = 1, 100, 2, 8, 8
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, T, H, D, generator=g) for D in (K, K, V))
    i, f = 200 * torch.randn(B, T, H, generator=g), 200 * torch.randn(B, T, H, generator=g)
    h, (C, n, m) = naive_chunk_mlstm(q, k, v, i, f, chunk_size=16)
    h_ref, _ = naive_recurrent_mlstm(q.double(), k.double(), v.double(), i.double(), f.double())
    assert all(torch.isfinite(t).all() for t in (h, C, n, m))
    assert_rel_close(h, h_ref, 1e-4, "h with |preactivations| ~ 200")


def test_step_matches_the_paper_formula():
    """One step from a nonzero state, the equations written out unstabilised (exp(m) C)."""
    B, H, K, V = 2, 3, 4, 5
    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v, i, f = r(B, H, K), r(B, H, K), r(B, H, V), r(B, H), r(B, H)
    C0, n0, m0 = r(B, H, K, V), r(B, H, K), r(B, H)
    h, (C, n, m) = mlstm_step(q, k, v, i, f, (C0, n0, m0), eps=0.0)
    f_gate, i_gate = torch.sigmoid(f), torch.exp(i)
    C_true = f_gate[..., None, None] * C0 * m0.exp()[..., None, None] + i_gate[..., None, None] * (
        k[..., :, None] * v[..., None, :])
    n_true = f_gate[..., None] * n0 * m0.exp()[..., None] + i_gate[..., None] * k
    qs = q / K ** 0.5
    h_true = torch.einsum("bhk,bhkv->bhv", qs, C_true) / torch.clamp(
        (qs * n_true).sum(-1).abs(), min=1.0)[..., None]
    assert_rel_close(h, h_true, 1e-12, "h")
    assert_rel_close(C * m.exp()[..., None, None], C_true, 1e-12, "exp(m) C")
    assert_rel_close(n * m.exp()[..., None], n_true, 1e-12, "exp(m) n")


def test_no_final_state_and_empty_sequence():
    q = k = torch.randn(1, 5, 2, 4)
    v, i, f = torch.randn(1, 5, 2, 3), torch.randn(1, 5, 2), torch.randn(1, 5, 2)
    for fn in (naive_recurrent_mlstm, naive_chunk_mlstm):
        h, s = fn(q, k, v, i, f, output_final_state=False)
        assert h.shape == (1, 5, 2, 3) and s is None
        h, (C, n, m) = fn(q[:, :0], k[:, :0], v[:, :0], i[:, :0], f[:, :0])
        assert h.shape == (1, 0, 2, 3) and C.shape == (1, 2, 4, 3) and not C.any() and not m.any()
